"""Retry/backoff policy and the client-side rate budget (pure: time and randomness are passed in).

- ``backoff_delay`` / ``backoff_ceiling``: THE exponential backoff of the agent (full jitter, capped),
  used by the HTTP client, the outbox sender and the usage follower's journalctl restarts. The
  exponent is capped, so no number of consecutive failures can overflow it.
- ``BackoffPolicy.transient_delay``: that backoff for 5xx/timeouts/connection errors within one
  call (base 1 s, cap 300 s by default), with the number of attempts per call.
- ``BackoffPolicy.rate_limited_delay``: for a 429, at least the server's Retry-After plus a
  little jitter (so a fleet told "2 s" does not come back in lockstep); without one, exponential.
- ``parse_retry_after``: the header in either form the HTTP spec allows (delta-seconds or HTTP-date).
- ``RateBudget``: a sliding one-minute window per request class with the published limits, plus
  a "blocked until" per class set by a 429, so a call never exceeds the limit before the server
  complains and no call of a throttled class goes out early.
"""

from __future__ import annotations

import email.utils
import random
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

RequestClass = Literal["read", "write", "scan", "ephemeral"]

# The published per-minute limits of an API key.
DEFAULT_LIMITS: Mapping[RequestClass, int] = {"read": 1000, "write": 100, "scan": 10, "ephemeral": 50}
WINDOW_S = 60.0


def classify(method: str, path: str) -> RequestClass:
    """The rate-limit class of a request, as the control plane counts it.

    Starting a discovery scan (``POST /v1/scans``) and requesting ephemeral access
    (``POST /v1/ephemeral``) have their own, much smaller budgets; any other GET is a read and
    any other call (including the agent's ``PUT /v1/scans/{id}/result`` and the token calls) a write.
    """
    verb = method.upper()
    if verb == "POST" and path.rstrip("/") == "/v1/scans":
        return "scan"
    if verb == "POST" and path.rstrip("/") == "/v1/ephemeral":
        return "ephemeral"
    return "read" if verb in ("GET", "HEAD") else "write"


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After header value, or None when absent or unparseable."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        return float(text)
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:  # a non-integer delta is outside the spec but its meaning is plain
        return max(0.0, seconds) if seconds == seconds and seconds != float("inf") else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # HTTP-dates are GMT by definition
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


# Reset values past this are not believed (a server sending epoch times, a typo): the 429 path
# still protects us, with the server's own Retry-After.
_MAX_RESET_S = 3600.0


def exhausted_budget_wait(remaining: str | None, reset: str | None) -> float | None:
    """Seconds to hold a request class when the server's X-RateLimit headers say its budget is
    spent (Remaining 0; Reset = seconds until a call leaves the window), else None. Pure."""
    if remaining is None or reset is None or remaining.strip() != "0":
        return None
    try:
        seconds = float(reset.strip())
    except ValueError:
        return None
    if not 0 < seconds <= _MAX_RESET_S:
        return None
    return seconds


def retry_after_from_details(details: Mapping[str, Any]) -> float | None:
    value = details.get("retry_after")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return max(0.0, float(value))


# 2**64 times any base is past any cap worth having; stopping the exponent there keeps the float
# arithmetic finite after any number of failures (2.0 ** 1024 raises OverflowError).
MAX_EXPONENT = 64


def backoff_ceiling(attempt: int, *, base: float, cap: float) -> float:
    """The exponential envelope of the ``attempt``-th retry (0-based): min(cap, base * 2**attempt)."""
    return min(cap, base * 2.0 ** min(max(attempt, 0), MAX_EXPONENT))


def backoff_delay(attempt: int, rng: random.Random, *, base: float, cap: float) -> float:
    """Full jitter: uniform in [0, backoff_ceiling(attempt)], so a fleet does not retry in lockstep."""
    return rng.uniform(0.0, backoff_ceiling(attempt, base=base, cap=cap))


@dataclass(frozen=True)
class BackoffPolicy:
    base: float = 1.0
    cap: float = 300.0
    max_attempts: int = 5  # attempts per call (the first one included) before the error is raised
    rate_limit_jitter: float = 0.1  # extra wait after Retry-After, as a fraction of it (at least 0.1 s)

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap < self.base:
            raise ValueError("backoff needs 0 < base <= cap")
        if self.max_attempts < 1:
            raise ValueError("backoff needs max_attempts >= 1")

    def ceiling(self, retry: int) -> float:
        """The exponential envelope for the ``retry``-th retry (0-based)."""
        return backoff_ceiling(retry, base=self.base, cap=self.cap)

    def transient_delay(self, retry: int, rng: random.Random) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**retry)]."""
        return backoff_delay(retry, rng, base=self.base, cap=self.cap)

    def rate_limited_delay(self, retry_after: float | None, retry: int, rng: random.Random) -> float:
        """At least ``retry_after`` (never less), plus jitter; exponential when the server gave none."""
        floor = retry_after if retry_after is not None else self.ceiling(retry)
        return floor + rng.uniform(0.0, max(0.1, floor * self.rate_limit_jitter))


class RateBudget:
    """Sliding-window request budget per class, shared by every thread of one client.

    ``acquire(cls, now)`` either records the call and returns 0.0, or records nothing and returns
    how long to wait before asking again. ``now`` is a monotonic time in seconds.
    """

    def __init__(self, limits: Mapping[str, int] | None = None, window: float = WINDOW_S) -> None:
        merged: dict[str, int] = {str(k): v for k, v in DEFAULT_LIMITS.items()}
        for cls, limit in (limits or {}).items():
            if cls not in DEFAULT_LIMITS:
                raise ValueError(f"unknown request class {cls!r}")
            if limit < 1:
                raise ValueError(f"rate limit for {cls!r} must be >= 1")
            merged[cls] = int(limit)
        self.limits: Mapping[str, int] = merged
        self.window = window
        self._sent: dict[str, deque[float]] = {cls: deque() for cls in merged}
        self._blocked_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def acquire(self, cls: RequestClass, now: float) -> float:
        with self._lock:
            blocked = self._blocked_until.get(cls, 0.0) - now
            if blocked > 0:
                return blocked
            sent = self._sent[cls]
            while sent and sent[0] <= now - self.window:
                sent.popleft()
            if len(sent) >= self.limits[cls]:
                return max(sent[0] + self.window - now, 1e-3)
            sent.append(now)
            return 0.0

    def block_until(self, cls: RequestClass, until: float) -> None:
        """A 429 said: nothing of this class before ``until`` (never shortens an earlier block)."""
        with self._lock:
            self._blocked_until[cls] = max(self._blocked_until.get(cls, 0.0), until)

    def blocked_until(self, cls: RequestClass) -> float:
        with self._lock:
            return self._blocked_until.get(cls, 0.0)
