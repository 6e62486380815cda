"""The metrics of a real daemon (docs/status.md, "Metrics"): the file node_exporter reads and
`status --prometheus`, parsed with prometheus_client's parser; replaced atomically, never seen
half-written; nothing written unless configured; counters kept across a restart."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.config import Config, parse_config_text
from agent.daemon.metrics_file import MetricsFile
from agent.metrics import render
from tests.controlplane import ControlPlane
from tests.fakeroot import FakeRoot, ed25519_line, writable_root
from tests.integration.daemon_support import Agent, enroll, jti_of, results_for, wait_for, write_config

pytestmark = pytest.mark.slow

PROM = "sshklm-agent.prom"


def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(families: dict[str, Any], name: str, **labels: str) -> float:
    family = families[name.removesuffix("_total")]
    found = [s.value for s in family.samples if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, family.samples)
    return float(found[0])


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "status", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _metrics_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "textfile_collector"
    directory.mkdir(mode=0o755)
    return directory


def test_a_real_daemon_writes_valid_complete_metrics_and_keeps_its_counters(
    tmp_path: Path, agents: list[Agent]
) -> None:
    fr = writable_root(tmp_path / "root")
    directory = _metrics_dir(tmp_path)
    with ControlPlane.start() as cp:
        cp.poll_interval = 1
        state = tmp_path / "state"
        host_id = enroll(cp, state)
        extra = (
            f'[instructions]\npublic_keys = ["{cp.signing_public_key_openssh}"]\n'
            f'[metrics]\ntextfile = "{directory / PROM}"\n'
        )
        config = write_config(tmp_path / "agent.toml", state, cp.url, extra)
        agent = Agent(config, fr.root).start()
        agents.append(agent)
        wait_for(lambda: cp.inventory(host_id) is not None, what="first inventory")
        good = jti_of(cp.issue_instruction(host_id, "rotation", _rotation("rot_m1")))
        forged = jti_of(cp.issue_instruction(host_id, "rotation", _rotation("rot_m2"), sign=False))
        wait_for(lambda: results_for(cp, good) and results_for(cp, forged), timeout=30, what="both results")

        prom = directory / PROM

        def published() -> dict[str, Any] | None:
            if not prom.exists():
                return None
            families = _families(prom.read_text())
            results = families.get("sshklm_agent_instructions")
            done = results and {s.labels["result"]: s.value for s in results.samples}.get("rejected") == 1
            return families if done else None

        wait_for(lambda: published() is not None, timeout=30, what="the metrics file with both results")
        families = published()
        assert families is not None
        mode = os.stat(prom).st_mode
        assert stat.S_IMODE(mode) == 0o644 and os.stat(prom).st_uid == os.geteuid()
        assert [p.name for p in directory.iterdir()] == [PROM]  # no temp file left behind
        # Complete: what the issue asks for, with the values the daemon's own status gives.
        status = json.loads(_cli(config, "--json").stdout)
        assert _value(families, "sshklm_agent_running") == 1
        info = families["sshklm_agent_info"].samples[0].labels
        assert info == {"version": status["version"], "mode": "enrolled", "host_id": host_id}
        keys = sum(s.value for s in families["sshklm_agent_keys"].samples)
        assert keys == status["keys"] > 0
        assert _value(families, "sshklm_agent_keys", kind="authorized_key", effective="true") >= 1
        assert "no_passphrase" in {
            s.labels["factor"] for s in families["sshklm_agent_risk_factor_keys"].samples
        }
        assert "sshklm_agent_outbox_events" in families
        assert "sshklm_agent_outbox_oldest_event_age_seconds" in families
        deliveries = {
            s.labels["kind"] for s in families["sshklm_agent_last_delivery_timestamp_seconds"].samples
        }
        assert {"inventory", "heartbeat", "instructions", "results"} <= deliveries
        assert _value(families, "sshklm_agent_instructions_total", result="applied") == 1
        assert _value(families, "sshklm_agent_instructions_total", result="rejected") == 1
        requests = {
            (s.labels["class"], s.labels["status"]): s.value
            for s in families["sshklm_agent_requests"].samples
            if s.name == "sshklm_agent_requests_total"
        }
        assert requests[("read", "200")] >= 1 and requests[("write", "200")] >= 1
        assert "sshklm_agent_long_polling" in families and "sshklm_agent_auth_info" in families
        # The requests counted are the requests the server saw (the agent's own calls: all of them).
        seen = sum(1 for r in list(cp.requests) if r.status == 200)
        assert sum(v for (_, status_), v in requests.items() if status_ == "200") <= seen

        # `status --prometheus` prints the same metrics from the persisted document, daemon or not.
        printed = _cli(config, "--prometheus")
        assert printed.returncode == 0, printed.stderr
        assert set(_families(printed.stdout)) == set(families)

        # Restarted: the counters go on from where they were (published at stop, taken back at start).
        before = _value(families, "sshklm_agent_requests_total", **{"class": "read", "status": "200"})
        assert agent.stop() == 0
        stopped = _families(prom.read_text())
        assert _value(stopped, "sshklm_agent_running") == 0
        assert _value(stopped, "sshklm_agent_instructions_total", result="applied") == 1
        down = _cli(config, "--prometheus")
        assert down.returncode == 3 and _value(_families(down.stdout), "sshklm_agent_running") == 0
        agent = Agent(config, fr.root).start()
        agents.append(agent)
        third = jti_of(cp.issue_instruction(host_id, "rotation", _rotation("rot_m3")))
        wait_for(lambda: results_for(cp, third), timeout=30, what="a result after the restart")

        def counted_again() -> bool:
            again = _families(prom.read_text())
            return (
                _value(again, "sshklm_agent_running") == 1
                and _value(again, "sshklm_agent_instructions_total", result="applied") == 2
            )

        wait_for(counted_again, timeout=30, what="the counters after the restart")
        again = _families(prom.read_text())
        assert _value(again, "sshklm_agent_requests_total", **{"class": "read", "status": "200"}) > before
        assert _value(again, "sshklm_agent_instructions_total", result="rejected") == 1
        assert agent.stop() == 0


def _rotation(rotation_id: str) -> dict[str, str]:
    return {
        "rotation_id": rotation_id,
        "user": "alice",
        "action": "add",
        "new_key": ed25519_line(rotation_id),
    }


def test_off_by_default_nothing_is_written(tmp_path: Path, agents: list[Agent]) -> None:
    assert Config().metrics.textfile == ""
    fr = FakeRoot(tmp_path / "root")
    fr.add_user("alice", 1000)
    fr.authorized_keys("alice", [ed25519_line("initial")])
    state = tmp_path / "state"
    config = write_config(tmp_path / "agent.toml", state)  # standalone, no [metrics]
    agent = Agent(config, fr.root).start()
    agents.append(agent)
    wait_for(lambda: _cli(config, "--json").returncode == 0, timeout=30, what="the agent running")
    assert agent.stop() == 0
    written = [p for p in tmp_path.rglob("*") if p.suffix == ".prom" or ".prom." in p.name]
    assert written == []
    # ... yet `status --prometheus` answers from the document.
    families = _families(_cli(config, "--prometheus").stdout)
    assert _value(families, "sshklm_agent_running") == 0
    assert families["sshklm_agent_info"].samples[0].labels["mode"] == "standalone"


def _status(outbox: int, keys: int) -> dict[str, Any]:
    """A status document; `keys` kinds of key make the text long or short."""
    return {
        "running": True,
        "mode": "standalone",
        "version": "0.1.0",
        "updated_at": "2026-12-04T12:00:00Z",
        "outbox": outbox,
        "key_counts": {f"kind_{i:04d}": {"effective": i, "ineffective": 0} for i in range(keys)},
        "risk_factors": {},
    }


def test_the_file_is_replaced_atomically_and_never_seen_half_written(tmp_path: Path) -> None:
    """A writer replaces the file with texts of very different sizes while a reader reads it as
    fast as it can: every read is one whole text, never a part or a mix."""
    directory = _metrics_dir(tmp_path)
    target = directory / PROM
    writer = MetricsFile(str(target))
    documents = [_status(n, 2000 if n % 2 else 1) for n in range(200)]
    now = datetime.now(UTC)
    texts = {render(d, now) for d in documents}
    assert min(len(t) for t in texts) < 2000 < 100_000 < max(len(t) for t in texts)
    assert writer.write(documents[0])
    stop = threading.Event()
    reads: list[str] = []

    def read() -> None:
        while not stop.is_set():
            reads.append(target.read_text())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for doc in documents:
            assert writer.write(doc)
    finally:
        stop.set()
        reader.join()
    assert len(reads) > 50
    wrong = [r for r in reads if r not in texts]  # no outbox event: the texts do not depend on the time
    assert wrong == [], f"{len(wrong)} reads were not a whole text"
    for text in reads[:: max(1, len(reads) // 20)]:
        assert "sshklm_agent_running" in _families(text)
    assert sorted(p.name for p in directory.iterdir()) == [PROM]


@pytest.mark.root(reason="a directory owned by another user needs chown")
@pytest.mark.parametrize("unsafe", ["group_writable", "other_owner", "symlink", "missing"])
def test_an_unsafe_directory_gets_nothing_and_the_log_says_why(
    tmp_path: Path, unsafe: str, caplog: pytest.LogCaptureFixture
) -> None:
    real = _metrics_dir(tmp_path)
    directory = real
    if unsafe == "group_writable":
        real.chmod(0o775)
    elif unsafe == "other_owner":
        os.chown(real, 1000, 1000)
    elif unsafe == "symlink":
        directory = tmp_path / "link"
        directory.symlink_to(real)
    else:
        directory = tmp_path / "absent"
    writer = MetricsFile(str(directory / PROM))
    status = _status(1, 1)
    with caplog.at_level("WARNING", logger="sshklm.metrics"):
        assert writer.write(status) is False
        assert writer.write(status) is False
    assert list(real.iterdir()) == []
    lines = [r.getMessage() for r in caplog.records if r.name == "sshklm.metrics"]
    assert len(lines) == 1 and "not written" in lines[0]  # said once, not at every write


def test_the_configured_path_must_be_a_prom_file() -> None:
    for bad in ('"relative.prom"', '"/var/lib/x/metrics.txt"', '"/var/lib/x/"', '"/var/lib/x/.prom"'):
        with pytest.raises(Exception, match="metrics.textfile"):
            parse_config_text(f"[metrics]\ntextfile = {bad}\n")
    assert (
        parse_config_text('[metrics]\ntextfile = "/var/lib/x/a.prom"\n').metrics.textfile
        == "/var/lib/x/a.prom"
    )
