"""Deliver the outbox: one thread, woken as soon as events are appended.

Events leave the outbox only when the destination accepted them (at-least-once, in seq
order, batches of <= 500). A failed delivery is retried with the agent's one backoff
(control/backoff.py: full jitter, base 1 s, cap 5 min, for any number of consecutive failures);
the events wait on disk meanwhile, and new ones do not cut the backoff short (the wait is
link_schedule.delivery_delay, which the fleet simulator runs too). When the outbox collapsed
during a long outage, a full inventory is sent first (it supersedes the dropped events).
In standalone mode the destination is the log.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from agent.control.backoff import BackoffPolicy
from agent.control.errors import ApiError
from agent.daemon.link_schedule import delivery_delay
from agent.store.outbox import Outbox

log = logging.getLogger("sshklm.sender")

BATCH = 500
JSON = dict[str, Any]


class Destination(Protocol):
    def deliver(self, events: Sequence[JSON]) -> list[str]:
        """Send events; return the ids to acknowledge (accepted or dropped as invalid)."""
        ...

    def send_full_inventory(self) -> None: ...

    @property
    def ready(self) -> bool:
        """False while the destination cannot take anything (not enrolled, auth invalid)."""
        ...


class LogDestination:
    """Standalone mode: every change is logged (by type, user, path, fingerprint) and acknowledged."""

    ready = True

    def deliver(self, events: Sequence[JSON]) -> list[str]:
        for event in events:
            log.info(
                "change #%s %s user=%s path=%s fingerprint=%s",
                event.get("seq"),
                event.get("type"),
                event.get("user"),
                event.get("path"),
                event.get("fingerprint"),
            )
        return [str(e["id"]) for e in events]

    def send_full_inventory(self) -> None:
        log.info("outbox collapsed during a long backlog; the next inventory carries the state")


class Sender:
    def __init__(
        self,
        outbox: Outbox,
        destination: Destination,
        *,
        rng: random.Random | None = None,
        base_s: float = 1.0,
        cap_s: float = 300.0,
        idle_wake_s: float = 30.0,
        on_error: Callable[[str], None] = lambda _msg: None,
    ) -> None:
        self._outbox = outbox
        self.destination = destination
        self._rng = rng or random.Random()
        self._backoff = BackoffPolicy(base=base_s, cap=cap_s)
        self._idle = idle_wake_s
        self._on_error = on_error
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._failures = 0
        self._thread = threading.Thread(target=self._loop, name="sshklm-sender", daemon=True)
        self.last_delivery_at: float | None = None
        self.retry_at: float | None = None  # wall time of the next attempt after a failure

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.is_set():
            delay, wakeable = delivery_delay(
                self._failures, self._rng, backoff=self._backoff, idle_s=self._idle
            )
            # When the next attempt goes while failing (status: "backoff remaining"); appends do not
            # cut a backoff short, only the agent's stop does.
            self.retry_at = time.time() + delay if self._failures else None
            (self._wake if wakeable else self._stop).wait(delay)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.flush()
                self._failures = 0
            except Exception as exc:  # a failed delivery must never end the loop
                self._failures += 1
                message = f"delivery failed ({type(exc).__name__}): {exc}"
                # The link's LinkHealth logs its failed calls (once, then at growing intervals).
                level = logging.DEBUG if isinstance(exc, ApiError) else logging.WARNING
                log.log(level, "%s; retrying with backoff (attempt %d)", message, self._failures)
                self._on_error(message)

    def flush(self) -> int:
        """Deliver everything pending now. Returns how many events were acknowledged."""
        if not self.destination.ready:
            return 0
        marker = self._outbox.full_inventory_marker()
        if marker is not None:
            self.destination.send_full_inventory()
            self._outbox.clear_full_inventory_flag(marker.get("seq"))
        done = 0
        while not self._stop.is_set():
            batch = self._outbox.peek(BATCH)
            if not batch:
                break
            ids = self.destination.deliver(batch)
            if not ids:
                break
            done += self._outbox.ack(ids)
            self.last_delivery_at = time.time()
        return done
