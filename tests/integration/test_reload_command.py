"""`sshklm-agent reload` (the unit's ExecReload) against a real daemon process: it returns once the
new configuration is in force, refuses a broken file (the daemon keeps the old one), and the daemon
publishes the outcome of every reload, also one it refused itself."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from agent.commands.reload import reload_acknowledged
from tests.fakeroot import FakeRoot
from tests.integration.daemon_support import Agent, wait_for, write_config


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=60, check=False
    )


def _status(config: Path) -> dict[str, Any]:
    out = _cli("status", "--json", "--config", str(config))
    return dict(json.loads(out.stdout))


def test_reload_returns_with_the_new_configuration_in_force(
    fr: FakeRoot, tmp_path: Path, agents: list[Agent]
) -> None:
    config = write_config(tmp_path / "agent.toml", tmp_path / "state")
    readable = write_config(tmp_path / "status.toml", tmp_path / "state")  # `status` reads it
    agent = Agent(config, fr.root).start()
    agents.append(agent)
    wait_for(lambda: "ready" in agent.text(), what="ready")
    before = _status(readable)
    assert before["keys"] >= 1 and before["config_generation"] == 0
    assert agent.proc is not None
    pid = agent.proc.pid

    # A setting reload applies at once: alice's keys are no longer discovered. When the command
    # returns, the status already shows it (no waiting on our side).
    good = config.read_text()
    without_alice = good + '[discovery]\nskip_users = ["alice"]\norphan_homes = false\n'
    config.write_text(without_alice)
    done = _cli("reload", "--config", str(config), "--pid", str(pid))
    assert done.returncode == 0, done.stderr
    assert "generation 1" in done.stdout
    after = _status(readable)
    assert after["config_generation"] == 1
    assert after["last_reload"]["result"] == "applied"
    assert after["keys"] == before["keys"] - 1

    # A broken file: refused with the reason (a user mistake: exit 2), nothing changes, the daemon
    # runs on.
    config.write_text(without_alice + '[policy]\nmin_rsa_bits = "many"\n')
    refused = _cli("reload", "--config", str(config), "--pid", str(pid))
    assert refused.returncode == 2
    assert "reload refused, keeping the running configuration" in refused.stderr
    assert "policy.min_rsa_bits" in refused.stderr
    assert agent.proc.poll() is None
    assert _status(readable)["config_generation"] == 1

    # Without --pid the command finds the daemon through its status.
    config.write_text(good)
    done = _cli("reload", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert _status(readable)["keys"] == before["keys"]
    assert agent.stop() == 0


def test_daemon_publishes_a_reload_it_refused(fr: FakeRoot, tmp_path: Path, agents: list[Agent]) -> None:
    # SIGHUP straight to the daemon (as `kill -HUP` or an older unit would): the file is broken by
    # then, the daemon refuses it and says so in its status, keeping its configuration.
    config = write_config(tmp_path / "agent.toml", tmp_path / "state")
    readable = write_config(tmp_path / "status.toml", tmp_path / "state")  # `status` reads it
    agent = Agent(config, fr.root).start()
    agents.append(agent)
    wait_for(lambda: "ready" in agent.text(), what="ready")
    config.write_text(config.read_text() + '[policy]\nmin_rsa_bits = "many"\n')
    agent.signal(signal.SIGHUP)
    wait_for(lambda: (_status(readable).get("last_reload") or {}).get("result") == "refused", what="refusal")
    status = _status(readable)
    assert "policy.min_rsa_bits" in status["last_reload"]["detail"]
    assert status["config_generation"] == 0 and status["running"] is True
    assert agent.stop() == 0


def test_no_running_agent_is_exit_3(tmp_path: Path) -> None:
    config = write_config(tmp_path / "agent.toml", tmp_path / "state")
    done = _cli("reload", "--config", str(config))
    assert done.returncode == 3
    assert "no running agent" in done.stderr


def test_only_a_reload_begun_after_the_signal_acknowledges() -> None:
    record = {"started_usec": 1_000, "result": "applied", "generation": 2}
    assert reload_acknowledged({"last_reload": record}, 1_000) == record
    assert reload_acknowledged({"last_reload": record}, 1_001) is None  # an earlier reload
    assert reload_acknowledged({"last_reload": None}, 0) is None
    assert reload_acknowledged(None, 0) is None
    assert reload_acknowledged({"last_reload": {"started_usec": "1000"}}, 0) is None
