"""What to do after one attempt of a control-plane call (pure: no I/O, no clock; randomness is passed in).

The decision half of the client's request loop, the h11 way: `ApiClient._call` (agent/control/client.py)
sends, describes what came back as an `Attempt`, asks `CallRetry.decide` and does what the `Decision`
says; the fleet simulator (benchmarks/fleet_sim.py) asks the same object on a virtual clock. The rules
are the contract's §2:

- a 2xx, or a 304 to a conditional GET that asked for it, ends the call (agent/control/answers.py
  `judge_status`, the one rule for what delivers);
- a 401 to an authenticated call renews the access token once and retries at once (`renew`);
- a 429 holds every call of the class for at least the server's wait (Retry-After, else
  `details.retry_after`, else exponential) plus jitter, then retries;
- a 5xx, a 3xx (never followed: contract section 1), a status no call expects (1xx as a final
  answer, a 304 nobody asked for, 6xx and beyond), a timeout (the attempt's deadline too), a broken
  connection or an answer refused unread (past the call's cap, compressed) retries after the one
  backoff (full jitter, capped);
- any other 4xx (403, 404, 400/422 ...), an unverified certificate or an unusable URL ends the
  call with its error;
- every call has at most `attempts` tries; past them the error goes to the caller, who retries on
  its own schedule (the link's duties, the sender, the instruction channel: agent/daemon/link_schedule.py);
- independently, a response whose X-RateLimit headers say the class's budget is spent holds the class
  until the reset (`hold_class_s`), so the next call waits instead of earning a 429.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from agent.control.answers import judge_status
from agent.control.backoff import BackoffPolicy

# How an attempt without an HTTP answer failed (ApiClient classifies httpx's exceptions):
# connect - no connection (refused, unreachable, connect timeout); dropped - the connection closed
# or reset before an answer (a restarting server, a proxy cutting an idle request); timeout - no
# answer within the read/write/pool timeout; tls - the server's certificate was not verified;
# unsupported - the URL cannot be used at all; unread - an answer came but was refused unread (past
# the call's cap, or compressed though identity was asked: agent/control/transfer.py).
TransportKind = Literal["connect", "dropped", "timeout", "tls", "unsupported", "unread"]
FINAL_TRANSPORT: frozenset[TransportKind] = frozenset({"tls", "unsupported"})

Verdict = Literal["done", "renew", "retry", "give_up"]


@dataclass(frozen=True)
class Attempt:
    """What one attempt came to: an HTTP status, or how the transport failed."""

    status: int | None  # None: no HTTP answer the agent reads (see transport)
    transport: TransportKind | None = None
    retry_after: float | None = None  # seconds the server asked to wait (429), already parsed
    budget_wait: float | None = None  # seconds until the class's spent budget resets (X-RateLimit)


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    sleep_s: float = 0.0  # wait this long before the next attempt (retry)
    hold_class_s: float | None = None  # no call of this request class for this long (429, spent budget)
    failures: int = 0  # failed attempts of this call so far (for logging)


class CallRetry:
    """The retry state of one logical call (all its attempts share one Idempotency-Key)."""

    def __init__(
        self,
        policy: BackoffPolicy,
        *,
        attempts: int | None = None,
        wait: bool = True,
        not_modified_ok: bool = False,
    ) -> None:
        """`attempts`: tries at most (default: the policy's); `wait`: False makes a 429 final at once
        (the caller would rather hear of it than wait); `not_modified_ok`: a conditional GET, for
        which a 304 is an answer."""
        self.policy = policy
        self.attempts = max(1, attempts if attempts is not None else policy.max_attempts)
        self.wait = wait
        self.not_modified_ok = not_modified_ok
        self.failures = 0
        self.renewed = False

    def decide(self, attempt: Attempt, rng: random.Random, *, authenticated: bool = True) -> Decision:
        """The next step after `attempt`; `authenticated`: the attempt carried an access token."""
        hold = attempt.budget_wait
        status = attempt.status
        if status is None:
            if attempt.transport in FINAL_TRANSPORT:
                return Decision("give_up", hold_class_s=hold, failures=self.failures)
            return self._transient(rng, hold)
        if judge_status(status, not_modified_ok=self.not_modified_ok) == "delivered":
            return Decision("done", hold_class_s=hold, failures=self.failures)
        if status == 401 and authenticated and not self.renewed:
            self.renewed = True
            return Decision("renew", hold_class_s=hold, failures=self.failures)
        if status == 429:
            self.failures += 1
            delay = self.policy.rate_limited_delay(attempt.retry_after, self.failures - 1, rng)
            hold = delay if hold is None else max(hold, delay)
            verdict: Verdict = "give_up" if not self.wait or self.failures >= self.attempts else "retry"
            return Decision(verdict, hold_class_s=hold, failures=self.failures)
        if 400 <= status < 500:
            return Decision("give_up", hold_class_s=hold, failures=self.failures)
        return self._transient(rng, hold)  # 5xx, 3xx, a status no call expects

    def _transient(self, rng: random.Random, hold: float | None) -> Decision:
        self.failures += 1
        if self.failures >= self.attempts:
            return Decision("give_up", hold_class_s=hold, failures=self.failures)
        delay = self.policy.transient_delay(self.failures - 1, rng)
        return Decision("retry", sleep_s=delay, hold_class_s=hold, failures=self.failures)
