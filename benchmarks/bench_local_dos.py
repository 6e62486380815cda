"""Local denial of service: what one hostile user can make the daemon spend, under two attacks.

Starts `sshklm-agent run` (standalone) on a fake root of --users accounts and lets one of them,
alice, attack while /proc/PID is sampled every second:

  junk    alice rewrites her authorized_keys as 1 MiB of "a\\n" (524,288 invalid lines) every
          --period seconds;
  sparse  alice fills ~/.ssh with --files sparse 1 MiB files, then changes one small file there
          every --period seconds (each change makes the agent look at ~/.ssh again).

For each attack it prints the daemon's CPU (share of one core, mean over the attack and the
worst 5 s), its RSS at the end and its peak (VmHWM), the bytes it read (rchar), the problems
the inventory holds for alice's file, and the bystander latency: how long a key appended to bob's
file meanwhile takes to appear in the daemon's log. Flat means: CPU and RSS near the idle figures
(printed first) whatever the attack.

`--agent-src DIR` runs the agent from another source tree (e.g. a worktree of the branch point,
for the figures before the fix); the fake root and attacks are the same.

Usage: python benchmarks/bench_local_dos.py [--users 100] [--duration 60] [--period 2]
       [--files 3000] [--agent-src DIR] [--attacks junk sparse]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fakeroot import FakeRoot, ed25519_line

TICKS = os.sysconf("SC_CLK_TCK")
MIB = 1 << 20


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def rchar(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def build(root: Path, users: int) -> FakeRoot:
    fr = FakeRoot(root)
    uid = os.geteuid() or 1000
    for name in ("alice", "bob"):
        fr.add_user(name, uid)
        fr.authorized_keys(name, [ed25519_line(f"{name}-initial")])
    for n in range(max(0, users - 2)):
        fr.add_user(f"user{n:05d}", uid)
        fr.authorized_keys(f"user{n:05d}", [ed25519_line(f"k{n}")])
    return fr


class Daemon:
    def __init__(self, work: Path, root: Path, agent_src: Path) -> None:
        self.state = work / "state"
        self.log = work / "agent.log"
        config = work / "agent.toml"
        config.write_text(
            f'[state]\ndir = "{self.state}"\n[usage]\nenabled = false\n'
            "[schedule]\nstartup_splay_s = 0\n[watch]\npoll_interval_s = 5.0\n"
        )
        env = {**os.environ, "PYTHONPATH": str(agent_src), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(config), "--root", str(root)],
            stderr=self.log.open("wb"),
            env=env,
            cwd=str(agent_src),
        )
        started = time.monotonic()
        while "ready" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() - started > 120:
                raise SystemExit(f"agent did not start: {self.log.read_text(errors='replace')[-800:]}")
            time.sleep(0.2)
        time.sleep(3)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def problems_for(self, path: str) -> int:
        """Problems about `path` in the daemon's restart baseline (its last full inventory)."""
        db = sqlite3.connect(f"file:{self.state / 'agent.db'}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT value FROM kv WHERE key = 'inventory'").fetchone()
        except sqlite3.Error:
            return -1
        finally:
            db.close()
        if row is None:
            return -1
        inventory = json.loads(row[0])
        return sum(1 for e in inventory.get("errors", ()) if e.get("path") == path)


def sample(daemon: Daemon, seconds: float, act: object | None, period: float) -> dict[str, float]:
    pid = daemon.proc.pid
    cpu0, t0, read0 = cpu_seconds(pid), time.monotonic(), rchar(pid)
    window: list[tuple[float, float]] = [(t0, cpu0)]
    worst = 0.0
    next_act = t0
    while time.monotonic() - t0 < seconds:
        now = time.monotonic()
        if act is not None and now >= next_act:
            act()  # type: ignore[operator]
            next_act = now + period
        time.sleep(0.25)
        window.append((time.monotonic(), cpu_seconds(pid)))
        while window[-1][0] - window[0][0] > 5.0:
            window.pop(0)
        if window[-1][0] - window[0][0] >= 4.0:
            worst = max(worst, (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0]) * 100)
    elapsed = time.monotonic() - t0
    return {
        "cpu": (cpu_seconds(pid) - cpu0) / elapsed * 100,
        "cpu_worst5s": worst,
        "rss_mb": status_kb(pid, "VmRSS") / 1024,
        "peak_mb": status_kb(pid, "VmHWM") / 1024,
        "read_mb": (rchar(pid) - read0) / MIB,
    }


def bystander_latency(daemon: Daemon, fr: FakeRoot, label: str) -> float:
    line = ed25519_line(label)
    fingerprint = subprocess.run(
        ["ssh-keygen", "-l", "-f", "-"], input=line.encode(), capture_output=True, check=True
    ).stdout.split()[1]
    start = time.monotonic()
    with fr.path("/home/bob/.ssh/authorized_keys").open("a") as f:
        f.write(line + "\n")
    while fingerprint not in daemon.log.read_bytes():
        if time.monotonic() - start > 60:
            return float("inf")
        time.sleep(0.05)
    return time.monotonic() - start


def junk_attack(fr: FakeRoot) -> object:
    path = fr.path("/home/alice/.ssh/authorized_keys")
    junk = b"a\n" * (MIB // 2)

    def act() -> None:
        path.write_bytes(junk)

    return act


def sparse_attack(fr: FakeRoot, files: int) -> object:
    ssh = fr.path("/home/alice/.ssh")
    for n in range(files):
        with (ssh / f"sparse{n:05d}").open("wb") as f:
            f.truncate(MIB)
    counter = [0]

    def act() -> None:
        counter[0] += 1
        (ssh / "touched").write_text(str(counter[0]))

    return act


def run(args: argparse.Namespace, attack: str) -> None:
    work = Path(tempfile.mkdtemp(prefix=f"bench-dos-{attack}-"))
    try:
        fr = build(work / "root", args.users)
        daemon = Daemon(work, fr.root, args.agent_src)
        try:
            idle = sample(daemon, 10, None, args.period)
            act = junk_attack(fr) if attack == "junk" else sparse_attack(fr, args.files)
            under = sample(daemon, args.duration, act, args.period)
            latency = bystander_latency(daemon, fr, f"bystander-{attack}")
            daemon.proc.send_signal(15)
            daemon.proc.wait(30)
            problems = daemon.problems_for("/home/alice/.ssh/authorized_keys")
        finally:
            if daemon.proc.poll() is None:
                daemon.stop()
        print(
            f"{attack:<6} | idle CPU {idle['cpu']:5.1f}% RSS {idle['rss_mb']:6.1f} MB | under attack: "
            f"CPU {under['cpu']:5.1f}% (worst 5 s {under['cpu_worst5s']:5.1f}%) "
            f"RSS {under['rss_mb']:6.1f} MB peak {under['peak_mb']:6.1f} MB read {under['read_mb']:8.1f} MB "
            f"| problems kept for alice's file {problems:>7} | bystander seen in {latency:5.2f} s"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--period", type=float, default=2.0)
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--agent-src", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--attacks", nargs="+", default=["junk", "sparse"], choices=["junk", "sparse"])
    args = parser.parse_args()
    print(
        f"agent from {args.agent_src}; {args.users} users; attack {args.duration:g} s, "
        f"one change every {args.period:g} s"
    )
    for attack in args.attacks:
        run(args, attack)


if __name__ == "__main__":
    main()
