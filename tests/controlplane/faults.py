"""Fault injection for tests: fail, delay or drop matching requests. Thread-safe."""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass
class FailRule:
    remaining: int
    status: int
    code: str | None
    path_prefix: str | None
    retry_after: int | float | str | None


@dataclass
class DropRule:
    remaining: int
    path_prefix: str | None
    after_processing: bool


@dataclass(frozen=True)
class FaultPlan:
    delay: float
    drop: DropRule | None
    fail: FailRule | None


def _matches(prefix: str | None, path: str) -> bool:
    return prefix is None or path.startswith(prefix)


class Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fails: list[FailRule] = []
        self._drops: list[DropRule] = []
        self._delays: dict[str | None, float] = {}
        # A proxy in front that cuts idle connections: a held (§6.1) request is dropped, unanswered,
        # after this many seconds. None: no such proxy.
        self.cut_idle_s: float | None = None

    def fail_next(
        self,
        n: int,
        status: int = 503,
        code: str | None = None,
        path_prefix: str | None = None,
        retry_after: int | float | str | None = None,
    ) -> None:
        """The next n matching requests get `status` (error body `code`) without being processed."""
        with self._lock:
            self._fails.append(FailRule(n, status, code, path_prefix, retry_after))

    def delay(self, seconds: float, path_prefix: str | None = None) -> None:
        """Every matching request waits `seconds` before it is processed, until set to 0 or cleared."""
        with self._lock:
            if seconds > 0:
                self._delays[path_prefix] = seconds
            else:
                self._delays.pop(path_prefix, None)

    def drop_next(self, n: int, path_prefix: str | None = None, after_processing: bool = False) -> None:
        """Close the connection of the next n matching requests without answering.

        By default before processing (nothing applied); after_processing=True applies the request and
        then loses the answer (what a client sees when a response times out).
        """
        with self._lock:
            self._drops.append(DropRule(n, path_prefix, after_processing))

    def cut_idle(self, seconds: float | None) -> None:
        """Drop every request held longer than `seconds` without an answer (None: never), as a proxy
        with an idle timeout does."""
        self.cut_idle_s = seconds

    def clear(self) -> None:
        self.cut_idle_s = None
        with self._lock:
            self._fails.clear()
            self._drops.clear()
            self._delays.clear()

    def take(self, path: str) -> FaultPlan:
        """Consume at most one drop or fail rule for this request (a drop wins) and return the plan."""
        with self._lock:
            delay = max((s for p, s in self._delays.items() if _matches(p, path)), default=0.0)
            drop = next((r for r in self._drops if r.remaining > 0 and _matches(r.path_prefix, path)), None)
            fail = None
            if drop is not None:
                drop.remaining -= 1
            else:
                fail = next(
                    (r for r in self._fails if r.remaining > 0 and _matches(r.path_prefix, path)), None
                )
                if fail is not None:
                    fail.remaining -= 1
            self._drops = [r for r in self._drops if r.remaining > 0]
            self._fails = [r for r in self._fails if r.remaining > 0]
            return FaultPlan(delay, drop, fail)
