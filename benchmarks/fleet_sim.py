"""The fleet, simulated: N agents running the agent's OWN timing code on a virtual clock against a
control plane that enforces the published per-key limits and a total capacity.

Each simulated host takes every timing decision with the agent's own code (agent/daemon/link_schedule.py,
agent/control/retry.py, agent/control/backoff.py, agent/control/tokens.py; see benchmarks/fleetsim/
engine.py for what is mirrored and what is not). Scenarios:

  steady     N hosts at steady state, long-poll and polling side by side: requests/s by class
  restart    every host restarts within one second: peak requests/s, 429/503s, time until all reported
  outage     the control plane is down 30 minutes while 10 % of the hosts keep changing, then back
             with capacity C: time until every outbox is empty, peak load against steady state,
             events lost, duplicates
  enrolment  N hosts enrol with the shared bootstrap token(s) under the per-key write limit

Usage: python benchmarks/fleet_sim.py [--hosts 10000] [--capacity 600] [--svg-dir DIR]
                                      [--scenarios steady,restart,outage,enrolment] [--seed 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.fleetsim import scenarios
from benchmarks.fleetsim.svg import averaged, line_chart


def _table(title: str, header: list[str], rows: list[list[object]]) -> None:
    cells = [[str(c) for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for n, row in enumerate(cells):
        print(
            "  "
            + "  ".join(
                c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))


def _minutes(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds / 60:.1f} min"


def run_steady(n: int, seed: int) -> None:
    rows = []
    for label, wait in (("long-poll (wait 60 s)", 60), ("polling (long_poll_s = 0)", 0)):
        load, kinds = scenarios.steady(n, wait_s=wait, seed=seed)
        per_kind = ", ".join(f"{k} {v:.1f}" for k, v in sorted(kinds.items()) if v >= 0.05)
        rows.append(
            [
                label,
                f"{load.mean['total']:.0f}",
                load.peak["total"],
                f"{load.mean['read']:.0f} / {load.peak['read']}",
                f"{load.mean['write']:.0f} / {load.peak['write']}",
                f"{load.per_host_hour:.1f}",
                per_kind,
            ]
        )
    _table(
        f"steady state, {n} hosts (60 min after 20 min of warm-up; requests/s at the server)",
        [
            "mode",
            "mean",
            "peak 1 s",
            "read mean/peak",
            "write mean/peak",
            "per host per hour",
            "per host per hour by call",
        ],
        rows,
    )


def run_restart(n: int, capacity: float | None, seed: int, svg_dir: Path | None) -> None:
    rows = []
    curves = []
    for label, wait, splay in (
        ("long-poll, splay 30 s", 60, 30.0),
        ("long-poll, splay 300 s", 60, 300.0),
        ("polling, splay 30 s", 0, 30.0),
    ):
        r = scenarios.mass_restart(n, wait_s=wait, splay_s=splay, capacity=capacity, seed=seed)
        rows.append(
            [
                label,
                f"{r.steady_mean:.0f}",
                r.peak,
                f"{r.peak_10s:.0f}",
                r.rejected_429,
                r.rejected_503,
                _minutes(r.all_reported_s),
            ]
        )
        curves.append((label, averaged(r.series, 10)))
    cap = f"capacity {capacity:g} req/s, 503 beyond" if capacity else "unlimited capacity"
    _table(
        f"mass restart, {n} hosts within one second ({cap}; requests/s offered at the server)",
        ["case", "steady mean", "peak 1 s", "peak 10 s", "429s", "503s", "until every host reported"],
        rows,
    )
    if svg_dir is not None:
        path = svg_dir / "fleet_restart.svg"
        path.write_text(
            line_chart(
                f"Mass restart of {n} agents ({cap}): requests/s, 10 s means",
                curves,
                x_label="minutes after the restart",
                step_s=10.0,
            )
        )
        print(f"  plot: {path}")


def run_outage(n: int, capacity: float | None, seed: int, svg_dir: Path | None) -> None:
    rows = []
    curves = []
    marks: list[tuple[float, str]] = []
    start = 0
    for label, wait in (("long-poll", 60), ("polling", 0)):
        o = scenarios.outage(n, wait_s=wait, capacity=capacity, seed=seed)
        rows.append(
            [
                label,
                f"{o.steady_mean:.0f}",
                f"{o.peak} ({o.peak / o.steady_mean:.2f}x)",
                f"{o.peak_10s:.0f} ({o.peak_10s / o.steady_mean:.2f}x)",
                f"{o.peak_60s:.0f} ({o.peak_60s / o.steady_mean:.2f}x)",
                _minutes(o.drained_s),
                o.events_made,
                o.events_lost,
                o.duplicates,
                o.rejected_429 + o.rejected_503,
            ]
        )
        curves.append((label, averaged(o.series, 10)))
        start = o.series_start
        marks = [(o.outage[0], "down"), (o.outage[1], "back")]
    cap = f"capacity {capacity:g} req/s" if capacity else "unlimited capacity"
    _table(
        f"outage of 30 min, changes on 10 % of {n} hosts, recovery with {cap} (requests/s at the server)",
        [
            "mode",
            "steady mean",
            "peak 1 s",
            "peak 10 s",
            "peak 60 s",
            "outboxes empty after",
            "events",
            "lost",
            "duplicates",
            "429+503",
        ],
        rows,
    )
    if svg_dir is not None:
        path = svg_dir / "fleet_outage.svg"
        path.write_text(
            line_chart(
                f"Outage and recovery, {n} agents ({cap}): requests/s, 10 s means",
                curves,
                x_label="minutes",
                x_start_s=start,
                step_s=10.0,
                marks=marks,
            )
        )
        print(f"  plot: {path}")


def run_enrolment(n: int, seed: int) -> None:
    cases = [
        ("all at once, 1 bootstrap token", {"tokens": 1}),
        ("playbook: forks 5, 1 token", {"tokens": 1, "concurrency": 5}),
        ("all at once, 10 bootstrap tokens", {"tokens": 10}),
    ]
    rows = []
    for label, options in cases:
        e = scenarios.enrolment(n, label=label, seed=seed, **options)  # type: ignore[arg-type]
        rows.append(
            [
                label,
                _minutes(e.all_enrolled_s),
                f"{e.enrolled}/{n}",
                e.rejected_429,
                e.command_failures,
                e.never,
            ]
        )
    _table(
        f"bootstrap enrolment of {n} hosts (write limit 100/min per bootstrap token; `enroll` retried by "
        "the playbook 5 times, 30 s apart)",
        ["case", "all enrolled after", "enrolled", "429s", "enroll runs that failed", "never enrolled"],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument(
        "--capacity", type=float, default=600.0, help="requests/s the server serves (0: unlimited)"
    )
    parser.add_argument("--scenarios", default="steady,restart,outage,enrolment")
    parser.add_argument("--svg-dir", type=Path, help="write the plots (SVG) there")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    capacity = args.capacity or None
    if args.svg_dir is not None:
        args.svg_dir.mkdir(parents=True, exist_ok=True)
    chosen = set(args.scenarios.split(","))
    began = time.monotonic()
    print(f"fleet simulator: {args.hosts} hosts, seed {args.seed}")
    if "steady" in chosen:
        run_steady(args.hosts, args.seed)
    if "restart" in chosen:
        run_restart(args.hosts, capacity, args.seed, args.svg_dir)
    if "outage" in chosen:
        run_outage(args.hosts, capacity, args.seed, args.svg_dir)
    if "enrolment" in chosen:
        run_enrolment(args.hosts, args.seed)
    print(f"\n(simulated in {time.monotonic() - began:.0f} s of real time)")


if __name__ == "__main__":
    main()
