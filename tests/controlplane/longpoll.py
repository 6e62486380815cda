"""Contract §6.1 on the reference control plane: requests that wait for an instruction.

The server is a ThreadingHTTPServer (a thread per connection), so a held request holds its
connection's thread: `Waiters` bounds how many are held at once (`max_held`, default 1000; past it a
request is answered 503 with Retry-After at once) and wakes exactly the requests of the host an
instruction was issued for (one condition per host over one shared lock). `generation(host)` is read
in the handler under the store lock and bumped by `issued(host)` under the same lock, so an
instruction issued between the handler's "nothing pending" and the wait is never missed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_MAX_HELD = 1000


@dataclass(frozen=True)
class Hold:
    """An answer to hold: wait for `host_id`'s generation to move past `generation`, at most `seconds`."""

    host_id: str
    seconds: float
    generation: int


class Waiters:
    def __init__(self, max_held: int = DEFAULT_MAX_HELD) -> None:
        self.max_held = max_held
        self._lock = threading.Lock()
        self._conditions: dict[str, threading.Condition] = {}
        self._generations: dict[str, int] = {}
        self._held = 0
        self._closing = False

    @property
    def held(self) -> int:
        with self._lock:
            return self._held

    def generation(self, host_id: str) -> int:
        with self._lock:
            return self._generations.get(host_id, 0)

    def issued(self, host_id: str) -> None:
        """An instruction for `host_id` is pending: answer its waiting request now."""
        with self._lock:
            self._generations[host_id] = self._generations.get(host_id, 0) + 1
            condition = self._conditions.get(host_id)
            if condition is not None:
                condition.notify_all()

    def wait(self, hold: Hold, *, cut_after: float | None = None) -> bool | None:
        """Block the calling (connection) thread until an instruction is issued for the host, the
        hold's time passes, or the server closes. True: something was issued; False: time passed;
        None: answer nothing (the server is closing, the bound is reached, or `cut_after` seconds
        passed - an idle cut). The caller answers from the store when it gets True or False."""
        with self._lock:
            if self._closing or self._held >= self.max_held:
                return None
            condition = self._conditions.setdefault(hold.host_id, threading.Condition(self._lock))
            self._held += 1
            try:
                limit = hold.seconds if cut_after is None else min(hold.seconds, cut_after)
                deadline = time.monotonic() + limit
                moved: Callable[[], bool] = lambda: (  # noqa: E731
                    self._closing or self._generations.get(hold.host_id, 0) != hold.generation
                )
                while not moved():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    condition.wait(remaining)
                if self._closing:
                    return None
                if moved():
                    return True
                return None if cut_after is not None and cut_after < hold.seconds else False
            finally:
                self._held -= 1

    def full(self) -> bool:
        with self._lock:
            return self._held >= self.max_held

    def close(self) -> None:
        """The server stops: every held request ends without an answer (as a restart drops them)."""
        with self._lock:
            self._closing = True
            for condition in self._conditions.values():
                condition.notify_all()
