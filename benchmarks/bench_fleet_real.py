"""50 real agents against the reference control plane: steady state, a restart of all of them at
once, an outage with changes piling up, the recovery; and the fleet simulator at the same N and
timings, side by side.

Every agent is a real `sshklm-agent run` process (its own state directory and fake root: one host
each, alice with one key), enrolled with the reference control plane on loopback, with the default
[schedule] (long-poll 60 s, start-up splay 30 s, heartbeat every 5 min while long-polling, jitter
20 %, full report hourly when changed): nothing is shortened except the outage itself. Phases:

1. start: all agents at once (CPU-bound on a small machine: measured, not assumed); then
   `--warmup` minutes, then `--steady` minutes in which every request at the control plane is
   counted (the reference load: mean and peak requests/s, per host per hour by call);
2. restart: SIGTERM to every agent, then all started again at once (a fleet-wide upgrade): peak
   requests/s, until every host has sent its full inventory again; `--settle` minutes after it;
3. outage: the control plane is stopped for `--outage` minutes (connections refused, held
   long-polls dropped, as in the simulator); meanwhile keys are appended to alice's authorized_keys
   on `--changing` of the hosts (one key_added event each, a change every `--change-every` seconds
   on average per changing host), and `--rotations` rotations are issued to random hosts through a
   second control plane on the same database and port-less for the agents (queued for them);
4. recovery: the control plane comes back on the same port and database (same token secret and
   signing key: a restart, not a new server); more rotations are issued while the agents come
   back. Checked: peak requests/s against the steady mean (goal <= 2x), every event made during the
   outage at the control plane (none lost), duplicates, every rotation's result posted.

Then the simulator (benchmarks/fleetsim) runs the same scenarios at the same N with the same
timings (the agent defaults; the same outage length and change rate), and both are printed side
by side, with RSS per agent (/proc/PID/status VmRSS, median and max) and the control plane's
request log summary (requests by call, class and status, per host per hour).

Usage: python benchmarks/bench_fleet_real.py [--agents 50] [--warmup 2] [--steady 4] [--settle 3]
           [--outage 4] [--changing 0.1] [--change-every 60] [--rotations 10] [--seed 1]
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tests.controlplane.server as cp_server
from agent.control.enroll import enroll_host
from benchmarks.bench_long_poll import call_name, host_facts
from benchmarks.fleetsim import scenarios
from tests.controlplane import ControlPlane, RequestRecord
from tests.fakeroot import ed25519_line, writable_root
from tests.integration.daemon_support import Agent, fingerprint_of

ADMIN_PATHS = ("/v1/rotations", "/v1/hosts?", "/v1/keys")
# A control plane keeps its token secret across a restart (a new secret would make every agent
# re-authenticate at the recovery, which the simulator's server does not ask either).
_TOKEN_SECRET = secrets.token_bytes(32)
cp_server.hmac_secret = lambda: _TOKEN_SECRET


@dataclass
class Host:
    index: int
    host_id: str
    agent: Agent
    keys_file: Path
    made: list[str] = field(default_factory=list)  # fingerprints appended during the outage


@dataclass
class Window:
    """Requests at the control plane over [start, end) (monotonic seconds)."""

    records: list[RequestRecord]
    start: float
    end: float

    def series(self) -> list[int]:
        out = [0] * max(1, int(self.end - self.start))
        for r in self.records:
            if self.start <= r.at < self.end:
                out[min(len(out) - 1, int(r.at - self.start))] += 1
        return out

    @property
    def seconds(self) -> float:
        return self.end - self.start


def peak(series: list[int], width: int) -> float:
    if len(series) < width:
        return sum(series) / max(1, len(series))
    best = current = sum(series[:width])
    for i in range(width, len(series)):
        current += series[i] - series[i - width]
        best = max(best, current)
    return best / width


def agent_records(records: Iterable[RequestRecord]) -> list[RequestRecord]:
    """The agents' requests (the administrator's calls left out)."""
    return [r for r in records if not r.path.startswith(ADMIN_PATHS)]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.5) -> float | None:
    """Seconds until `predicate` held, or None after `timeout`."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if predicate():
            return time.monotonic() - began
        time.sleep(step)
    return None


class Fleet:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.rng = random.Random(args.seed)
        self.signing_key = Ed25519PrivateKey.generate()
        self.db = work / "cp.db"
        self.cp = ControlPlane.start(db=str(self.db), signing_key=self.signing_key)
        self.port = int(self.cp.url.rsplit(":", 1)[1])
        self.records: list[RequestRecord] = []  # of control planes already stopped
        self.hosts: list[Host] = []
        self.jtis: dict[str, str] = {}  # jti -> host_id, every rotation issued

    def all_records(self) -> list[RequestRecord]:
        return agent_records([*self.records, *list(self.cp.requests)])

    # -- hosts --------------------------------------------------------------------------

    def build(self) -> None:
        for i in range(self.args.agents):
            base = self.work / f"host-{i:03d}"
            fr = writable_root(base / "root", comment=f"initial-{i}")
            state = base / "state"
            facts = host_facts(f"fleet-{i:03d}")
            host_id = enroll_host(self.cp.url, self.cp.bootstrap_token, str(state), facts).host_id
            config = base / "agent.toml"
            config.write_text(
                f'[server]\nurl = "{self.cp.url}"\nallow_plain_http_loopback = true\n'
                f'[state]\ndir = "{state}"\n'
                f'[instructions]\npublic_keys = ["{self.cp.signing_public_key_openssh}"]\n'
                "[usage]\nenabled = false\n"
            )
            keys = fr.path("/home/alice/.ssh/authorized_keys")
            self.hosts.append(Host(i, host_id, Agent(config, fr.root), keys))

    def start_all(self) -> float:
        began = time.monotonic()
        for host in self.hosts:
            host.agent.start()
        return began

    def stop_all(self) -> float:
        began = time.monotonic()
        for host in self.hosts:
            assert host.agent.proc is not None
            host.agent.proc.send_signal(signal.SIGTERM)
        for host in self.hosts:
            assert host.agent.proc is not None
            try:
                host.agent.proc.wait(30)
            except Exception:
                host.agent.kill()
        return time.monotonic() - began

    def pids(self) -> list[int]:
        return [h.agent.proc.pid for h in self.hosts if h.agent.proc is not None]

    def reported_since(self, since: float) -> dict[str, float]:
        """host_id -> arrival of its first accepted full inventory at or after `since`."""
        first: dict[str, float] = {}
        for r in self.all_records():
            if r.at >= since and r.method == "PUT" and r.path.endswith("/inventory") and r.status == 200:
                host_id = r.path.split("/")[3]
                first.setdefault(host_id, r.at)
        return first

    # -- the control plane ---------------------------------------------------------------

    def stop_cp(self) -> None:
        self.cp.stop()
        self.records.extend(self.cp.requests)

    def start_cp(self) -> None:
        self.cp = ControlPlane.start(port=self.port, db=str(self.db), signing_key=self.signing_key)

    def rotate(self, cp: ControlPlane, count: int) -> None:
        token = cp.admin_token()
        for _ in range(count):
            host = self.rng.choice(self.hosts)
            answer = httpx.post(
                f"{cp.url}/v1/rotations",
                json={"host": host.host_id, "user": "alice", "action": "add", "new_key": ed25519_line("rot")},
                headers={"Authorization": f"Bearer {token}"},
            )
            answer.raise_for_status()
            self.jtis[answer.json()["instruction_id"]] = host.host_id

    def rotate_while_down(self, count: int) -> None:
        """Rotations issued while the agents cannot reach the control plane: through a second
        instance on the same database (another port), stopped again before the real one returns."""
        side = ControlPlane.start(db=str(self.db), signing_key=self.signing_key)
        try:
            self.rotate(side, count)
        finally:
            side.stop()

    def change(self, host: Host, label: str) -> None:
        line = ed25519_line(label)
        with host.keys_file.open("a") as f:
            f.write(line + "\n")
        host.made.append(fingerprint_of(line))


@dataclass
class Figures:
    label: str
    steady_mean: float
    steady_peaks: tuple[float, float, float]
    per_host_hour: float
    restart_peaks: tuple[float, float]
    restart_rejected: int
    all_reported_s: float | None
    recovery_peaks: tuple[float, float, float]
    drained_s: float | None
    events: int
    lost: int
    duplicates: int


@dataclass
class Extras:
    """What only the real run measures."""

    hosts: int = 0
    changing: int = 0
    first_start_s: float | None = None
    start_cpu_s: float = 0.0
    stop_s: float = 0.0
    steady_by_call: dict[str, float] = field(default_factory=dict)
    rss_steady: list[float] = field(default_factory=list)
    rss_end: list[float] = field(default_factory=list)
    rotations: int = 0
    results: int = 0
    results_applied: int = 0
    results_after_s: float | None = None
    outboxes: list[object] = field(default_factory=list)
    records: list[RequestRecord] = field(default_factory=list)


def run_real(args: argparse.Namespace, work: Path) -> tuple[Figures, Extras]:
    fleet = Fleet(args, work)
    extra = Extras(hosts=args.agents)
    try:
        fleet.build()
        print(f"{len(fleet.hosts)} hosts enrolled; starting every agent at once", flush=True)
        began = fleet.start_all()
        first = wait_until(lambda: len(fleet.reported_since(began)) == len(fleet.hosts), 600)
        extra.first_start_s = first
        pids = fleet.pids()
        extra.start_cpu_s = statistics.median(cpu_s(p) for p in pids)
        print(f"every host reported after {_s(first)}; warm-up {args.warmup} min", flush=True)
        time.sleep(args.warmup * 60)
        steady = Window([], time.monotonic(), time.monotonic() + args.steady * 60)
        time.sleep(args.steady * 60)
        time.sleep(61)  # a long-poll is logged when answered: let those of the window end
        steady.records = [r for r in fleet.all_records() if steady.start <= r.at < steady.end]
        s_series = steady.series()
        steady_mean = len(steady.records) / steady.seconds
        per_host_hour = len(steady.records) / len(fleet.hosts) / (steady.seconds / 3600)
        by_call = Counter(call_name(r.path) for r in steady.records)
        extra.steady_by_call = {
            k: v / len(fleet.hosts) / (steady.seconds / 3600) for k, v in sorted(by_call.items())
        }
        extra.rss_steady = [rss_mb(p) for p in fleet.pids()]

        print("restarting every agent at once", flush=True)
        extra.stop_s = fleet.stop_all()
        restart_at = fleet.start_all()
        reported = wait_until(lambda: len(fleet.reported_since(restart_at)) == len(fleet.hosts), 600)
        time.sleep(args.settle * 60)
        restart = Window(fleet.all_records(), restart_at, time.monotonic())
        r_series = restart.series()
        rejected = sum(1 for r in restart.records if r.at >= restart_at and r.status in (429, 503))

        print(f"every host reported again after {_s(reported)}; control plane down for {args.outage} min")
        changing = fleet.rng.sample(fleet.hosts, max(1, round(len(fleet.hosts) * args.changing)))
        down_at = time.monotonic()
        fleet.stop_cp()
        plan: list[tuple[float, Callable[[], None]]] = []
        for host in changing:
            t = fleet.rng.expovariate(1 / args.change_every)
            while t < args.outage * 60:
                plan.append((t, lambda h=host: fleet.change(h, "outage")))
                t += fleet.rng.expovariate(1 / args.change_every)
        plan.append((args.outage * 30, lambda: fleet.rotate_while_down(args.rotations)))
        for at, action in sorted(plan, key=lambda p: p[0]):
            time.sleep(max(0.0, down_at + at - time.monotonic()))
            action()
        time.sleep(max(0.0, down_at + args.outage * 60 - time.monotonic()))
        fleet.start_cp()
        up_at = time.monotonic()
        fleet.rotate(fleet.cp, args.rotations)
        print("control plane back; waiting for every event and result", flush=True)
        made = {h.host_id: h.made for h in changing}

        def arrived() -> int:
            count = 0
            for host_id, fingerprints in made.items():
                seen = {e["fingerprint"] for e in fleet.cp.events(host_id) if e["type"] == "key_added"}
                count += sum(1 for fp in fingerprints if fp in seen)
            return count

        events = sum(len(v) for v in made.values())
        drained = wait_until(lambda: arrived() == events, args.recovery * 60, step=1.0)
        results_wait = wait_until(
            lambda: {r["jti"] for r in fleet.cp.instruction_results()} >= set(fleet.jtis), 300, step=1.0
        )
        horizon = max(time.monotonic(), up_at + args.window * 60)  # where the recovery peak is sought
        time.sleep(max(0.0, horizon - time.monotonic()) + 61)
        recovery = Window(fleet.all_records(), up_at, horizon)
        rc_series = recovery.series()
        results = {r["jti"]: r for r in fleet.cp.instruction_results()}
        extra.rotations = len(fleet.jtis)
        extra.results = sum(1 for j in fleet.jtis if j in results)
        extra.results_applied = sum(1 for j in fleet.jtis if results.get(j, {}).get("status") == "applied")
        extra.results_after_s = results_wait
        extra.rss_end = [rss_mb(p) for p in fleet.pids()]
        extra.records = fleet.all_records()
        extra.changing = len(changing)
        extra.outboxes = outbox_depths(fleet)
        lost = events - arrived()
        duplicates = sum(fleet.cp.duplicate_count(h.host_id) for h in fleet.hosts)
        figures = Figures(
            label="real agents",
            steady_mean=steady_mean,
            steady_peaks=(peak(s_series, 1), peak(s_series, 10), peak(s_series, 60)),
            per_host_hour=per_host_hour,
            restart_peaks=(peak(r_series, 1), peak(r_series, 10)),
            restart_rejected=rejected,
            all_reported_s=reported,
            recovery_peaks=(peak(rc_series, 1), peak(rc_series, 10), peak(rc_series, 60)),
            drained_s=drained,
            events=events,
            lost=lost,
            duplicates=duplicates,
        )
        return figures, extra
    finally:
        for host in fleet.hosts:
            host.agent.kill()
        fleet.cp.stop()


def outbox_depths(fleet: Fleet) -> list[object]:
    """Each agent's outbox as its last status document says (published every 10 s)."""
    from agent.commands.status import read_status

    out: list[object] = []
    for host in fleet.hosts:
        state = host.agent.config.parent / "state"
        status = read_status(str(state)) or {}
        out.append(status.get("outbox"))
    return out


def run_simulated(args: argparse.Namespace, runs: int = 5) -> Figures:
    """The simulator's figures at the same N and timings: the median over `runs` seeds (one fleet
    of 50 is one draw of its random timings; so is the real run)."""
    each = [_simulated_once(args, args.seed + i) for i in range(runs)]

    def med(name: str) -> Any:
        values = [getattr(f, name) for f in each]
        if isinstance(values[0], tuple):
            return tuple(statistics.median(v[i] for v in values) for i in range(len(values[0])))
        if any(v is None for v in values):
            return None
        return statistics.median(values)

    fields = [name for name in Figures.__dataclass_fields__ if name != "label"]
    return Figures(f"simulator (median of {runs})", *(med(name) for name in fields))


def _simulated_once(args: argparse.Namespace, seed: int) -> Figures:
    n = args.agents
    load, _ = scenarios.steady(n, wait_s=60, seed=seed)
    restart = scenarios.mass_restart(n, wait_s=60, splay_s=30.0, seed=seed, after_min=int(args.settle) + 5)
    outage = scenarios.outage(
        n,
        wait_s=60,
        minutes=args.outage,
        changing=args.changing,
        change_every_s=args.change_every,
        seed=seed,
    )
    before = outage.series[: outage.outage[0] - outage.series_start]  # the 5 minutes before it
    return Figures(
        label="simulator",
        steady_mean=load.mean["total"],
        steady_peaks=(peak(before, 1), peak(before, 10), peak(before, 60)),
        per_host_hour=load.per_host_hour,
        restart_peaks=(float(restart.peak), restart.peak_10s),
        restart_rejected=restart.rejected_429 + restart.rejected_503,
        all_reported_s=restart.all_reported_s,
        recovery_peaks=(float(outage.peak), outage.peak_10s, outage.peak_60s),
        drained_s=outage.drained_s,
        events=outage.events_made,
        lost=outage.events_lost,
        duplicates=outage.duplicates,
    )


def _ratio(value: float, base: float) -> str:
    if value != value:  # nan
        return "-"
    return f"{value:.1f} ({value / base:.2f}x)"


def _s(value: float | None) -> str:
    return "never" if value is None else f"{value:.0f} s"


def print_side_by_side(real: Figures, sim: Figures, args: argparse.Namespace) -> None:
    rows = [
        ("steady: mean requests/s", *(f"{f.steady_mean:.2f}" for f in (real, sim))),
        (
            "steady: peak 1 s / 10 s / 60 s",
            *(" / ".join("-" if v != v else f"{v:.1f}" for v in f.steady_peaks) for f in (real, sim)),
        ),
        ("steady: requests per host per hour", *(f"{f.per_host_hour:.1f}" for f in (real, sim))),
        (
            "restart: peak 1 s / 10 s",
            *(f"{f.restart_peaks[0]:.0f} / {f.restart_peaks[1]:.1f}" for f in (real, sim)),
        ),
        ("restart: 429 + 503", *(str(f.restart_rejected) for f in (real, sim))),
        ("restart: every host reported after", *(_s(f.all_reported_s) for f in (real, sim))),
        ("recovery: peak 1 s (x steady)", *(_ratio(f.recovery_peaks[0], f.steady_mean) for f in (real, sim))),
        (
            "recovery: peak 10 s (x steady)",
            *(_ratio(f.recovery_peaks[1], f.steady_mean) for f in (real, sim)),
        ),
        (
            "recovery: peak 60 s (x steady)",
            *(_ratio(f.recovery_peaks[2], f.steady_mean) for f in (real, sim)),
        ),
        ("recovery: outage events delivered after", *(_s(f.drained_s) for f in (real, sim))),
        (
            "outage: events made / lost / duplicates",
            *(f"{f.events} / {f.lost} / {f.duplicates}" for f in (real, sim)),
        ),
    ]
    width = max(len(r[0]) for r in rows)
    cols = [max(len(r[i]) for r in [*rows, ("", real.label, sim.label)]) for i in (1, 2)]
    print(
        f"\n{args.agents} agents, default schedule; outage {args.outage} min, changes on "
        f"{args.changing:.0%} of the hosts every {args.change_every:.0f} s on average"
    )
    print(f"  {'':<{width}}  {real.label:>{cols[0]}}  {sim.label:>{cols[1]}}")
    for name, a, b in rows:
        print(f"  {name:<{width}}  {a:>{cols[0]}}  {b:>{cols[1]}}")


def print_real_extras(extra: Extras) -> None:
    print(
        f"\nstart of {extra.hosts} agents at once on {os.cpu_count()} cores: every host reported after "
        f"{_s(extra.first_start_s)} (CPU per agent until then: median {extra.start_cpu_s:.2f} s); "
        f"stopping them all took {extra.stop_s:.1f} s"
    )
    calls = ", ".join(f"{k} {v:.1f}" for k, v in extra.steady_by_call.items())
    print(f"steady state, per host per hour by call: {calls}")
    for when, values in (("steady", extra.rss_steady), ("end", extra.rss_end)):
        print(
            f"RSS per agent ({when}): median {statistics.median(values):.1f} MB, max {max(values):.1f} MB, "
            f"min {min(values):.1f} MB, total {sum(values):.0f} MB"
        )
    print(
        f"rotations issued (half while the control plane was down): {extra.rotations}; results posted: "
        f"{extra.results} ({extra.results_applied} applied), the last {_s(extra.results_after_s)} "
        "after the recovery began"
    )
    print(f"outboxes at the end (status documents): {Counter(map(str, extra.outboxes)).most_common()}")
    records = extra.records
    span = (max(r.at for r in records) - min(r.at for r in records)) / 3600
    hosts = extra.hosts
    table = Counter((call_name(r.path), "read" if r.method == "GET" else "write", r.status) for r in records)
    print(
        f"\ncontrol plane's request log, whole run ({span * 60:.0f} min, {hosts} hosts; status 0: no answer)"
    )
    print(f"  {'call':<20} {'class':<6} {'status':>6} {'requests':>9} {'per host per hour':>18}")
    for (name, cls, status), count in sorted(table.items()):
        print(f"  {name:<20} {cls:<6} {status:>6} {count:>9} {count / hosts / span:>18.1f}")
    by_status = Counter(r.status for r in records)
    print(f"  total {len(records)} requests: " + ", ".join(f"{s}: {c}" for s, c in sorted(by_status.items())))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--warmup", type=float, default=2.0, help="minutes after every host reported")
    parser.add_argument("--steady", type=float, default=4.0, help="minutes counted at steady state")
    parser.add_argument("--settle", type=float, default=3.0, help="minutes after the restart")
    parser.add_argument("--outage", type=int, default=4, help="minutes the control plane is down")
    parser.add_argument(
        "--recovery", type=float, default=12.0, help="minutes to wait for every event at most"
    )
    parser.add_argument(
        "--changing", type=float, default=0.1, help="fraction of hosts changing in the outage"
    )
    parser.add_argument(
        "--window", type=float, default=6.0, help="minutes after the recovery in which its peak is sought"
    )
    parser.add_argument("--change-every", type=float, default=60.0, help="mean seconds between two changes")
    parser.add_argument("--rotations", type=int, default=10, help="rotations issued during and after")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-sim", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-fleet-real-"))
    began = time.monotonic()
    try:
        real, extra = run_real(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    real_minutes = (time.monotonic() - began) / 60
    print_real_extras(extra)  # before the simulator: a real run is the expensive part
    print(f"\n(real run {real_minutes:.1f} min)", flush=True)
    if not args.skip_sim:
        print_side_by_side(real, run_simulated(args), args)


if __name__ == "__main__":
    main()
