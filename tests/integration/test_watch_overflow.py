"""A real inotify queue overflow, end to end: the agent rescans and reports what the queue lost.

The agent runs as a child process in standalone mode (tests/integration/daemon_support.py). The test
stops it with SIGSTOP, so nothing reads its inotify descriptor; floods a watched directory with twice
``fs.inotify.max_queued_events`` events (read from /proc, never changed); appends a key to alice's
authorized_keys while the queue is full, so the kernel drops that event and queues IN_Q_OVERFLOW
instead; and resumes the agent with SIGCONT. Only a rescan can find the key, and the agent must stay
healthy: it goes on pinging systemd's watchdog (sd_notify on a real socket).

The regression test of issue 10: with watchdog 7.1.1 under the former watcher (watchdog's private
inotify layer), the overflow raised AttributeError in watchdog's reader thread after the rescan was
queued; the reader died, the health check withheld the watchdog ping, and systemd would have
restarted the agent.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.fakeroot import FakeRoot, ed25519_line
from tests.integration.daemon_support import Agent, fingerprint_of, wait_for, write_config
from tests.integration.test_daemon import NotifySocket
from tests.integration.test_watcher import flood, max_queued_events

pytestmark = pytest.mark.slow

AUTHORIZED_KEYS = "/home/alice/.ssh/authorized_keys"


def process_state(pid: int) -> str:
    """The state letter of /proc/PID/stat ("T": stopped). The name field may hold spaces: split after it."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def logged_key_added(agent: Agent, fingerprint: str) -> bool:
    return any("key_added" in line and fingerprint in line for line in agent.text().splitlines())


def test_a_key_added_during_a_real_queue_overflow_is_reported(
    fr: FakeRoot, tmp_path: Path, agents: list[Agent]
) -> None:
    sock = NotifySocket(tmp_path / "notify.sock")
    env = {"NOTIFY_SOCKET": str(sock.path), "WATCHDOG_USEC": "1000000"}  # a health check every 0.5 s
    agent = Agent(write_config(tmp_path / "agent.toml", tmp_path / "state"), fr.root, env=env).start()
    agents.append(agent)
    assert agent.proc is not None
    pid = agent.proc.pid
    sock.wait("READY=1")
    during = ed25519_line("added-during-overflow")
    during_fp = fingerprint_of(during)

    agent.signal(signal.SIGSTOP)
    try:
        wait_for(lambda: process_state(pid) == "T", what="agent stopped")
        # /etc is watched (it holds /etc/passwd); flood-a and flood-b are no targets.
        flood(fr.path("/etc"), 2 * max_queued_events())
        with fr.path(AUTHORIZED_KEYS).open("a") as f:
            f.write(during + "\n")
    finally:
        agent.signal(signal.SIGCONT)

    wait_for(lambda: "full rescan: inotify queue overflow" in agent.text(), what="rescan after the overflow")
    wait_for(lambda: logged_key_added(agent, during_fp), what="the key added during the overflow")
    # Watching goes on: a later key arrives through inotify again.
    later = ed25519_line("added-after-overflow")
    later_fp = fingerprint_of(later)
    with fr.path(AUTHORIZED_KEYS).open("a") as f:
        f.write(later + "\n")
    wait_for(lambda: logged_key_added(agent, later_fp), what="a key added after the overflow")
    # Healthy after all this: a watchdog ping sent after the later key was reported.
    sock.wait("WATCHDOG=1", after=len(sock.drain()))
    assert "health check failed" not in agent.text()
    assert agent.text().count("full rescan: inotify queue overflow") == 1
    assert agent.stop() == 0
