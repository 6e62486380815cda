"""The sender's retry loop: it outlives any outage, however long."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Sequence
from typing import Any

import pytest

from agent.daemon.sender import Sender

FAILURES = 10_000


class _Backlog:
    """An outbox with one event that never leaves (the destination refuses every delivery)."""

    def full_inventory_marker(self) -> None:
        return None

    def peek(self, limit: int) -> list[dict[str, Any]]:
        return [{"id": "e-1", "seq": 1}]

    def ack(self, ids: Sequence[str]) -> int:
        raise AssertionError("nothing was delivered, nothing may be acknowledged")


class _Down:
    ready = True

    def deliver(self, events: Sequence[dict[str, Any]]) -> list[str]:
        raise ConnectionError("control plane unreachable")

    def send_full_inventory(self) -> None:
        raise AssertionError("no full inventory was due")


def test_the_sender_survives_ten_thousand_consecutive_failures(caplog: pytest.LogCaptureFixture) -> None:
    # About 43 hours of outage at the 300 s cap reach 1,025 failures, where 2 ** failures used to
    # overflow outside the loop's try and end the thread. Tiny delays make 10,000 take a moment.
    caplog.set_level(logging.ERROR, logger="sshklm.sender")
    failures = 0
    enough = threading.Event()

    def counted(_message: str) -> None:
        nonlocal failures
        failures += 1
        if failures >= FAILURES:
            enough.set()

    sender = Sender(
        _Backlog(),  # type: ignore[arg-type]
        _Down(),
        rng=random.Random(7),
        base_s=1e-9,
        cap_s=1e-6,
        on_error=counted,
    )
    sender.start()
    sender.wake()  # the first attempt at once, not after the idle wait
    try:
        while not enough.wait(0.5):
            assert sender.is_alive(), f"the sender thread died after {failures} consecutive failures"
        assert sender.is_alive()
    finally:
        sender.stop(5.0)
    assert not sender.is_alive()
