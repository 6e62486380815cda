"""The fleet simulator's engine: N agents' own timing code on one virtual clock, against a simulated
control plane.

Every timing decision a simulated host takes is the agent's: `LinkSchedule` and `InstructionChannel`
(agent/daemon/link_schedule.py) for the duties and the instruction channel, `delivery_delay` for the
sender, `CallRetry` (agent/control/retry.py) after every attempt, `RateBudget` (agent/control/backoff.py)
for the client-side budget, `stale_at` (agent/control/tokens.py) for token renewal, `channel_failure`
(agent/daemon/server_link.py) to tell failures apart, and `startup_splay`. What this module adds is
only what the daemon's shells do with those decisions (which request a duty sends, what an answer
means), mirrored one for one, and the other side: a control plane enforcing the published per-key
limits (tests/controlplane/ratelimit.py, the reference server's own limiter) and a total capacity.

Not simulated: the content of requests (an inventory's size, the instructions themselves), network
latency beyond a fixed round trip, and the local work of a host (scans take no virtual time); so
neither are the client's answer caps and per-attempt deadline (agent/control/transfer.py), which
bound an attempt's bytes and time, not what follows it. What counts as an answer (only a 2xx, a
3xx never) is `CallRetry`'s own (answers.judge_status), so the simulated hosts judge as agents do.

(Over 500 lines: the two sides of the conversation and the host's three shells, kept together so
the mirror of each shell stays next to the others.)
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from agent.control.backoff import BackoffPolicy, RateBudget, RequestClass
from agent.control.client import TOKEN_CALL_ATTEMPTS
from agent.control.connect import TOKEN_RENEWAL_SPREAD
from agent.control.errors import ApiError, code_for_status
from agent.control.retry import Attempt, CallRetry
from agent.control.tokens import REFRESH_MARGIN_S, TokenSet, renewal_spread, stale_at
from agent.daemon.link_schedule import (
    DUTIES,
    Duty,
    LinkSchedule,
    LinkTiming,
    delivery_delay,
    startup_splay,
)
from agent.daemon.server_link import ONE_ATTEMPT, channel_failure
from tests.controlplane.ratelimit import DEFAULT_LIMITS, SlidingWindowLimiter

SENDER_IDLE_S = 30.0  # Sender's idle_wake_s
EVENTS_PER_CALL = 500  # the client's MAX_EVENTS_PER_CALL
ACCESS_TTL_S = 900.0  # contract §3
Overload = Literal[503, 429]


class Loop:
    """A virtual clock and its timers (a heap of (time, order, callback))."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()

    def at(self, when: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (max(when, self.now), next(self._order), fn))

    def run(self, until: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= until:
            when, _, fn = heapq.heappop(heap)
            self.now = when
            fn()
        self.now = until


@dataclass
class Stats:
    """What the control plane saw: requests per second by class and by outcome."""

    per_second: Counter[tuple[int, str]] = field(default_factory=Counter)
    outcomes: Counter[tuple[str, int]] = field(default_factory=Counter)  # (class, status; 0: no answer)
    kinds: Counter[str] = field(default_factory=Counter)  # request kind (heartbeat, long_poll, ...)
    refused_while_down: int = 0  # attempts that met a server that was down (connection refused)

    def count(self, now: float, cls: str, kind: str) -> None:
        self.per_second[(int(now), cls)] += 1
        self.kinds[kind] += 1

    def series(self, start: int, end: int, classes: tuple[str, ...] | None = None) -> list[int]:
        """Requests in each second of [start, end), of the given classes (all by default)."""
        out = [0] * max(0, end - start)
        for (second, cls), n in self.per_second.items():
            if start <= second < end and (classes is None or cls in classes):
                out[second - start] += n
        return out


@dataclass
class Answer:
    attempt: Attempt
    held_s: float = 0.0
    wait_supported: bool = False


class Server:
    """The control plane: per-key limits, a total capacity (requests/s), outages, held long-polls."""

    def __init__(
        self,
        loop: Loop,
        *,
        capacity: float | None = None,
        overload: Overload = 503,
        rtt_s: float = 0.02,
        long_poll: bool = True,
        limits: dict[str, int] | None = None,
        policy_version: int = 1,
    ) -> None:
        self.loop = loop
        self.capacity = capacity
        self.overload = overload
        self.rtt = rtt_s
        self.long_poll = long_poll
        self.limiter = SlidingWindowLimiter(limits or dict(DEFAULT_LIMITS))
        self.policy_version = policy_version
        self.stats = Stats()
        self.outages: list[tuple[float, float]] = []
        self._second = -1
        self._in_second = 0
        self.events_seen: set[str] = set()
        self.duplicates = 0
        self.enrolled: set[int] = set()

    def down(self, now: float) -> bool:
        return any(start <= now < end for start, end in self.outages)

    def _outage_starting(self, after: float, before: float) -> float | None:
        starts = [start for start, _ in self.outages if after < start < before]
        return min(starts) if starts else None

    def request(
        self,
        subject: str,
        cls: RequestClass,
        kind: str,
        on_answer: Callable[[Answer], None],
        *,
        wait_s: int | None = None,
        apply: Callable[[], None] | None = None,
    ) -> None:
        """One request arriving now: answered (on_answer) after the round trip, or a hold."""
        loop = self.loop
        now = loop.now
        if self.down(now):
            self.stats.outcomes[(cls, 0)] += 1
            self.stats.refused_while_down += 1
            loop.at(now + self.rtt, lambda: on_answer(Answer(Attempt(None, "connect"))))
            return
        self.stats.count(now, cls, kind)
        second = int(now)
        if second != self._second:
            self._second, self._in_second = second, 0
        self._in_second += 1
        if self.capacity is not None and self._in_second > self.capacity:
            status = self.overload
            self.stats.outcomes[(cls, status)] += 1
            retry_after = 1.0 if status == 429 else None
            loop.at(now + self.rtt, lambda: on_answer(Answer(Attempt(status, retry_after=retry_after))))
            return
        decision = self.limiter.hit(subject, cls, now)
        if not decision.allowed:
            self.stats.outcomes[(cls, 429)] += 1
            wait = float(decision.retry_after)
            loop.at(now + self.rtt, lambda: on_answer(Answer(Attempt(429, retry_after=wait))))
            return
        hold = float(wait_s) if wait_s is not None and self.long_poll else 0.0
        done = now + self.rtt + hold
        cut = self._outage_starting(now, done)
        if cut is not None:
            # Processed, then the answer is lost as the server goes down: a retry may repeat it.
            if apply is not None:
                apply()
            self.stats.outcomes[(cls, 0)] += 1
            loop.at(cut, lambda: on_answer(Answer(Attempt(None, "dropped"), held_s=cut - now)))
            return
        self.stats.outcomes[(cls, 200)] += 1

        def answer() -> None:
            if apply is not None:
                apply()
            on_answer(Answer(Attempt(200), held_s=hold, wait_supported=wait_s is not None and self.long_poll))

        loop.at(done, answer)

    def accept_events(self, ids: list[str]) -> None:
        for event_id in ids:
            if event_id in self.events_seen:
                self.duplicates += 1
            else:
                self.events_seen.add(event_id)


@dataclass
class HostRecord:
    """What a scenario reads back about a host."""

    first_report_at: float | None = None
    events_made: int = 0
    enrolled_at: float | None = None
    enroll_failures: int = 0


class Host:
    """One agent: the daemon's link, sender and client shells over the agent's own timing code."""

    def __init__(
        self,
        index: int,
        loop: Loop,
        server: Server,
        timing: LinkTiming,
        rng: random.Random,
        *,
        max_attempts: int = 5,
    ) -> None:
        self.index = index
        self.host_id = f"hst_{index:05d}"
        self.loop = loop
        self.server = server
        self.timing = timing
        self.rng = rng
        self.max_attempts = max_attempts
        self.record = HostRecord()
        self.generation = 0  # a restart starts a new process: older timers are ignored
        self._event_ids = itertools.count()

    # -- a process start ------------------------------------------------------------------

    def start(self) -> None:
        """`sshklm-agent run` starting now (a fresh process: no token, an empty client budget)."""
        self.generation += 1
        loop = self.loop
        first_contact = loop.now + startup_splay(self.timing.startup_splay_s, self.rng)
        self.schedule = LinkSchedule(self.timing, first_contact, self.rng)
        self.budget = RateBudget()
        self.backoff = BackoffPolicy(max_attempts=self.max_attempts)
        self.tokens: TokenSet | None = None
        self.token_early = 0.0
        self._token_waiters: list[Callable[[bool], None]] | None = None
        self.changes = 0
        self.reported_changes: int | None = None
        if not hasattr(self, "outbox"):
            self.outbox: deque[str] = deque()  # the outbox survives a restart (SQLite)
        self.sender_failures = 0
        self.sender_busy = False
        self.sender_wakeable = True
        self._duty_version: dict[Duty, int] = dict.fromkeys(DUTIES, 0)
        self._arm()
        generation = self.generation
        loop.at(first_contact, lambda: self._channel_go(generation))
        if self.outbox:
            self._sender_flush()

    def _live(self, generation: int) -> bool:
        return generation == self.generation

    # -- the client: ApiClient._call's loop over CallRetry --------------------------------

    def call(
        self,
        cls: RequestClass,
        kind: str,
        on_done: Callable[[bool, Answer, float | None], None],
        *,
        attempts: int | None = None,
        wait_s: int | None = None,
        auth: bool = True,
        subject: str | None = None,
        apply: Callable[[], None] | None = None,
    ) -> None:
        """on_done(ok, the last answer, the class hold of a final 429)."""
        retry = CallRetry(self.backoff, attempts=attempts)
        generation = self.generation
        started = [0.0]

        def attempt() -> None:
            if not self._live(generation):
                return
            delay = self.budget.acquire(cls, self.loop.now)
            if delay > 0:
                self.loop.at(self.loop.now + delay, attempt)
                return
            if auth:
                self._with_token(send)
            else:
                send(True)

        def send(token_ok: bool) -> None:
            if not token_ok:
                on_done(False, Answer(Attempt(None, "connect")), None)
                return
            started[0] = self.loop.now
            self.server.request(subject or self.host_id, cls, kind, answered, wait_s=wait_s, apply=apply)

        def answered(answer: Answer) -> None:
            if not self._live(generation):
                return
            decision = retry.decide(answer.attempt, self.rng, authenticated=auth)
            if decision.hold_class_s is not None:
                self.budget.block_until(cls, self.loop.now + decision.hold_class_s)
            if decision.verdict == "done":
                on_done(True, answer, None)
            elif decision.verdict == "renew":
                self.tokens = None
                attempt()
            elif decision.verdict == "give_up":
                on_done(False, answer, decision.hold_class_s if answer.attempt.status == 429 else None)
            else:
                self.loop.at(self.loop.now + decision.sleep_s, attempt)

        attempt()

    def _with_token(self, then: Callable[[bool], None]) -> None:
        """TokenManager.access_token: a token that is not stale, renewed once for all waiting callers."""
        tokens = self.tokens
        if tokens is not None and self.loop.now < stale_at(tokens, REFRESH_MARGIN_S, self.token_early):
            then(True)
            return
        if self._token_waiters is not None:
            self._token_waiters.append(then)
            return
        self._token_waiters = [then]
        kind = "token" if tokens is None else "refresh"

        def done(ok: bool, _answer: Answer, _hold: float | None) -> None:
            now = self.loop.now
            if ok:
                self.tokens = TokenSet("a", "r", now + ACCESS_TTL_S, now + 7 * 86400, now)
                self.token_early = renewal_spread(self.tokens, TOKEN_RENEWAL_SPREAD, self.rng)
            waiters, self._token_waiters = self._token_waiters or [], None
            for waiter in waiters:
                waiter(ok)

        self.call("write", kind, done, auth=False, attempts=TOKEN_CALL_ATTEMPTS)

    # -- duties (ServerLink.run_duty / _arm) ----------------------------------------------

    def _arm(self) -> None:
        generation = self.generation
        for duty in DUTIES:
            due = self.schedule.due(duty)
            self._duty_version[duty] += 1
            if due is not None:
                version = self._duty_version[duty]
                self.loop.at(due, lambda d=duty, v=version: self._run_duty(d, v, generation))  # type: ignore[misc]

    def _run_duty(self, duty: Duty, version: int, generation: int) -> None:
        if not self._live(generation) or version != self._duty_version[duty]:
            return

        def finished(ok: bool, answer: Answer | None, hold: float | None) -> None:
            if not self._live(generation):
                return
            now = self.loop.now
            if ok:
                self.schedule.succeeded(duty, now, token_stale_at=self._stale_at())
            else:
                self.schedule.failed(duty, now, retry_after=hold)
            self._arm()

        if duty == "heartbeat":

            def heartbeat_done(ok: bool, answer: Answer, hold: float | None) -> None:
                if ok and self._live(generation):
                    self.schedule.heartbeat_answered(
                        self.loop.now, poll_interval=60.0, policy_version=self.server.policy_version
                    )
                finished(ok, answer, hold)

            self.call("write", "heartbeat", heartbeat_done, attempts=ONE_ATTEMPT)
        elif duty == "policy":

            def policy_done(ok: bool, answer: Answer, hold: float | None) -> None:
                if ok:
                    self.schedule.policy_settled_at(self.server.policy_version)
                finished(ok, answer, hold)

            self.call("read", "policy", policy_done, attempts=ONE_ATTEMPT)
        elif duty == "full_report":
            if self.changes == self.reported_changes:
                finished(True, None, None)
                return
            changes = self.changes

            def report_done(ok: bool, answer: Answer, hold: float | None) -> None:
                if ok:
                    self.reported_changes = changes
                    if self.record.first_report_at is None:
                        self.record.first_report_at = self.loop.now
                finished(ok, answer, hold)

            self.call("write", "inventory", report_done, attempts=ONE_ATTEMPT)
        else:
            tokens = self.tokens
            if tokens is not None and self.loop.now < stale_at(tokens, REFRESH_MARGIN_S, self.token_early):
                finished(True, None, None)
                return
            self._with_token(lambda ok: finished(ok, None, None))

    def _stale_at(self) -> float | None:
        return None if self.tokens is None else stale_at(self.tokens, REFRESH_MARGIN_S, self.token_early)

    # -- the instruction channel (ServerLink._channel_loop / exchange_instructions) -------

    def _channel_go(self, generation: int) -> None:
        if not self._live(generation):
            return
        request = self.schedule.channel.next_request(self.loop.now)
        if request.at > self.loop.now:
            self.loop.at(request.at, lambda: self._channel_send(generation, request.wait_s))
        else:
            self._channel_send(generation, request.wait_s)

    def _channel_send(self, generation: int, wait_s: int | None) -> None:
        if not self._live(generation):
            return
        started = self.loop.now

        def done(ok: bool, answer: Answer, hold: float | None) -> None:
            if not self._live(generation):
                return
            channel = self.schedule.channel
            now = self.loop.now
            if ok:
                channel.answered(
                    now,
                    held_s=now - started,
                    asked_wait=wait_s,
                    wait_supported=answer.wait_supported,
                    brought=0,
                    settled=True,
                    poll_interval=60.0,
                )
            else:
                channel.failed(
                    now,
                    held_s=now - started,
                    asked_wait=wait_s,
                    failure=channel_failure(_as_error(answer.attempt, hold)),
                    retry_after=hold,
                )
            self._channel_go(generation)

        kind = "long_poll" if wait_s is not None else "poll"
        self.call("read", kind, done, attempts=ONE_ATTEMPT, wait_s=wait_s)

    # -- changes and the sender (Daemon._emit, Sender._loop / flush) ----------------------

    def change(self, events: int = 1) -> None:
        """A discovery change: events into the outbox, the change count moves, the sender is woken."""
        self.changes += 1
        for _ in range(events):
            self.outbox.append(f"{self.host_id}-{next(self._event_ids)}")
        self.record.events_made += events
        if self.sender_wakeable and not self.sender_busy:
            self._sender_flush()

    def _sender_flush(self) -> None:
        if self.sender_busy:
            return
        if not self.outbox:
            self.sender_wakeable = True
            return
        self.sender_busy = True
        batch = list(itertools.islice(self.outbox, EVENTS_PER_CALL))
        generation = self.generation

        def delivered() -> None:
            self.server.accept_events(batch)

        def done(ok: bool, _answer: Answer, _hold: float | None) -> None:
            if not self._live(generation):
                return
            self.sender_busy = False
            if ok:
                for _ in batch:
                    self.outbox.popleft()
                self.sender_failures = 0
                self._sender_flush()  # flush() goes on while anything is pending
                return
            self.sender_failures += 1
            delay, self.sender_wakeable = delivery_delay(
                self.sender_failures, self.rng, backoff=self.backoff, idle_s=SENDER_IDLE_S
            )
            self.loop.at(self.loop.now + delay, lambda: self._sender_wake(generation))

        self.call("write", "events", done, apply=delivered)

    def _sender_wake(self, generation: int) -> None:
        if self._live(generation):
            self.sender_wakeable = True
            self._sender_flush()

    # -- enrolment (`sshklm-agent enroll`: one ApiClient.enroll call) ---------------------

    def enroll(self, on_done: Callable[[bool], None], subject: str = "bootstrap") -> None:
        self.budget = RateBudget()
        self.backoff = BackoffPolicy(max_attempts=self.max_attempts)
        self.generation += 1

        def done(ok: bool, _answer: Answer, _hold: float | None) -> None:
            if ok:
                self.record.enrolled_at = self.loop.now
                self.server.enrolled.add(self.index)
            else:
                self.record.enroll_failures += 1
            on_done(ok)

        self.call("write", "enroll", done, auth=False, subject=subject)


def _as_error(attempt: Attempt, hold: float | None) -> ApiError:
    """The ApiError the client would have raised for this last attempt (for channel_failure)."""
    if attempt.status is None:
        return ApiError("TRANSPORT_ERROR", "simulated", {"transport": attempt.transport or "connect"})
    details: dict[str, Any] = {"retry_after": hold} if hold is not None else {}
    return ApiError(code_for_status(attempt.status), "simulated", details, attempt.status)
