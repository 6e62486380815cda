"""Long-poll against polling, side by side in one run: rotation latency and requests per host per hour.

Starts two reference control planes on loopback (one per mode, so each one's request log is one
mode's) and `--agents` real `sshklm-agent run` processes against each (own state directory and fake
root, default schedule): one group long-polls (`long_poll_s = 60`, the default), the other polls as
the agent did before contract §6.1 (`long_poll_s = 0`: heartbeat + instruction poll every 60 s ±20 %).

1. Steady state: after a warm-up, every request the agents make is COUNTED at each control plane
   over `--window` minutes (token calls included) and given per host per hour. Goal (long-poll): <= 80.
2. Latency: `--rotations` rotations per mode (an `add` of a new key for alice, through the admin API
   `POST /v1/rotations`), issued at random times `--spacing` seconds apart on average to a random
   agent of the group; each measured from the POST to the arrival of the agent's result (`POST
   /v1/instructions/{jti}/result`) at the control plane. Goal (long-poll): p99 <= 2 s.

Usage: python benchmarks/bench_long_poll.py [--agents 5] [--window 12] [--rotations 200] [--spacing 1.5]
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.control.enroll import enroll_host
from tests.controlplane import ControlPlane
from tests.fakeroot import ed25519_line, writable_root


@dataclass
class Group:
    label: str
    long_poll_s: int
    cp: ControlPlane
    hosts: list[str] = field(default_factory=list)
    agents: list[subprocess.Popen[bytes]] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    per_host_hour: float = 0.0
    by_call: dict[str, float] = field(default_factory=dict)


def host_facts(name: str) -> dict[str, object]:
    """The facts `enroll` would send for a host of this name (its machine id too)."""
    return {
        "machine_id": name,
        "hostname": name,
        "fqdn": name,
        "os": {},
        "kernel": "",
        "agent_version": "0.1.0",
        "sshd_version": None,
        "host_keys": [],
    }


def start_agents(group: Group, n: int, work: Path) -> None:
    for i in range(n):
        base = work / f"{group.label}-{i}"
        fr = writable_root(base / "root", comment=f"initial-{i}")
        state = base / "state"
        facts = host_facts(f"{group.label}-{i}")
        group.hosts.append(enroll_host(group.cp.url, group.cp.bootstrap_token, str(state), facts).host_id)
        config = base / "agent.toml"
        config.write_text(
            f'[server]\nurl = "{group.cp.url}"\nallow_plain_http_loopback = true\n'
            f'[state]\ndir = "{state}"\n'
            f"[schedule]\nlong_poll_s = {group.long_poll_s}\n"
            f'[instructions]\npublic_keys = ["{group.cp.signing_public_key_openssh}"]\n'
            "[usage]\nenabled = false\n"
        )
        group.agents.append(
            subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--config", str(config), "--root", str(fr.root)],
                stdout=subprocess.DEVNULL,
                stderr=(base / "agent.log").open("wb"),
            )
        )


def agent_requests(cp: ControlPlane, since: float, until: float) -> list[str]:
    """Paths of the agents' requests that arrived in [since, until) (administrator calls excluded)."""
    out = []
    for r in list(cp.requests):
        if since <= r.at < until and not r.path.startswith(("/v1/rotations", "/v1/hosts?", "/v1/keys")):
            out.append(r.path)
    return out


def call_name(path: str) -> str:
    if path.startswith("/v1/auth/"):
        return "token"
    if path.startswith("/v1/instructions/"):
        return "result"
    tail = path.split("?")[0].rsplit("/", 1)[-1]
    return tail + (" (wait)" if "wait=" in path else "")


def rotate(groups: list[Group], count: int, spacing: float, rng: random.Random) -> None:
    """Issue `count` rotations per group at random spaced times; record each one's latency."""
    issued: list[tuple[Group, str, float]] = []
    lock = threading.Lock()
    tokens = {id(g): g.cp.admin_token() for g in groups}
    plan = [(g, rng.random()) for g in groups for _ in range(count)]
    rng.shuffle(plan)
    for n, (group, _) in enumerate(plan):
        host = rng.choice(group.hosts)
        body = {"host": host, "user": "alice", "action": "add", "new_key": ed25519_line(f"rot-{n}")}
        started = time.monotonic()
        answer = httpx.post(
            f"{group.cp.url}/v1/rotations",
            json=body,
            headers={"Authorization": f"Bearer {tokens[id(group)]}"},
        )
        answer.raise_for_status()
        with lock:
            issued.append((group, answer.json()["instruction_id"], started))
        time.sleep(rng.expovariate(1 / spacing) / len(groups))
    deadline = time.monotonic() + 180
    pending = list(issued)
    while pending and time.monotonic() < deadline:
        still = []
        for group, jti, started in pending:
            path = f"/v1/instructions/{jti}/result"
            arrived = [r.at for r in list(group.cp.requests) if r.path == path and r.status == 200]
            if arrived:
                group.latencies.append(arrived[0] - started)
            else:
                still.append((group, jti, started))
        pending = still
        time.sleep(0.2)
    if pending:
        print(f"!! {len(pending)} rotations without a result after 3 minutes")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=5, help="agents per mode")
    parser.add_argument("--warmup", type=float, default=2.0, help="minutes before counting")
    parser.add_argument("--window", type=float, default=12.0, help="minutes of counting at steady state")
    parser.add_argument("--rotations", type=int, default=200, help="rotations per mode")
    parser.add_argument(
        "--spacing", type=float, default=1.5, help="mean seconds between two rotations of a mode"
    )
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-long-poll-"))
    groups = [
        Group("long-poll", 60, ControlPlane.start()),
        Group("polling", 0, ControlPlane.start()),
    ]
    try:
        for group in groups:
            start_agents(group, args.agents, work)
        began = time.monotonic()
        print(f"{args.agents} agents per mode started; warm-up {args.warmup} min, {args.window} min counted")
        time.sleep(args.warmup * 60)
        since = time.monotonic()
        time.sleep(args.window * 60)
        until = time.monotonic()
        # A request is logged when it is answered: let the ones that arrived in the window (a long-poll
        # is held up to 60 s) be answered before counting them by their arrival.
        time.sleep(65)
        hours = (until - since) / 3600
        for group in groups:
            paths = agent_requests(group.cp, since, until)
            group.per_host_hour = len(paths) / len(group.hosts) / hours
            names: dict[str, int] = {}
            for path in paths:
                names[call_name(path)] = names.get(call_name(path), 0) + 1
            group.by_call = {k: v / len(group.hosts) / hours for k, v in sorted(names.items())}
        print(
            f"counting done after {(until - began) / 60:.1f} min; issuing {args.rotations} rotations per mode"
        )
        rotate(groups, args.rotations, args.spacing, random.Random(args.seed))
        print()
        header = f"{'mode':<10} {'rotations':>9} {'p50':>8} {'p99':>8} {'max':>8}   {'req/host/hour':>13}"
        print(header + "   by call")
        for g in groups:
            calls = ", ".join(f"{k} {v:.1f}" for k, v in g.by_call.items())
            worst = max(g.latencies, default=float("nan"))
            print(
                f"{g.label:<10} {len(g.latencies):>9} {pct(g.latencies, 0.5):>7.2f}s "
                f"{pct(g.latencies, 0.99):>7.2f}s {worst:>7.2f}s   {g.per_host_hour:>13.1f}   {calls}"
            )
        print(
            f"\n(goals, long-poll: p99 <= 2 s, <= 80 requests per host per hour; "
            f"{args.agents} agents per mode, {args.window} min counted)"
        )
    finally:
        for group in groups:
            for agent in group.agents:
                agent.terminate()
            for agent in group.agents:
                try:
                    agent.wait(15)
                except subprocess.TimeoutExpired:
                    agent.kill()
            group.cp.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
