"""When the daemon talks to the control plane: every timing decision of the link, as plain state and
functions of (state, time, random source). No I/O, no clock, no threads.

The shells only carry these decisions out: the server link (agent/daemon/server_link.py) runs the
duties as one-off scheduler jobs it re-arms at the times given here and runs the instruction channel
on its own thread; the sender (agent/daemon/sender.py) waits `delivery_delay`. The fleet simulator
(benchmarks/fleet_sim.py) drives the very same objects on a virtual clock for thousands of hosts,
which is how docs/fleet.md's figures are obtained. A call's own retries (401 renew-once, 429 hold,
attempts) are agent/control/retry.py; the backoff is agent/control/backoff.py's, the only one.

Duties (each retried on its own schedule, so one failing call never keeps the others from running):

- heartbeat     every `heartbeat_s` (the server's `poll_interval` when larger), every 5 minutes while
                long-polling works (contract §6.1); after a failure, not before the interval and
                further out as the backoff grows;
- full_report   at first contact, then every `full_report_s` (the link sends only when something
                changed); after a failure, the backoff (a stale inventory is retried promptly);
- policy        when a heartbeat names a policy version the link has not settled; after a failure,
                the backoff; the server having none (404) or refusing it (403) settles that version;
- token_refresh when the access token is about to go stale, checked at most `TOKEN_CHECK_S` apart.

Every duty runs at least `MIN_DUTY_GAP_S` after it last ended: no failure mode is a tight loop.

The instruction channel (`InstructionChannel`): one `GET …/instructions?wait=S` outstanding at a
time (§6.1), the next as soon as one returns; polling every poll interval against a server that
ignores `wait`, trying `wait` again hourly; the backoff on errors and 429 (at least Retry-After);
an idle cut by a proxy costs one quick retry, and a second cut at the same point lowers S below it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from agent.config import ScheduleConfig
from agent.control.backoff import BackoffPolicy, backoff_delay

# Contract §6.1.
LONG_POLL_HEARTBEAT_S = 300.0  # the heartbeat while a request waits for instructions
WAIT_RETRY_S = 3600.0  # after a server ignored `wait`: polling, and `wait` tried again this often
MAX_WAIT_S = 60
# A cut connection is an idle cut (not a failed server) when the request was held at least this long.
MIN_CUT_HOLD_S = 1.0
CUT_MARGIN = 0.8  # a lowered wait stays this fraction of the hold at which the connection was cut
TOKEN_CHECK_S = 300.0  # the access token's freshness is checked at least this often
MIN_DUTY_GAP_S = 1.0

Duty = Literal["heartbeat", "full_report", "policy", "token_refresh"]
DUTIES: tuple[Duty, ...] = ("heartbeat", "full_report", "token_refresh", "policy")
ChannelMode = Literal["long_poll", "polling"]
# How an instruction request failed: transient (5xx, no connection, timeout), rate_limited (429),
# dropped (closed without an answer), refused (a 4xx that waiting will not fix soon: 403, 404,
# auth), not_ready (no credentials or the key is paused: nothing was sent).
Failure = Literal["transient", "rate_limited", "dropped", "refused", "not_ready"]


@dataclass(frozen=True)
class LinkTiming:
    """The settings the timing depends on (from [schedule])."""

    heartbeat_s: float = 60.0
    wait_s: int = 60  # the long-poll's S; 0: poll every heartbeat_s instead
    full_report_s: float = 3600.0
    jitter: float = 0.2
    startup_splay_s: float = 30.0
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)

    @classmethod
    def from_config(cls, schedule: ScheduleConfig) -> LinkTiming:
        return cls(
            heartbeat_s=schedule.heartbeat_s,
            wait_s=schedule.long_poll_s,
            full_report_s=schedule.full_report_s,
            jitter=schedule.jitter,
            startup_splay_s=schedule.startup_splay_s,
        )


def jittered(seconds: float, fraction: float, rng: random.Random) -> float:
    """`seconds` varied by +/- `fraction` of it (a fleet started together drifts apart)."""
    return seconds + rng.uniform(-fraction, fraction) * seconds if fraction else seconds


def startup_splay(splay_s: float, rng: random.Random) -> float:
    """The wait before the first contact after start: uniform in [0, splay_s]."""
    return rng.uniform(0.0, splay_s) if splay_s > 0 else 0.0


def delivery_delay(
    failures: int, rng: random.Random, *, backoff: BackoffPolicy, idle_s: float
) -> tuple[float, bool]:
    """The sender's next wait: (seconds, whether an append may cut it short). Idle, it waits
    `idle_s` and is woken by new events; after failures it waits out the backoff, new events or not
    (a host whose changes keep coming must not retry at the rate of its changes during an outage)."""
    if failures <= 0:
        return idle_s, True
    return backoff_delay(failures - 1, rng, base=backoff.base, cap=backoff.cap), False


@dataclass
class DutyState:
    due: float | None  # when it should run next; None: not wanted
    failures: int = 0


@dataclass(frozen=True)
class ChannelRequest:
    at: float  # when to send
    wait_s: int | None  # §6.1 wait, or None for a plain poll (§6)


class InstructionChannel:
    """The instruction channel's state: long-poll or polling, the current S, failures, next request."""

    def __init__(self, timing: LinkTiming, first_contact: float, rng: random.Random) -> None:
        self.timing = timing
        self.rng = rng
        self.mode: ChannelMode = "long_poll" if timing.wait_s > 0 else "polling"
        self.wait_s = min(timing.wait_s, MAX_WAIT_S)
        self.server_poll_interval: float | None = None  # the server's poll_interval, when it gave one
        self.failures = 0
        self.confirmed = False  # a server answered a wait with wait_supported since the mode began
        self.next_at = first_contact
        self.retry_wait_at: float | None = None  # polling after an old server: try `wait` then
        self.restore_wait_at: float | None = None  # S was lowered by idle cuts: try the full S then
        self._cut_hold: float | None = None  # the previous request was cut after this hold
        self._early = 0  # consecutive empty answers that came back well before the wait
        self._spread = True  # the next wait is drawn at random (after start or a failure)

    @property
    def long_polling(self) -> bool:
        """A request is (or is about to be) waiting at a server that holds them: §6.1's heartbeat."""
        return self.mode == "long_poll" and self.confirmed and self.failures == 0

    @property
    def poll_interval(self) -> float:
        """How often to poll (and heartbeat) when not long-polling: the server's poll_interval wins
        while it is larger than `heartbeat_s`."""
        return max(self.timing.heartbeat_s, self.server_poll_interval or 0.0)

    def retime(self, timing: LinkTiming) -> None:
        """New settings (a reload)."""
        self.timing = timing
        full = min(timing.wait_s, MAX_WAIT_S)
        if full <= 0:
            self.mode, self.confirmed, self.wait_s = "polling", False, 0
            return
        if self.mode == "polling" and self.retry_wait_at is None:  # polling by configuration until now
            self.mode, self._spread = "long_poll", True
        self.wait_s = full if self.restore_wait_at is None else min(self.wait_s, full)

    def next_request(self, now: float) -> ChannelRequest:
        """What to send next and when (a plain poll, or a long-poll with its wait)."""
        full = min(self.timing.wait_s, MAX_WAIT_S)
        if self.restore_wait_at is not None and now >= self.restore_wait_at:
            self.restore_wait_at = None
            self.wait_s = full
        if self.mode == "polling":
            if full > 0 and self.retry_wait_at is not None and self.next_at >= self.retry_wait_at:
                return ChannelRequest(self.next_at, self.wait_s)  # hourly: does the server wait now?
            return ChannelRequest(self.next_at, None)
        wait = self.wait_s
        if self._spread and wait > 1:
            # After start or a failure a fleet's requests arrive together; a random first wait spreads
            # when they come back, and so every later request, across the whole S.
            wait = self.rng.randint(1, wait)
        return ChannelRequest(self.next_at, wait)

    def answered(
        self,
        now: float,
        *,
        held_s: float,
        asked_wait: int | None,
        wait_supported: bool,
        brought: int,
        settled: bool,
        poll_interval: float | None,
    ) -> float:
        """An answer came (`brought` instructions, `settled`: each one's result was delivered).
        Returns when to send next."""
        if poll_interval is not None and poll_interval > 0:
            self.server_poll_interval = float(poll_interval)
        self._cut_hold = None
        if asked_wait is not None and not wait_supported:
            # An older server (§6.1): poll, and ask again in an hour.
            self.mode, self.confirmed = "polling", False
            self.retry_wait_at = now + WAIT_RETRY_S
        elif asked_wait is not None:
            self.mode, self.confirmed, self.retry_wait_at = "long_poll", True, None
        if brought and not settled:
            # Instructions whose results could not be delivered stay pending at the server, which
            # would hand them back at once: wait out the backoff before asking again.
            return self._back_off(now, None)
        self.failures = 0
        if self.mode == "polling":
            self._spread = True
            self.next_at = now + max(
                MIN_DUTY_GAP_S, jittered(self.poll_interval, self.timing.jitter, self.rng)
            )
            return self.next_at
        self._spread = False
        if brought or asked_wait is None or held_s >= asked_wait / 2:
            self._early = 0
            self.next_at = now
            return now
        # Nothing, and well before the wait was over: a server (or something before it) not holding
        # requests as it says. Never a tight loop: the backoff grows while it goes on.
        self._early += 1
        self.next_at = now + backoff_delay(
            self._early - 1, self.rng, base=self.timing.backoff.base, cap=self.timing.backoff.cap
        )
        return self.next_at

    def failed(
        self,
        now: float,
        *,
        held_s: float,
        asked_wait: int | None,
        failure: Failure,
        retry_after: float | None = None,
    ) -> float:
        """The request failed; returns when to send the next one."""
        if failure == "not_ready":
            self._cut_hold = None
            self.next_at = now + max(
                MIN_DUTY_GAP_S, jittered(self.poll_interval, self.timing.jitter, self.rng)
            )
            return self.next_at
        if failure == "dropped" and asked_wait is not None and held_s >= MIN_CUT_HOLD_S:
            if self._cut_hold is None:
                # Cut after a hold: a proxy's idle timeout or a restarting server. One quick retry.
                self._cut_hold = held_s
                self.next_at = now
                return now
            lowered = max(1, math.floor(min(held_s, self._cut_hold) * CUT_MARGIN))
            if lowered < self.wait_s:
                # Cut twice: something on the path cuts idle requests; ask for less than that.
                self._cut_hold = held_s
                self.wait_s = lowered
                self.restore_wait_at = now + WAIT_RETRY_S
                self.next_at = now
                return now
        self._cut_hold = None
        self._spread = True
        if failure == "refused":
            # 403/404/auth: not a blip; never faster than the poll interval.
            self.failures += 1
            delay = backoff_delay(
                self.failures - 1, self.rng, base=self.timing.backoff.base, cap=self.timing.backoff.cap
            )
            self.next_at = now + max(delay, self.poll_interval)
            return self.next_at
        return self._back_off(now, retry_after)

    def _back_off(self, now: float, retry_after: float | None) -> float:
        self.failures += 1
        self._spread = True
        delay = backoff_delay(
            self.failures - 1, self.rng, base=self.timing.backoff.base, cap=self.timing.backoff.cap
        )
        self.next_at = now + max(delay, retry_after or 0.0)
        return self.next_at


class LinkSchedule:
    """The duties' due times and the instruction channel of one link. Not thread-safe: the shell locks."""

    def __init__(self, timing: LinkTiming, first_contact: float, rng: random.Random) -> None:
        self.timing = timing
        self.rng = rng
        self.duties: dict[Duty, DutyState] = {
            "heartbeat": DutyState(first_contact),
            "full_report": DutyState(first_contact + 1.0),
            "token_refresh": DutyState(first_contact + 2.0),
            "policy": DutyState(None),
        }
        self.channel = InstructionChannel(timing, first_contact, rng)
        self.policy_settled: int | None = None  # the policy version fetched, absent or refused
        self.policy_wanted: int | None = None  # the version the last heartbeat named

    def retime(self, timing: LinkTiming) -> None:
        """New settings (a reload): intervals from now on use them."""
        self.timing = timing
        self.channel.retime(timing)

    def due(self, duty: Duty) -> float | None:
        return self.duties[duty].due

    def dues(self) -> Mapping[Duty, float | None]:
        return {name: state.due for name, state in self.duties.items()}

    def heartbeat_interval(self) -> float:
        if self.channel.long_polling:
            return LONG_POLL_HEARTBEAT_S
        return self.channel.poll_interval

    def succeeded(self, duty: Duty, now: float, *, token_stale_at: float | None = None) -> float | None:
        """`duty` ran (whether or not it had to send anything); returns its next due time."""
        state = self.duties[duty]
        state.failures = 0
        if duty == "heartbeat":
            state.due = now + max(
                MIN_DUTY_GAP_S, jittered(self.heartbeat_interval(), self.timing.jitter, self.rng)
            )
        elif duty == "full_report":
            state.due = now + max(
                MIN_DUTY_GAP_S, jittered(self.timing.full_report_s, self.timing.jitter, self.rng)
            )
        elif duty == "token_refresh":
            until_stale = TOKEN_CHECK_S if token_stale_at is None else token_stale_at - now
            state.due = now + min(TOKEN_CHECK_S, max(MIN_DUTY_GAP_S, until_stale))
        else:
            state.due = None
        return state.due

    def failed(self, duty: Duty, now: float, *, retry_after: float | None = None) -> float:
        """`duty` failed; returns when to try it again: the backoff (a heartbeat: not before its interval)."""
        state = self.duties[duty]
        state.failures += 1
        delay = max(
            MIN_DUTY_GAP_S,
            backoff_delay(
                state.failures - 1, self.rng, base=self.timing.backoff.base, cap=self.timing.backoff.cap
            ),
            retry_after or 0.0,
        )
        if duty == "heartbeat":
            delay = max(delay, jittered(self.heartbeat_interval(), self.timing.jitter, self.rng))
        state.due = now + delay
        return state.due

    def heartbeat_answered(
        self, now: float, *, poll_interval: float | None, policy_version: int | None
    ) -> None:
        """A heartbeat's answer: the server's poll interval, and a policy version to fetch if new."""
        if poll_interval is not None and poll_interval > 0:
            self.channel.server_poll_interval = float(poll_interval)
        if policy_version is not None:
            self.policy_wanted = policy_version
        if policy_version is not None and policy_version != self.policy_settled:
            policy = self.duties["policy"]
            if policy.due is None:
                policy.due = now

    def policy_settled_at(self, version: int | None) -> None:
        """The policy of `version` is in force, or the server has none (404) or refuses it (403): not
        fetched again until a heartbeat names another version. None: the version the heartbeat named."""
        self.policy_settled = version if version is not None else self.policy_wanted
