"""The fleet simulator at a small N (the agent's own timing code for 200 hosts on a virtual clock):
the invariants hold in every scenario. The figures at N = 10,000 are benchmarks/fleet_sim.py's."""

from __future__ import annotations

import pytest

from benchmarks.fleetsim import scenarios

N = 200


def test_steady_state_long_poll_costs_fewer_requests_than_polling() -> None:
    long_poll, kinds = scenarios.steady(N, wait_s=60, minutes=30, warmup_min=15)
    polling, _ = scenarios.steady(N, wait_s=0, minutes=30, warmup_min=15)
    assert long_poll.per_host_hour <= 80  # the goal; polling costs ~125
    assert polling.per_host_hour > long_poll.per_host_hour
    assert 11 <= kinds["heartbeat"] <= 13  # every 5 minutes while a request waits (§6.1)
    assert 55 <= kinds["long_poll"] <= 61


def test_mass_restart_every_host_reports_and_nothing_loops() -> None:
    r = scenarios.mass_restart(N, capacity=N * 0.06, after_min=15)  # 3x the steady load
    assert r.unreported == 0 and r.all_reported_s is not None
    assert r.rejected_429 == 0  # the per-key limits are never what refuses a host
    # Four calls each to come back (token, heartbeat, inventory, long-poll), then steady state: the
    # retries against a saturated server stay a small multiple, never a loop.
    assert r.requests <= N * 200


def test_outage_and_recovery_lose_nothing_and_stay_near_steady_load() -> None:
    o = scenarios.outage(N, capacity=N * 0.06, minutes=30)
    assert o.events_made > 0 and o.events_lost == 0
    assert o.drained_s is not None
    assert o.peak_10s <= 2 * o.steady_mean
    # While the server is down each host's loops back off to the 5 minute cap: a few attempts per
    # host per minute at most, never a tight loop.
    assert o.attempts_while_down <= N * 30 * 3


@pytest.mark.parametrize(("tokens", "concurrency"), [(1, None), (1, 5), (4, None)])
def test_bootstrap_enrolment_under_the_per_key_limit(tokens: int, concurrency: int | None) -> None:
    e = scenarios.enrolment(N, label="ci", tokens=tokens, concurrency=concurrency, horizon_h=1.0)
    assert e.never == 0 and e.enrolled == N
    assert e.all_enrolled_s is not None and e.all_enrolled_s >= (N / tokens - 100) * 60 / 100 * 0.9
