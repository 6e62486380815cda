"""The fleet scenarios: each builds a fleet of simulated agents (engine.py), runs it on the virtual
clock and returns its figures as plain values (printed by benchmarks/fleet_sim.py, asserted by
tests/integration/test_fleet_sim.py)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from agent.daemon.link_schedule import LinkTiming

from .engine import Host, Loop, Overload, Server

CLASSES = ("read", "write")
ROLLING_START_S = 600.0  # a fleet that has been up a while: processes started over ten minutes


@dataclass
class Fleet:
    loop: Loop
    server: Server
    hosts: list[Host]


def fleet(
    n: int,
    *,
    timing: LinkTiming,
    seed: int = 1,
    capacity: float | None = None,
    overload: Overload = 503,
    long_poll_server: bool = True,
) -> Fleet:
    loop = Loop()
    server = Server(loop, capacity=capacity, overload=overload, long_poll=long_poll_server)
    hosts = [Host(i, loop, server, timing, random.Random(seed * 1_000_003 + i)) for i in range(n)]
    return Fleet(loop, server, hosts)


def start_rolling(f: Fleet, rng: random.Random, over_s: float = ROLLING_START_S) -> None:
    for host in f.hosts:
        f.loop.at(rng.uniform(0.0, over_s), host.start)


@dataclass
class Load:
    """Requests per second at the server over a window, by class."""

    seconds: int
    mean: dict[str, float]
    peak: dict[str, int]
    per_host_hour: float
    kinds_per_host_hour: dict[str, float] = field(default_factory=dict)


def measure(f: Fleet, start: int, end: int) -> Load:
    mean: dict[str, float] = {}
    peak: dict[str, int] = {}
    for name, classes in (("total", None), ("read", ("read",)), ("write", ("write",))):
        series = f.server.stats.series(start, end, classes)
        mean[name] = sum(series) / max(1, len(series))
        peak[name] = max(series, default=0)
    per_host_hour = mean["total"] * 3600 / max(1, len(f.hosts))
    return Load(end - start, mean, peak, per_host_hour)


# -- steady state ---------------------------------------------------------------------------------


def steady(
    n: int, *, wait_s: int, minutes: int = 60, warmup_min: int = 20, seed: int = 1
) -> tuple[Load, dict[str, float]]:
    timing = LinkTiming(wait_s=wait_s)
    f = fleet(n, timing=timing, seed=seed)
    start_rolling(f, random.Random(seed))
    begin = warmup_min * 60
    f.loop.run(begin)
    kinds_before = dict(f.server.stats.kinds)
    end = begin + minutes * 60
    f.loop.run(end)
    hours = minutes / 60
    kinds = {
        kind: (count - kinds_before.get(kind, 0)) / n / hours for kind, count in f.server.stats.kinds.items()
    }
    return measure(f, begin, end), kinds


# -- mass restart ---------------------------------------------------------------------------------


@dataclass
class Restart:
    peak: int
    peak_10s: float
    rejected_429: int
    rejected_503: int
    requests: int  # every request of the hosts after the restart, until the end of the run
    all_reported_s: float | None
    unreported: int
    series: list[int]
    steady_mean: float


def mass_restart(
    n: int,
    *,
    wait_s: int = 60,
    splay_s: float = 30.0,
    capacity: float | None = None,
    overload: Overload = 503,
    seed: int = 1,
    after_min: int = 15,
) -> Restart:
    """Every agent restarts within one second (a fleet-wide upgrade, a power event)."""
    timing = LinkTiming(wait_s=wait_s, startup_splay_s=splay_s)
    f = fleet(n, timing=timing, seed=seed, capacity=capacity, overload=overload)
    rng = random.Random(seed)
    start_rolling(f, rng)
    restart_at = 20 * 60
    f.loop.run(restart_at)
    steady_mean = sum(f.server.stats.series(restart_at - 300, restart_at)) / 300
    before = dict(f.server.stats.outcomes)
    for host in f.hosts:
        host.record.first_report_at = None
        f.loop.at(restart_at + rng.uniform(0.0, 1.0), host.start)
    end = restart_at + after_min * 60
    f.loop.run(end)
    series = f.server.stats.series(restart_at, end)
    after = f.server.stats.outcomes
    rejected = {
        status: sum(v - before.get(k, 0) for k, v in after.items() if k[1] == status) for status in (429, 503)
    }
    reported = [h.record.first_report_at for h in f.hosts]
    done = [t for t in reported if t is not None]
    windows = [sum(series[i : i + 10]) / 10 for i in range(0, max(1, len(series) - 9))]
    return Restart(
        peak=max(series, default=0),
        peak_10s=max(windows, default=0.0),
        rejected_429=rejected[429],
        rejected_503=rejected[503],
        requests=sum(series),
        all_reported_s=(max(done) - restart_at) if len(done) == n else None,
        unreported=n - len(done),
        series=series,
        steady_mean=steady_mean,
    )


# -- outage and recovery --------------------------------------------------------------------------


@dataclass
class Outage:
    steady_mean: float
    peak: int
    peak_10s: float
    peak_60s: float
    drained_s: float | None  # after the server came back, until every outbox is empty
    events_made: int
    events_lost: int
    duplicates: int
    rejected_429: int
    rejected_503: int
    attempts_while_down: int  # per host over the whole outage
    series: list[int]
    series_start: int
    outage: tuple[int, int]


def outage(
    n: int,
    *,
    wait_s: int = 60,
    minutes: int = 30,
    changing: float = 0.1,
    change_every_s: float = 300.0,
    capacity: float | None = None,
    overload: Overload = 503,
    seed: int = 1,
) -> Outage:
    """The control plane is down for `minutes`; a `changing` fraction of the hosts keep changing
    (a change every `change_every_s` on average, one event each) and queue events; then it comes back
    with `capacity` requests/s."""
    timing = LinkTiming(wait_s=wait_s)
    f = fleet(n, timing=timing, seed=seed, capacity=capacity, overload=overload)
    rng = random.Random(seed)
    start_rolling(f, rng)
    down = 20 * 60
    up = down + minutes * 60
    f.server.outages.append((float(down), float(up)))
    f.loop.run(down)
    steady_mean = sum(f.server.stats.series(down - 300, down)) / 300
    before = dict(f.server.stats.outcomes)
    for host in rng.sample(f.hosts, int(n * changing)):
        t = down + rng.expovariate(1 / change_every_s)
        while t < up:
            f.loop.at(t, host.change)
            t += rng.expovariate(1 / change_every_s)
    drained: float | None = None
    horizon = up + 60 * 60
    f.loop.run(up)
    step = 10.0
    while f.loop.now < horizon:
        f.loop.run(f.loop.now + step)
        if all(not h.outbox for h in f.hosts):
            drained = f.loop.now - up
            break
    end = int(max(f.loop.now, up + 20 * 60))
    f.loop.run(end)
    series_start = down - 300
    series = f.server.stats.series(series_start, end)
    recovery = f.server.stats.series(up, end)
    made = sum(h.record.events_made for h in f.hosts)
    lost = made - len(f.server.events_seen)  # still queued counts as lost: the run ends when all drained
    after = f.server.stats.outcomes
    rejected = {
        status: sum(v - before.get(k, 0) for k, v in after.items() if k[1] == status) for status in (429, 503)
    }

    def peak_window(w: int) -> float:
        return max(
            (sum(recovery[i : i + w]) / w for i in range(0, max(1, len(recovery) - w + 1))), default=0.0
        )

    return Outage(
        steady_mean=steady_mean,
        peak=max(recovery, default=0),
        peak_10s=peak_window(10),
        peak_60s=peak_window(60),
        drained_s=drained,
        events_made=made,
        events_lost=lost,
        duplicates=f.server.duplicates,
        rejected_429=rejected[429],
        rejected_503=rejected[503],
        attempts_while_down=f.server.stats.refused_while_down,
        series=series,
        series_start=series_start,
        outage=(down, up),
    )


# -- bootstrap enrolment --------------------------------------------------------------------------


@dataclass
class Enrolment:
    label: str
    all_enrolled_s: float | None
    enrolled: int
    rejected_429: int
    command_failures: int  # `sshklm-agent enroll` runs that gave up (the playbook retries them)
    never: int  # hosts still not enrolled after the playbook's retries


def enrolment(
    n: int,
    *,
    label: str,
    tokens: int = 1,
    concurrency: int | None = None,
    playbook_retries: int = 5,
    playbook_delay_s: float = 30.0,
    seed: int = 1,
    horizon_h: float = 6.0,
) -> Enrolment:
    """Every host runs `sshklm-agent enroll` with one of `tokens` bootstrap tokens (the per-key write
    limit applies to each); at most `concurrency` run at once (Ansible's forks; None: all at once);
    a run that fails is retried `playbook_retries` times, `playbook_delay_s` apart (the playbook)."""
    f = fleet(n, timing=LinkTiming(), seed=seed)
    pending = list(range(n))
    running = 0
    tries = [0] * n

    def launch() -> None:
        nonlocal running
        while pending and (concurrency is None or running < concurrency):
            index = pending.pop(0)
            running += 1
            run(index)

    def run(index: int) -> None:
        tries[index] += 1
        host = f.hosts[index]

        def done(ok: bool) -> None:
            nonlocal running
            if ok or tries[index] > playbook_retries:
                running -= 1
                launch()
            else:
                f.loop.at(f.loop.now + playbook_delay_s, lambda: run(index))

        host.enroll(done, subject=f"bootstrap-{index % tokens}")

    f.loop.at(0.0, launch)
    f.loop.run(horizon_h * 3600)
    times = [h.record.enrolled_at for h in f.hosts if h.record.enrolled_at is not None]
    return Enrolment(
        label=label,
        all_enrolled_s=max(times) if len(times) == n else None,
        enrolled=len(times),
        rejected_429=sum(v for k, v in f.server.stats.outcomes.items() if k[1] == 429),
        command_failures=sum(h.record.enroll_failures for h in f.hosts),
        never=n - len(times),
    )


def as_dict(value: Any) -> Any:
    """A scenario's result without its long series (for printing)."""
    if hasattr(value, "__dataclass_fields__"):
        return {k: v for k, v in value.__dict__.items() if k not in ("series",)}
    return value
