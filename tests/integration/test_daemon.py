"""The daemon end to end: real inotify, the reference control plane over loopback HTTP,
outages, kill -9, sd_notify on a real AF_UNIX socket, SIGHUP with a broken config."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.controlplane import ControlPlane
from tests.fakeroot import FakeRoot, ed25519_line
from tests.integration.daemon_support import (
    Agent,
    appended_fingerprints,
    assert_reports_events_and_heartbeats,
    enroll,
    fingerprint_of,
    start_enrolled,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.slow


def test_standalone_logs_changes(fr: FakeRoot, tmp_path: Path, agents: list[Agent]) -> None:
    agent = Agent(write_config(tmp_path / "agent.toml", tmp_path / "state"), fr.root).start()
    agents.append(agent)
    wait_for(lambda: "ready" in agent.text(), what="ready")
    fr.authorized_keys("alice", [ed25519_line("initial"), ed25519_line("second")])
    wait_for(lambda: "key_added user=alice" in agent.text(), what="logged change")
    assert agent.stop() == 0


def test_reports_to_control_plane(fr: FakeRoot, tmp_path: Path, agents: list[Agent]) -> None:
    with ControlPlane.start() as cp:
        state = tmp_path / "state"
        host_id = enroll(cp, state)
        agent = Agent(write_config(tmp_path / "agent.toml", state, cp.url), fr.root).start()
        agents.append(agent)
        assert_reports_events_and_heartbeats(cp, host_id, fr, "added-later")
        assert agent.stop() == 0


def test_outage_loses_nothing_and_keeps_order(fr: FakeRoot, tmp_path: Path, agents: list[Agent]) -> None:
    db = tmp_path / "cp.db"
    cp = ControlPlane.start(db=str(db))
    port = int(cp.url.rsplit(":", 1)[1])
    state = tmp_path / "state"
    host_id = enroll(cp, state)
    agent = Agent(write_config(tmp_path / "agent.toml", state, cp.url), fr.root).start()
    agents.append(agent)
    try:
        wait_for(lambda: cp.inventory(host_id) is not None, what="first inventory")
        cp.stop()
        lines = [ed25519_line(f"outage-{i}") for i in range(100)]
        path = fr.path("/home/alice/.ssh/authorized_keys")
        for line in lines:
            with path.open("a") as f:
                f.write(line + "\n")
            time.sleep(0.05)  # separate writes; several may share one debounce window
        cp = ControlPlane.start(port=port, db=str(db))
        wanted = [fingerprint_of(line) for line in lines]
        wait_for(
            lambda: set(wanted) <= set(appended_fingerprints(cp, host_id)), timeout=60, what="all events"
        )
        events = cp.events(host_id)
        ids = [e["id"] for e in events]
        assert len(ids) == len(set(ids)), "an event arrived twice"
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(seqs), "events out of order"
        got = [fp for fp in appended_fingerprints(cp, host_id) if fp in wanted]
        assert got == wanted
        assert agent.stop() == 0
    finally:
        cp.stop()


def test_kill_9_with_pending_outbox_then_restart(fr: FakeRoot, tmp_path: Path, agents: list[Agent]) -> None:
    with ControlPlane.start() as cp:
        host_id, config, agent = start_enrolled(cp, fr, tmp_path, agents)
        cp.faults.fail_next(10_000, status=503, path_prefix=f"/v1/hosts/{host_id}/events")
        lines = [ed25519_line(f"before-kill-{i}") for i in range(5)]
        for line in lines:
            with fr.path("/home/alice/.ssh/authorized_keys").open("a") as f:
                f.write(line + "\n")
            time.sleep(0.4)
        # The failed delivery as the link's health logs it (once: the outage is not a line per try).
        wait_for(lambda: "control plane: events: SERVER_ERROR" in agent.text(), what="a failed delivery")
        agent.kill()  # SIGKILL with events still in the outbox
        cp.faults.clear()
        restarted = Agent(config, fr.root).start()
        agents.append(restarted)
        wanted = {fingerprint_of(line) for line in lines}
        wait_for(
            lambda: wanted <= set(appended_fingerprints(cp, host_id)), timeout=30, what="events after restart"
        )
        assert restarted.stop() == 0


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.path = path
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode("latin-1"))
            except TimeoutError:
                return self.messages

    def wait(self, text: str, timeout: float = 15.0, after: int = 0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, msg in enumerate(self.drain()[after:], start=after):
                if text in msg:
                    return i
        raise AssertionError(f"no notify message containing {text!r}; got {self.messages}")


def test_sd_notify_ready_watchdog_reload_and_stop(fr: FakeRoot, tmp_path: Path, agents: list[Agent]) -> None:
    sock = NotifySocket(tmp_path / "notify.sock")
    config = write_config(tmp_path / "agent.toml", tmp_path / "state")
    env = {"NOTIFY_SOCKET": str(sock.path), "WATCHDOG_USEC": "2000000"}
    agent = Agent(config, fr.root, env=env).start()
    agents.append(agent)
    ready = sock.wait("READY=1")
    assert "STATUS=" in sock.messages[ready] and "keys" in sock.messages[ready]
    sock.wait("WATCHDOG=1", after=ready)
    # SIGHUP with a good config: RELOADING=1 with MONOTONIC_USEC, then READY=1.
    agent.signal(signal.SIGHUP)
    reloading = sock.wait("RELOADING=1", after=ready + 1)
    assert "MONOTONIC_USEC=" in sock.messages[reloading]
    sock.wait("READY=1", after=reloading)
    # SIGHUP with a broken config: the old one stays, the agent says why and keeps running.
    good = config.read_text()
    config.write_text(good + "[watch]\nbogus = 1\n")
    count = len(sock.drain())
    agent.signal(signal.SIGHUP)
    sock.wait("READY=1", after=count)
    wait_for(lambda: "reload refused" in agent.text(), what="reload refused log")
    assert agent.proc is not None and agent.proc.poll() is None
    config.write_text(good)
    # SIGTERM: STOPPING=1 and a clean exit well within 10 s.
    started = time.monotonic()
    assert agent.stop(timeout=10) == 0
    assert time.monotonic() - started < 10
    sock.wait("STOPPING=1")


def test_status_command_reads_daemon_state(fr: FakeRoot, tmp_path: Path, agents: list[Agent]) -> None:
    config = write_config(tmp_path / "agent.toml", tmp_path / "state")
    agent = Agent(config, fr.root).start()
    agents.append(agent)
    wait_for(lambda: "ready" in agent.text(), what="ready")

    def status() -> dict[str, object]:
        out = subprocess.run(
            [sys.executable, "-m", "agent", "status", "--json", "--config", str(config)],
            capture_output=True,
            text=True,
            check=False,
        )
        return json.loads(out.stdout)

    st = status()
    assert st["running"] is True and st["mode"] == "standalone" and st["keys"] == 1
    assert st["watch"]["targets_inotify"] > 0  # type: ignore[index]
    assert agent.stop() == 0
    assert status()["running"] is False


def test_queue_overflow_triggers_full_rescan(
    fr: FakeRoot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent.config import parse_config_text
    from agent.daemon.service import Daemon

    config = parse_config_text(write_config(tmp_path / "agent.toml", tmp_path / "state").read_text())
    daemon = Daemon(config, root=str(fr.root), install_signals=False)
    daemon.start()
    try:
        scans: list[int] = []
        original = daemon.discovery.full_scan
        monkeypatch.setattr(
            daemon.discovery, "full_scan", lambda *a, **k: (scans.append(1), original(*a, **k))[1]
        )
        assert daemon.watcher is not None
        # The watcher's inotify layer reports IN_Q_OVERFLOW; watchdog itself would only log it.
        daemon.watcher._sink.on_queue_overflow()
        wait_for(lambda: scans, what="rescan after overflow")
    finally:
        daemon.stop()


def test_key_usage_from_sshd_log_becomes_key_used_and_last_used(
    fr: FakeRoot, tmp_path: Path, agents: list[Agent]
) -> None:
    line = ed25519_line("used-key")
    fr.authorized_keys("alice", [line])
    fp = fingerprint_of(line)
    auth_log = tmp_path / "auth.log"
    auth_log.write_text("")
    with ControlPlane.start() as cp:
        state = tmp_path / "state"
        host_id = enroll(cp, state)
        extra = f'[usage]\nsource = "file"\nlog_file = "{auth_log}"\n'
        config = write_config(tmp_path / "agent.toml", state, cp.url)
        # write_config disables usage; this test enables it on a log file of its own.
        config.write_text(config.read_text().replace("[usage]\nenabled = false\n", "") + extra)
        agent = Agent(config, fr.root).start()
        agents.append(agent)
        wait_for(lambda: cp.inventory(host_id) is not None, what="first inventory")
        wait_for(lambda: "key usage: source file" in agent.text(), what="usage follower started")
        with auth_log.open("a") as f:
            f.write(
                "2026-11-27T01:02:03.123456+00:00 host sshd[4242]: Accepted publickey for alice "
                f"from 203.0.113.9 port 52144 ssh2: ED25519 {fp}\n"
            )

        def used() -> list[dict]:  # type: ignore[type-arg]
            return [e for e in cp.events(host_id) if e["type"] == "key_used" and e["fingerprint"] == fp]

        wait_for(used, timeout=20, what="key_used event")
        event = used()[0]
        assert event["user"] == "alice" and event["detail"]["from"] == "203.0.113.9"
        assert event["detail"]["at"] == "2026-11-27T01:02:03Z"
        # last_used is in every inventory from the next full scan on (SIGHUP re-reads and rescans).
        agent.signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in agent.text(), what="reload and rescan")
        assert agent.stop() == 0
    out = subprocess.run(
        [sys.executable, "-c", _LAST_USED_PROBE, str(state), fp], capture_output=True, text=True
    )
    assert out.stdout.split() == ["2026-11-27T01:02:03Z", "2026-11-27T01:02:03Z"], out.stderr[-400:]


# Reads the daemon's store after it stopped: last_used is kept per fingerprint and user.
_LAST_USED_PROBE = """
import sys
from agent.inventory.model import rfc3339
from agent.store.db import open_database
from agent.store.state import StateStore
store = StateStore(open_database(sys.argv[1], check_integrity=False))
fp = sys.argv[2]
print(rfc3339(store.last_used_map()[(fp, "alice")]))
keys = store.load_inventory()["keys"]
print(*[k["last_used"] for k in keys if k["fingerprint"] == fp and k["user"] == "alice"])
"""


def test_ssh_dir_removed_and_recreated_and_a_new_user(
    fr: FakeRoot, tmp_path: Path, agents: list[Agent]
) -> None:
    agent = Agent(write_config(tmp_path / "agent.toml", tmp_path / "state"), fr.root).start()
    agents.append(agent)
    wait_for(lambda: "ready" in agent.text(), what="ready")
    ssh = fr.path("/home/alice/.ssh")
    shutil.rmtree(ssh)
    wait_for(lambda: "key_removed user=alice" in agent.text(), what="removal seen")
    ssh.mkdir(mode=0o700)
    fr.authorized_keys("alice", [ed25519_line("back")])
    wait_for(lambda: "key_added user=alice" in agent.text(), what="re-creation seen")
    # A user added after start, home and keys created afterwards (useradd -m, then the keys).
    fr.add_user("carol", 1002, make_home=False)
    home = fr.path("/home/carol")
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    os.chmod(home, 0o755)
    fr.authorized_keys("carol", [ed25519_line("carol-key")])
    wait_for(lambda: "key_added user=carol" in agent.text(), what="new user's key seen")
    assert agent.stop() == 0


def test_symlinked_authorized_keys_target_changes_are_seen_at_once(
    fr: FakeRoot, tmp_path: Path, agents: list[Agent]
) -> None:
    # ~/.ssh/authorized_keys -> ~/keys/ak (inside the home: sshd and the agent follow it). An edit of
    # ~/keys/ak is an edit of alice's authorized keys; so is re-pointing the link.
    keys = fr.path("/home/alice/keys")
    keys.mkdir(mode=0o700)
    (keys / "ak").write_text(ed25519_line("initial") + "\n")
    (keys / "ak2").write_text(ed25519_line("other-file") + "\n")
    link = fr.path("/home/alice/.ssh/authorized_keys")
    link.unlink()
    link.symlink_to("../keys/ak")
    config = write_config(tmp_path / "agent.toml", tmp_path / "state")
    # No safety-net rescan during the test: what is seen is seen through the watch.
    config.write_text(config.read_text().replace("[schedule]\n", "[schedule]\nrescan_s = 3600\n"))
    agent = Agent(config, fr.root).start()
    agents.append(agent)
    wait_for(lambda: "ready" in agent.text(), what="ready")
    with (keys / "ak").open("a") as f:
        f.write(ed25519_line("through-the-link") + "\n")
    wait_for(lambda: agent.text().count("key_added user=alice") == 1, what="edit of the link's target")
    os.symlink("../keys/ak2", fr.path("/home/alice/.ssh/.ak.tmp"))
    os.rename(fr.path("/home/alice/.ssh/.ak.tmp"), link)  # ln -sfn: the link now points at ak2
    wait_for(lambda: "key_removed user=alice" in agent.text(), what="link re-pointed")
    added = agent.text().count("key_added user=alice")
    with (keys / "ak2").open("a") as f:
        f.write(ed25519_line("new-target") + "\n")
    wait_for(lambda: agent.text().count("key_added user=alice") > added, what="edit of the new target")
    assert agent.stop() == 0


def test_a_refused_api_key_stays_paused_across_a_restart(
    fr: FakeRoot, tmp_path: Path, agents: list[Agent]
) -> None:
    with ControlPlane.start() as cp:
        state = tmp_path / "state"
        host_id = enroll(cp, state)
        cp.revoke_api_key(host_id)
        config = write_config(tmp_path / "agent.toml", state, cp.url)
        first = Agent(config, fr.root).start()
        agents.append(first)
        wait_for(lambda: "refused this host's API key" in first.text(), what="the key refused")
        assert first.stop() == 0

        def token_calls() -> int:
            return sum(1 for r in cp.requests if r.path == "/v1/auth/token")

        refused = token_calls()
        second = Agent(config, fr.root).start()
        agents.append(second)
        wait_for(lambda: second.text().count("ready") >= 2, what="second start ready")
        time.sleep(3)  # three heartbeat periods: each would have tried the key without the saved pause
        assert token_calls() == refused
        out = subprocess.run(
            [sys.executable, "-m", "agent", "status", "--json", "--config", str(config)],
            capture_output=True,
            text=True,
            check=True,
        )
        assert json.loads(out.stdout)["auth_state"] == "auth_invalid"
        assert second.stop() == 0


def test_a_clean_restart_does_not_report_a_change_again(
    fr: FakeRoot, tmp_path: Path, agents: list[Agent]
) -> None:
    # The restart baseline is the last full scan's inventory; a clean stop saves what changed since.
    config = write_config(tmp_path / "agent.toml", tmp_path / "state")
    first = Agent(config, fr.root).start()
    agents.append(first)
    wait_for(lambda: "ready" in first.text(), what="ready")
    with fr.path("/home/alice/.ssh/authorized_keys").open("a") as f:
        f.write(ed25519_line("between-scans") + "\n")
    wait_for(lambda: "key_added user=alice" in first.text(), what="the change")
    assert first.stop() == 0
    changes = first.text().count("change #")
    second = Agent(config, fr.root).start()
    agents.append(second)
    wait_for(lambda: second.text().count("ready") >= 2, what="second start ready")
    time.sleep(1)
    assert second.text().count("change #") == changes == 1, second.text()[-2000:]
    # A change after the restart is still reported.
    with fr.path("/home/alice/.ssh/authorized_keys").open("a") as f:
        f.write(ed25519_line("after-restart") + "\n")
    wait_for(lambda: second.text().count("key_added user=alice") == 2, what="a later change")
    assert second.stop() == 0


# Builds the daemon as `run` does, starts and stops it, and names what it loaded.
_STANDALONE_PROBE = """
import sys
from agent.commands.run import build_daemon
from agent.config import load_config
config, _ = load_config(sys.argv[1])
daemon = build_daemon(config, root=sys.argv[2], config_path=sys.argv[1], install_signals=False)
daemon.start()
try:
    print(",".join(sorted(type(part).__name__ for part in daemon.parts)))
finally:
    daemon.stop()
heavy = ("httpx", "jwt", "agent.control.client", "agent.daemon.server_link", "agent.instructions.apply")
print(",".join(m for m in heavy if m in sys.modules))
print("agent.daemon.watcher" in sys.modules and "apscheduler" in sys.modules)
"""


def test_a_standalone_agent_loads_neither_httpx_nor_the_instruction_applier(
    fr: FakeRoot, tmp_path: Path
) -> None:
    # Memory: the idle RSS of a standalone agent (README) has no HTTP stack and no applier in it.
    auth_log = tmp_path / "auth.log"
    auth_log.write_text("")
    config = write_config(tmp_path / "agent.toml", tmp_path / "state")
    # Every part a standalone agent can have: the usage tracker (on a log file of its own).
    usage = f'[usage]\nsource = "file"\nlog_file = "{auth_log}"\n'
    config.write_text(config.read_text().replace("[usage]\nenabled = false\n", usage))
    out = subprocess.run(
        [sys.executable, "-c", _STANDALONE_PROBE, str(config), str(fr.root)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    parts, loaded, started = out.stdout.splitlines()
    assert parts == "UsageTracker"
    assert loaded == ""
    assert started == "True"


def test_a_reload_keeps_the_policy_the_control_plane_sent(fr: FakeRoot, tmp_path: Path) -> None:
    # The local policy is in force until (and unless) the control plane sends one; a SIGHUP
    # re-reads the local one but must not drop the server's (the link fetches a policy only
    # when the server's version changes, so a dropped one would not come back).
    import dataclasses

    from agent.config import parse_config_text
    from agent.daemon.parts import Core, Job
    from agent.daemon.service import Daemon

    class Recorder:
        core: Core | None = None

        def prepare(self, core: Core) -> None:
            self.core = core

        def jobs(self, schedule: object, first_contact: object) -> list[Job]:
            return []

        def start(self) -> None: ...

        def stop(self) -> None: ...

    path = write_config(tmp_path / "agent.toml", tmp_path / "state")
    part = Recorder()
    daemon = Daemon(
        parse_config_text(path.read_text()),
        root=str(fr.root),
        config_path=str(path),
        parts=[part],
        install_signals=False,
    )
    daemon.start()
    try:
        assert part.core is not None
        local = part.core.policy()
        assert local.version == 0
        part.core.adopt_policy(dataclasses.replace(local, version=7, min_rsa_bits=4096))
        path.write_text(path.read_text() + "[policy]\nmax_key_age_days = 30\n")
        daemon.reload()
        assert "reload refused" not in (daemon.last_error or "")
        assert (part.core.policy().version, part.core.policy().min_rsa_bits) == (7, 4096)
    finally:
        daemon.stop()
