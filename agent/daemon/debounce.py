"""Per-key debouncing as a pure data structure (no clock, no threads: times are passed in).

A key becomes *due* once it has been quiet for ``quiet_s`` since its last touch, or once
``max_wait_s`` has passed since its first touch of the current burst (so a file rewritten
forever is still reported, every ``max_wait_s`` at worst). Keys are independent.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(slots=True)
class _Burst:
    first: float
    last: float


class Debouncer(Generic[K]):
    """Collects touches per key and says which keys are due at a given time."""

    def __init__(self, quiet_s: float, max_wait_s: float | None = None) -> None:
        if quiet_s < 0:
            raise ValueError("quiet_s must be >= 0")
        if max_wait_s is not None and max_wait_s < quiet_s:
            raise ValueError("max_wait_s must be >= quiet_s")
        self._quiet = quiet_s
        self._max_wait = max_wait_s
        self._bursts: dict[K, _Burst] = {}
        # Lazy min-heap of (deadline, sequence, key); entries made stale by later touches are
        # skipped when popped. The sequence number keeps keys of any type out of comparisons.
        self._heap: list[tuple[float, int, K]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._bursts)

    def _deadline(self, burst: _Burst) -> float:
        quiet_end = burst.last + self._quiet
        if self._max_wait is None:
            return quiet_end
        return min(quiet_end, burst.first + self._max_wait)

    def touch(self, key: K, now: float) -> None:
        """Record an event on ``key`` at time ``now``."""
        burst = self._bursts.get(key)
        if burst is None:
            burst = _Burst(first=now, last=now)
            self._bursts[key] = burst
        else:
            burst.last = max(burst.last, now)
        self._seq += 1
        heapq.heappush(self._heap, (self._deadline(burst), self._seq, key))

    def next_deadline(self) -> float | None:
        """The earliest time at which some key becomes due, or None when nothing is pending."""
        while self._heap:
            deadline, _, key = self._heap[0]
            burst = self._bursts.get(key)
            if burst is not None and self._deadline(burst) == deadline:
                return deadline
            heapq.heappop(self._heap)  # stale entry
        return None

    def pop_due(self, now: float) -> set[K]:
        """Remove and return every key whose deadline is at or before ``now``."""
        due: set[K] = set()
        while self._heap and self._heap[0][0] <= now:
            deadline, _, key = heapq.heappop(self._heap)
            burst = self._bursts.get(key)
            if burst is not None and self._deadline(burst) == deadline:
                del self._bursts[key]
                due.add(key)
        return due
