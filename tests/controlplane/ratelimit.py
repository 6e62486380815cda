"""Sliding-window rate limits per (subject, class). Pure: the caller passes `now`; the caller locks."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_LIMITS: dict[str, int] = {"read": 1000, "write": 100, "scan": 10, "ephemeral": 50}
WINDOW_S = 60.0


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_after: int  # seconds until the oldest counted call leaves the window
    retry_after: int  # seconds to wait when not allowed, else 0

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_after),
        }


class SlidingWindowLimiter:
    def __init__(self, limits: Mapping[str, int] | None = None, window: float = WINDOW_S) -> None:
        self.limits = {**DEFAULT_LIMITS, **(limits or {})}
        self.window = window
        self._hits: dict[tuple[str, str], deque[float]] = {}

    def hit(self, subject: str, cls: str, now: float) -> Decision:
        """Count one call if the budget allows it (a refused call is not counted)."""
        limit = self.limits[cls]
        hits = self._hits.setdefault((subject, cls), deque())
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) >= limit:
            wait = max(1, math.ceil(hits[0] + self.window - now))
            return Decision(False, limit, 0, wait, wait)
        hits.append(now)
        reset = max(1, math.ceil(hits[0] + self.window - now))
        return Decision(True, limit, limit - len(hits), reset, 0)
