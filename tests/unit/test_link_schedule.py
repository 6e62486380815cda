"""The link's timing decisions as pure functions of (state, time, random source), on a made-up clock."""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from typing import Any

from agent.control.answers import redirect_error, unexpected_status_error
from agent.control.backoff import BackoffPolicy
from agent.control.errors import (
    ANSWER_TOO_LARGE,
    AUTH_FORBIDDEN,
    AUTH_INVALID,
    RATE_LIMITED,
    SERVER_ERROR,
    TRANSPORT_ERROR,
    ApiError,
)
from agent.control.retry import Attempt, CallRetry
from agent.daemon.link_schedule import (
    LONG_POLL_HEARTBEAT_S,
    MIN_DUTY_GAP_S,
    WAIT_RETRY_S,
    InstructionChannel,
    LinkSchedule,
    LinkTiming,
    delivery_delay,
)
from agent.daemon.sender import Sender
from agent.daemon.server_link import channel_failure

T0 = 1_000_000.0
TIMING = LinkTiming(heartbeat_s=60.0, wait_s=60, full_report_s=3600.0, jitter=0.2, startup_splay_s=30.0)


def channel(timing: LinkTiming = TIMING, seed: int = 1) -> InstructionChannel:
    return InstructionChannel(timing, T0, random.Random(seed))


def answer(
    ch: InstructionChannel,
    now: float,
    wait: int | None,
    *,
    supported: bool = True,
    held: float | None = None,
    brought: int = 0,
    settled: bool = True,
) -> float:
    return ch.answered(
        now,
        held_s=held if held is not None else float(wait or 0),
        asked_wait=wait,
        wait_supported=supported,
        brought=brought,
        settled=settled,
        poll_interval=60,
    )


def test_long_poll_goes_again_at_once_and_spreads_its_first_wait() -> None:
    ch = channel()
    first = ch.next_request(T0)
    assert first.at == T0 and first.wait_s is not None and 1 <= first.wait_s <= 60
    assert answer(ch, T0 + first.wait_s, first.wait_s) == T0 + first.wait_s  # the next at once
    assert ch.long_polling
    again = ch.next_request(T0 + first.wait_s)
    assert again.wait_s == 60  # the full wait once spread
    # Instructions brought and answered: ask again at once.
    assert answer(ch, T0 + 70, 60, held=2.0, brought=1) == T0 + 70


def test_an_older_server_means_polling_and_wait_is_tried_again_hourly() -> None:
    ch = channel()
    request = ch.next_request(T0)
    next_at = answer(ch, T0 + 0.01, request.wait_s, supported=False)
    assert ch.mode == "polling" and not ch.long_polling
    assert 48.0 <= next_at - T0 <= 72.5  # the poll interval, jittered
    now, asks = T0, []
    while now < T0 + 2 * WAIT_RETRY_S + 120:
        request = ch.next_request(now)
        now = request.at
        asks.append((now, request.wait_s))
        answer(ch, now + 0.01, request.wait_s, supported=False)
    waits = [at for at, wait in asks if wait is not None]
    assert len(waits) == 2  # once an hour, never more
    assert waits[0] - T0 >= WAIT_RETRY_S and waits[1] - waits[0] >= WAIT_RETRY_S
    # The server learnt §6.1: back to long-poll for good.
    request = ch.next_request(now)
    while request.wait_s is None:
        now = request.at
        answer(ch, now, None, supported=False)
        request = ch.next_request(now)
    answer(ch, request.at + request.wait_s, request.wait_s, supported=True)
    assert ch.mode == "long_poll" and ch.long_polling


def test_errors_back_off_and_a_429_waits_at_least_its_retry_after() -> None:
    ch = channel()
    now = T0
    delays = []
    for _ in range(12):
        request = ch.next_request(now)
        now = request.at
        nxt = ch.failed(now, held_s=0.01, asked_wait=request.wait_s, failure="transient")
        delays.append(nxt - now)
    ceilings = [min(300.0, 2.0**i) for i in range(12)]
    assert all(0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert sum(delays) > 300  # grows to minutes: never a tight loop
    assert not ch.long_polling
    nxt = ch.failed(now, held_s=0.01, asked_wait=60, failure="rate_limited", retry_after=42.0)
    assert nxt - now >= 42.0


def test_an_idle_cut_costs_one_quick_retry_then_the_wait_goes_below_it() -> None:
    ch = channel()
    request = ch.next_request(T0)
    answer(ch, T0 + request.wait_s, request.wait_s)  # spread done: full waits from now on
    now = T0 + 100
    assert ch.next_request(now).wait_s == 60
    assert ch.failed(now + 30, held_s=30.0, asked_wait=60, failure="dropped") == now + 30  # quick retry
    assert ch.wait_s == 60  # one cut could be a restarting server: S unchanged
    assert ch.failed(now + 60, held_s=30.0, asked_wait=60, failure="dropped") == now + 60  # quick again
    assert ch.wait_s == 24 and ch.failures == 0  # cut twice at 30 s: ask for 80 % of it
    answer(ch, now + 84, 24)
    assert ch.next_request(now + 84).wait_s == 24
    # An hour later the full wait is tried again (the path may have changed).
    assert ch.next_request(now + 84 + WAIT_RETRY_S).wait_s == 60


def test_a_restart_during_a_wait_is_one_quick_retry_then_the_backoff() -> None:
    ch = channel()
    request = ch.next_request(T0)
    answer(ch, T0 + request.wait_s, request.wait_s)
    now = T0 + 100
    assert ch.failed(now + 20, held_s=20.0, asked_wait=60, failure="dropped") == now + 20
    nxt = ch.failed(now + 20.01, held_s=0.001, asked_wait=60, failure="transient")  # connection refused
    assert ch.wait_s == 60 and ch.failures == 1 and nxt >= now + 20.01


def test_a_server_answering_early_with_nothing_is_not_a_loop() -> None:
    ch = channel()
    request = ch.next_request(T0)
    answer(ch, T0 + request.wait_s, request.wait_s)
    now, gaps = T0 + 100, []
    for _ in range(10):
        request = ch.next_request(now)
        nxt = answer(ch, request.at + 0.01, request.wait_s, held=0.01)
        gaps.append(nxt - request.at)
        now = nxt
    assert sum(gaps) > 100


def test_undelivered_results_back_off_instead_of_asking_again_at_once() -> None:
    ch = channel()
    request = ch.next_request(T0)
    nxt = answer(ch, T0 + 0.5, request.wait_s, held=0.5, brought=2, settled=False)
    assert ch.failures == 1 and nxt >= T0 + 0.5


def test_duties_each_on_their_own_schedule() -> None:
    schedule = LinkSchedule(TIMING, T0, random.Random(3))
    assert schedule.due("heartbeat") == T0 and schedule.due("policy") is None
    # A failing policy fetch moves only the policy duty.
    schedule.heartbeat_answered(T0, poll_interval=60, policy_version=4)
    assert schedule.due("policy") == T0
    full_report = schedule.due("full_report")
    schedule.failed("policy", T0 + 1)
    assert schedule.due("full_report") == full_report
    policy_due = schedule.due("policy")
    assert policy_due is not None and policy_due >= T0 + 1 + MIN_DUTY_GAP_S
    schedule.policy_settled_at(None)  # a 404: keep the local policy, version 4 settled
    schedule.succeeded("policy", T0 + 2)
    schedule.heartbeat_answered(T0 + 60, poll_interval=60, policy_version=4)
    assert schedule.due("policy") is None
    schedule.heartbeat_answered(T0 + 60, poll_interval=60, policy_version=5)
    assert schedule.due("policy") == T0 + 60


def test_a_failed_full_report_is_retried_with_the_backoff_not_an_hour_later() -> None:
    schedule = LinkSchedule(TIMING, T0, random.Random(5))
    now = T0 + 1
    waits = []
    for _ in range(6):
        waits.append(schedule.failed("full_report", now) - now)
        now += waits[-1]
    assert all(w <= 32.0 for w in waits)  # 1, 2, 4, ... s envelopes (at least the 1 s gap)
    assert schedule.succeeded("full_report", now) is not None
    assert schedule.due("full_report") - now >= 3600 * 0.8  # type: ignore[operator]


def test_heartbeat_every_five_minutes_while_long_polling_works() -> None:
    schedule = LinkSchedule(TIMING, T0, random.Random(9))
    assert schedule.heartbeat_interval() == 60.0
    ch = schedule.channel
    request = ch.next_request(T0)
    answer(ch, T0 + request.wait_s, request.wait_s)
    assert schedule.heartbeat_interval() == LONG_POLL_HEARTBEAT_S
    ch.failed(T0 + 100, held_s=0.0, asked_wait=60, failure="transient")
    assert schedule.heartbeat_interval() == 60.0  # not waiting at the server: heartbeats say we live
    # A failed heartbeat is never retried faster than its interval.
    for _ in range(5):
        assert schedule.failed("heartbeat", T0) - T0 >= 60.0 * 0.8


def test_token_refresh_is_checked_when_the_token_goes_stale() -> None:
    schedule = LinkSchedule(TIMING, T0, random.Random(2))
    assert schedule.succeeded("token_refresh", T0, token_stale_at=T0 + 100) == T0 + 100
    assert schedule.succeeded("token_refresh", T0, token_stale_at=T0 + 10_000) == T0 + 300
    assert schedule.succeeded("token_refresh", T0, token_stale_at=None) == T0 + 300
    assert schedule.succeeded("token_refresh", T0, token_stale_at=T0 - 5) == T0 + MIN_DUTY_GAP_S


def test_call_retry_decisions() -> None:
    rng = random.Random(4)
    policy = BackoffPolicy(max_attempts=3)
    retry = CallRetry(policy)
    assert retry.decide(Attempt(401), rng).verdict == "renew"
    assert retry.decide(Attempt(401), rng).verdict == "give_up"  # renewed once already
    retry = CallRetry(policy)
    d = retry.decide(Attempt(429, retry_after=7.0), rng)
    assert d.verdict == "retry" and d.hold_class_s is not None and 7.0 <= d.hold_class_s <= 7.7
    d = retry.decide(Attempt(None, "connect"), rng)
    assert d.verdict == "retry" and 0 <= d.sleep_s <= 2.0
    assert retry.decide(Attempt(503), rng).verdict == "give_up"  # the third attempt
    assert CallRetry(policy).decide(Attempt(None, "tls"), rng).verdict == "give_up"
    assert CallRetry(policy).decide(Attempt(404), rng).verdict == "give_up"
    assert CallRetry(policy, wait=False).decide(Attempt(429), rng).verdict == "give_up"
    done = CallRetry(policy).decide(Attempt(200, budget_wait=12.0), rng)
    assert done.verdict == "done" and done.hold_class_s == 12.0
    assert CallRetry(policy, attempts=1).decide(Attempt(502), rng).verdict == "give_up"


def test_call_retry_takes_only_what_delivers_as_an_answer() -> None:
    """Only a 2xx (or a 304 a conditional GET asked for) ends a call: a 3xx is never followed and
    never success, a status no call expects and an answer refused unread are transient like a 5xx
    (answers.judge_status, in the decision the client and the fleet simulator share)."""
    rng = random.Random(5)
    policy = BackoffPolicy(max_attempts=3)
    for status in (301, 302, 307, 308, 304, 101, 600):
        assert CallRetry(policy).decide(Attempt(status), rng).verdict == "retry", status
        assert CallRetry(policy, attempts=1).decide(Attempt(status), rng).verdict == "give_up", status
    assert CallRetry(policy).decide(Attempt(None, "unread"), rng).verdict == "retry"
    assert CallRetry(policy, not_modified_ok=True).decide(Attempt(304), rng).verdict == "done"
    for status in (200, 201, 204):
        assert CallRetry(policy).decide(Attempt(status), rng).verdict == "done", status
    assert CallRetry(policy).decide(Attempt(403), rng).verdict == "give_up"


def test_instruction_channel_failures_match_the_calls_own_rules() -> None:
    """A 4xx is a refusal; every other status that did not deliver is transient (a 3xx, a stray
    304, a 2xx refused unread or not JSON, a 5xx); a cut is told apart; nothing sent: not ready."""
    assert channel_failure(ApiError(RATE_LIMITED, "slow", {}, 429)) == "rate_limited"
    assert channel_failure(ApiError(AUTH_FORBIDDEN, "no", {}, 403)) == "refused"
    assert channel_failure(redirect_error(302, "https://elsewhere.example/x")) == "transient"
    assert channel_failure(unexpected_status_error(304)) == "transient"
    assert channel_failure(ApiError(ANSWER_TOO_LARGE, "big", {}, 200)) == "transient"
    assert channel_failure(ApiError(SERVER_ERROR, "answer is not JSON", {}, 200)) == "transient"
    assert channel_failure(ApiError(SERVER_ERROR, "down", {}, 503)) == "transient"
    assert channel_failure(ApiError(TRANSPORT_ERROR, "cut", {"transport": "dropped"})) == "dropped"
    assert channel_failure(ApiError(TRANSPORT_ERROR, "refused", {"transport": "connect"})) == "transient"
    assert channel_failure(ApiError(AUTH_INVALID, "not connected")) == "not_ready"


def test_the_sender_waits_out_its_backoff_whatever_is_appended() -> None:
    rng = random.Random(1)
    backoff = BackoffPolicy(base=1.0, cap=300.0)
    assert delivery_delay(0, rng, backoff=backoff, idle_s=30.0) == (30.0, True)
    delay, wakeable = delivery_delay(9, rng, backoff=backoff, idle_s=30.0)
    assert not wakeable and 0 <= delay <= 256.0


class _Outbox:
    def __init__(self) -> None:
        self.events = [{"id": "e-1", "seq": 1}]

    def full_inventory_marker(self) -> None:
        return None

    def peek(self, limit: int) -> list[dict[str, Any]]:
        return list(self.events)

    def ack(self, ids: Sequence[str]) -> int:
        raise AssertionError("nothing was delivered")


class _Down:
    ready = True

    def __init__(self) -> None:
        self.attempts = 0
        self.failed = threading.Event()

    def deliver(self, events: Sequence[dict[str, Any]]) -> list[str]:
        self.attempts += 1
        self.failed.set()
        raise ConnectionError("down")

    def send_full_inventory(self) -> None:
        raise AssertionError("not due")


def test_appends_during_an_outage_do_not_cut_the_senders_backoff() -> None:
    # Regression: every append woke the sender, so a host changing often retried at its change rate.
    down = _Down()
    sender = Sender(_Outbox(), down, rng=random.Random(0), base_s=60.0, cap_s=60.0)  # type: ignore[arg-type]
    sender.start()
    try:
        sender.wake()
        assert down.failed.wait(5.0)
        for _ in range(50):
            sender.wake()  # new events keep coming
            threading.Event().wait(0.01)
        assert down.attempts == 1  # seeded: the first backoff is ~50 s
    finally:
        sender.stop(5.0)


def test_a_reload_changes_the_wait_and_the_poll_interval() -> None:
    ch = channel(LinkTiming(heartbeat_s=60.0, wait_s=0))
    assert ch.mode == "polling" and ch.next_request(T0).wait_s is None
    ch.server_poll_interval = 120.0
    assert ch.poll_interval == 120.0  # the server's, larger
    ch.retime(LinkTiming(heartbeat_s=300.0, wait_s=30))
    assert ch.poll_interval == 300.0 and ch.mode == "long_poll"
    request = ch.next_request(T0)
    assert request.wait_s is not None and 1 <= request.wait_s <= 30
    ch.retime(LinkTiming(heartbeat_s=60.0, wait_s=0))
    assert ch.mode == "polling" and ch.next_request(T0).wait_s is None


def test_token_renewals_of_a_fleet_do_not_stay_in_step() -> None:
    from agent.control.tokens import TokenSet, renewal_spread, stale_at

    token = TokenSet("a", "r", T0 + 900, T0 + 86400, T0)
    draws = [stale_at(token, 60.0, renewal_spread(token, 0.2, random.Random(i))) for i in range(200)]
    assert all(T0 + 840 - 180 <= at <= T0 + 840 for at in draws)
    assert max(draws) - min(draws) > 120  # spread over minutes, not one instant
    assert stale_at(token, 60.0) == T0 + 840  # no spread: a minute before expiry, as before
    short = TokenSet("a", "r", T0 + 4, None, T0)
    assert stale_at(short, 60.0, 100.0) == T0 + 2  # never more than half a short lifetime early
