"""agent.daemon.notify against real AF_UNIX datagram sockets (a path and the abstract namespace)."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.daemon.notify import (
    STATUS_MAX_CHARS,
    Notifier,
    sanitize_status,
    watchdog_interval_from_env,
)


@pytest.fixture(params=["path", "abstract"])
def notify_socket(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
        sock.bind(address)
        env_value = address
    else:
        name = f"sshklm-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        env_value = "@" + name
    sock.settimeout(2.0)
    monkeypatch.setenv("NOTIFY_SOCKET", env_value)
    yield sock
    sock.close()


def receive(sock: socket.socket) -> bytes:
    return sock.recv(4096)


def test_messages_arrive_as_exact_datagrams(notify_socket: socket.socket) -> None:
    notifier = Notifier()
    assert notifier.enabled
    notifier.ready()
    assert receive(notify_socket) == b"READY=1"
    notifier.ready("scanning done: 42 keys")
    assert receive(notify_socket) == b"READY=1\nSTATUS=scanning done: 42 keys"
    notifier.status("outbox 3 pending")
    assert receive(notify_socket) == b"STATUS=outbox 3 pending"
    notifier.watchdog()
    assert receive(notify_socket) == b"WATCHDOG=1"
    notifier.stopping()
    assert receive(notify_socket) == b"STOPPING=1"


def test_reloading_carries_the_monotonic_clock(notify_socket: socket.socket) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    Notifier().reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    data = receive(notify_socket)
    first, second = data.split(b"\n")
    assert first == b"RELOADING=1"
    name, _, value = second.partition(b"=")
    assert name == b"MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_non_latin1_multiline_status_is_sanitised_not_dropped(notify_socket: socket.socket) -> None:
    # Unsanitised, sdnotify would fail to encode this and silently send nothing.
    Notifier().status("clé ✓ rotated\nREADY=1\tnow")
    assert receive(notify_socket) == b"STATUS=cl? ? rotated READY=1 now"


def test_sanitize_status_limits_length_and_lines() -> None:
    text = sanitize_status("x" * 500 + "\n" + "y")
    assert len(text) == STATUS_MAX_CHARS and text.endswith("...")
    assert "\n" not in sanitize_status("a\r\nb")
    assert sanitize_status("  spaced   out ") == "spaced out"


def test_without_notify_socket_everything_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    notifier.ready("x")
    notifier.status("x")
    notifier.watchdog()
    notifier.reloading()
    notifier.stopping()


def test_missing_socket_file_does_not_raise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "absent.sock"))
    notifier = Notifier()
    assert notifier.enabled
    notifier.ready()  # systemd gone: the daemon keeps running (reaching here is the point)
    notifier.status("still running")


def test_watchdog_interval_from_environment() -> None:
    pid = 4242
    assert watchdog_interval_from_env({}, pid) is None
    assert watchdog_interval_from_env({"WATCHDOG_USEC": "30000000"}, pid) == 30.0
    assert watchdog_interval_from_env({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, pid) == 30.0
    assert watchdog_interval_from_env({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, pid) is None
    assert watchdog_interval_from_env({"WATCHDOG_USEC": "0"}, pid) is None
    assert watchdog_interval_from_env({"WATCHDOG_USEC": "abc"}, pid) is None
    assert watchdog_interval_from_env({"WATCHDOG_USEC": "5", "WATCHDOG_PID": "x"}, pid) is None


def test_notifier_watchdog_interval_checks_our_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2500000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert Notifier().watchdog_interval() == 2.5
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert Notifier().watchdog_interval() is None
