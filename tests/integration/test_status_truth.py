"""`status` tells the truth and the log can be followed (issue 15), with the real daemon against the
reference control plane: an outage is logged once and shown in status with its code, the server's
answer, the backoff and the outbox's age; deliveries survive the recovery and a restart; a host that
is not enrolled says so once and never claims to be enrolled."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.controlplane import ControlPlane
from tests.fakeroot import FakeRoot, ed25519_line
from tests.integration.daemon_support import (
    Agent,
    appended_fingerprints,
    fingerprint_of,
    start_enrolled,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.slow


def status(config: Path, *, as_json: bool = True) -> Any:
    args = [sys.executable, "-m", "agent", "status", "--config", str(config)] + (
        ["--json"] if as_json else []
    )
    out = subprocess.run(args, capture_output=True, text=True, check=False, timeout=30)
    return json.loads(out.stdout) if as_json else out.stdout


def _warnings(text: str) -> list[str]:
    return [line for line in text.splitlines() if " WARNING " in line]


def test_an_outage_in_status_and_in_the_log(fr: FakeRoot, tmp_path: Path, agents: list[Agent]) -> None:
    with ControlPlane.start() as cp:
        cp.poll_interval = 1
        host_id, config, agent = start_enrolled(cp, fr, tmp_path, agents)
        wait_for(
            lambda: (status(config).get("reporting") or {}).get("deliveries", {}).get("inventory"),
            what="status",
        )

        # The server answers 503 to everything the host calls.
        before = len(agent.text())
        cp.faults.fail_next(100_000, status=503, path_prefix="/v1/hosts/")
        lines = [ed25519_line(f"during-outage-{i}") for i in range(3)]
        with fr.path("/home/alice/.ssh/authorized_keys").open("a") as f:
            f.write("".join(line + "\n" for line in lines))

        def failing() -> dict[str, Any]:
            reporting = status(config).get("reporting") or {}
            return dict(reporting.get("failing") or {})

        wait_for(lambda: {"events", "heartbeat"} <= set(failing()), timeout=30, what="status: failing")
        # Failed calls, each after the client's own retries (heartbeat every second, the sender's backoff) ...
        wait_for(lambda: sum(v["calls"] for v in failing().values()) >= 6, timeout=90, what="6 failed calls")
        doc = status(config)
        events = doc["reporting"]["failing"]["events"]
        assert events["code"] == "SERVER_ERROR" and events["http_status"] == 503
        assert doc["reporting"]["server_answer"]["http_status"] == 503
        assert doc["outbox"] >= 3 and doc["outbox_oldest_at"] is not None
        text = status(config, as_json=False)
        assert "reporting:    FAILING since" in text
        assert "server said:  HTTP 503 SERVER_ERROR" in text
        assert "events waiting, the oldest since" in text
        # ... and one line in the log about them (issue 15: ~50 WARNING lines in 45 s).
        outage = _warnings(agent.text()[before:])
        assert len([w for w in outage if "control plane" in w]) == 1, outage
        assert len(outage) == 1, outage

        cp.faults.clear()
        wanted = {fingerprint_of(line) for line in lines}
        wait_for(lambda: wanted <= set(appended_fingerprints(cp, host_id)), timeout=60, what="queued events")
        wait_for(
            lambda: "control plane answering again after" in agent.text(), timeout=30, what="recovery line"
        )
        wait_for(lambda: not failing(), timeout=30, what="status: no longer failing")
        after = status(config)
        assert after["reporting"]["deliveries"]["events"]["at"] >= events["at"]
        assert agent.stop() == 0

        # A restart keeps what was delivered when (issue 15: `last report: never` after a restart).
        cp.faults.fail_next(100_000, status=503, path_prefix="/v1/hosts/")
        again = Agent(config, fr.root).start()
        agents.append(again)
        wait_for(
            lambda: status(config)["running"] and status(config)["pid"] == again.proc.pid, what="restarted"
        )  # type: ignore[union-attr]
        restarted = status(config)
        assert (
            restarted["reporting"]["deliveries"]["inventory"] == after["reporting"]["deliveries"]["inventory"]
        )
        text = status(config, as_json=False)
        assert re.search(r"^delivered:\s+inventory\s+20\d\d-", text, re.M), text
        assert again.stop() == 0


def test_not_enrolled_says_so_once(fr: FakeRoot, tmp_path: Path, agents: list[Agent]) -> None:
    config = write_config(
        tmp_path / "agent.toml",
        tmp_path / "state",
        "http://127.0.0.1:9",
        extra='[logging]\nlevel = "debug"\n',
    )
    agent = Agent(config, fr.root).start()
    agents.append(agent)
    wait_for(lambda: "ready" in agent.text(), what="ready")
    # Several heartbeats (every second) find no credentials ...
    wait_for(lambda: agent.text().count("job heartbeat: AUTH_INVALID") >= 4, timeout=30, what="heartbeats")
    doc = status(config)
    assert doc["mode"] == "not connected" and doc["link_problem"].startswith("not enrolled")
    text = status(config, as_json=False)
    assert "mode:         not enrolled: run `sshklm-agent enroll" in text
    assert "mode:         enrolled" not in text
    # ... and the log said it once, as a warning at the start; the ready line's summary states it,
    # then nothing repeats it (the heartbeats find it at debug level only).
    lines = [line for line in agent.text().splitlines() if " DEBUG " not in line]
    said = [line for line in lines if "not enrolled" in line]
    assert len([line for line in said if " WARNING " in line]) == 1, said
    ready = next(i for i, line in enumerate(lines) if " ready: " in line)
    assert not [line for line in lines[ready + 1 :] if "not enrolled" in line], said
    assert agent.stop() == 0
