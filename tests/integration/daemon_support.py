"""The daemon as a real child process, for the daemon's end-to-end tests (and the HTTPS ones):
the `Agent` harness, agent configs, enrolment, and the `fr` / `agents` fixtures (registered in
tests/conftest.py; a test file's own fixture of the same name wins)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.control.enroll import enroll_host
from tests.controlplane import ControlPlane
from tests.fakeroot import FakeRoot, ed25519_line


def wait_for(predicate: Callable[[], object], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def write_config(path: Path, state: Path, url: str = "", extra: str = "") -> Path:
    server = f'[server]\nurl = "{url}"\nallow_plain_http_loopback = true\n' if url else ""
    path.write_text(
        server
        + f'[state]\ndir = "{state}"\n'
        + "[schedule]\nstartup_splay_s = 0\nheartbeat_s = 1\njitter = 0.0\n"
        + "[watch]\npoll_interval_s = 5.0\n"
        + "[usage]\nenabled = false\n"
        + extra
    )
    return path


class Agent:
    """`sshklm-agent run` as a real child process."""

    def __init__(self, config: Path, root: Path, env: dict[str, str] | None = None) -> None:
        self.config, self.root = config, root
        self.log = config.parent / "agent.log"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Agent:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(self.config), "--root", str(self.root)],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("ab"),
            env=self.env,
        )
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


def with_host_identity(root: FakeRoot) -> FakeRoot:
    """The machine-id and hostname a fake root needs to be enrolled."""
    (root.root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (root.root / "etc/hostname").write_text("test-host\n")
    return root


@pytest.fixture
def fr(tmp_path: Path) -> FakeRoot:
    root = FakeRoot(tmp_path / "root")
    root.add_user("alice", 1000)
    root.authorized_keys("alice", [ed25519_line("initial")])
    return with_host_identity(root)


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    started: list[Agent] = []
    yield started
    for agent in started:
        agent.kill()


def append_key(root: FakeRoot, label: str) -> str:
    """A new key appended to alice's authorized_keys by hand; its fingerprint."""
    line = ed25519_line(label)
    with root.path("/home/alice/.ssh/authorized_keys").open("a") as f:
        f.write(line + "\n")
    return fingerprint_of(line)


def key_added_arrived(cp: ControlPlane, host_id: str, fingerprint: str) -> bool:
    return any(e["type"] == "key_added" and e["fingerprint"] == fingerprint for e in cp.events(host_id))


def enroll(cp: ControlPlane, state: Path) -> str:
    facts = {
        "machine_id": "m-" + state.name,
        "hostname": "test-host",
        "fqdn": "test-host",
        "os": {},
        "kernel": "",
        "agent_version": "0.1.0",
        "sshd_version": None,
        "host_keys": [],
    }
    return enroll_host(cp.url, cp.bootstrap_token, str(state), facts).host_id


def start_enrolled(
    cp: ControlPlane, fr: FakeRoot, tmp_path: Path, agents: list[Agent]
) -> tuple[str, Path, Agent]:
    """A host enrolled with `cp` and its agent running on `fr`, its first inventory received:
    (host_id, its config file, the agent)."""
    state = tmp_path / "state"
    host_id = enroll(cp, state)
    config = write_config(tmp_path / "agent.toml", state, cp.url)
    agent = Agent(config, fr.root).start()
    agents.append(agent)
    wait_for(lambda: cp.inventory(host_id) is not None, what="first inventory")
    return host_id, config, agent


def jti_of(token: str) -> str:
    """The jti of an instruction (a compact JWS), read without verifying it."""
    import jwt

    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


def results_for(cp: ControlPlane, jti: str) -> list[dict[str, Any]]:
    """The results the agent posted for the instruction `jti`."""
    return [r for r in cp.instruction_results() if r["jti"] == jti]


def appended_fingerprints(cp: ControlPlane, host_id: str, kind: str = "key_added") -> list[str]:
    return [e["fingerprint"] for e in cp.events(host_id) if e["type"] == kind]


def fingerprint_of(line: str) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-l", "-f", "-"], input=line.encode(), capture_output=True, check=True
    )
    return out.stdout.decode().split()[1]


def assert_reports_events_and_heartbeats(cp: ControlPlane, host_id: str, fr: FakeRoot, label: str) -> None:
    """A running enrolled agent: its first inventory arrives, a key appended to alice's file
    arrives as a key_added event, and heartbeats flow. `label` names the new key and the waits."""
    wait_for(lambda: cp.inventory(host_id) is not None, what=f"first inventory ({label})")
    inventory = cp.inventory(host_id)
    assert inventory is not None and any(k["comment"] == "initial" for k in inventory["keys"])
    new = ed25519_line(label)
    with fr.path("/home/alice/.ssh/authorized_keys").open("a") as f:
        f.write(new + "\n")
    fp = fingerprint_of(new)
    wait_for(lambda: fp in appended_fingerprints(cp, host_id), what=f"key_added event ({label})")
    wait_for(lambda: any(r.path.endswith("/heartbeat") for r in cp.requests), what=f"heartbeat ({label})")
