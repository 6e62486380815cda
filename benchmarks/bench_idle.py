"""Idle footprint of the whole daemon: RSS, threads and CPU with 1,000 and 10,000 users watched.

Starts `sshklm-agent run` (standalone, default settings) on a fake root per size, waits for it
to be ready, lets it settle, then samples /proc/PID for an idle period (twice: the first start,
with an empty state directory, then a restart that finds the state the first run left): RSS (VmRSS), thread
count, and CPU time used (utime+stime) as a share of one core. Targets: RSS <= 60 MB at 1,000
users and <= 100 MB at 10,000; threads <= 10; CPU < 1%.

With --enrolled the agent is enrolled with the reference control plane on loopback (heartbeats,
reports, token refresh: the production configuration); without, it runs standalone. With
--metrics it also writes its metrics file (metrics.textfile) on every status publication. With
--prometheus-client the agent process first imports prometheus_client and renders its default
registry once (what using the library for the metrics would cost; docs/choices.md "Metrics").

Usage: python benchmarks/bench_idle.py [--sizes 1000 10000] [--idle 60] [--enrolled] [--metrics]
           [--prometheus-client]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_long_poll import host_facts
from tests.fakeroot import FakeRoot, ed25519_line

TICKS = os.sysconf("SC_CLK_TCK")


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def build(root: Path, users: int) -> None:
    fr = FakeRoot(root)
    lines = [ed25519_line(f"k{i}") for i in range(min(users, 500))]
    passwd = ["root:x:0:0:root:/root:/bin/sh"]
    for u in range(users):
        name = f"user{u:05d}"
        passwd.append(f"{name}:x:{10000 + u}:{10000 + u}::/home/{name}:/bin/sh")
        ssh = root / "home" / name / ".ssh"
        ssh.mkdir(parents=True)
        (ssh / "authorized_keys").write_text(lines[u % len(lines)] + "\n")
        (ssh / "authorized_keys").chmod(0o600)
    (root / "etc/passwd").write_text("\n".join(passwd) + "\n")
    (root / "etc/group").write_text("".join(f"{p.split(':')[0]}:x:{p.split(':')[3]}:\n" for p in passwd))
    del fr


# The agent's entry point with prometheus_client loaded first and its default registry (process,
# platform and GC collectors) rendered once, as a daemon using the library would.
WITH_PROMETHEUS_CLIENT = (
    "import runpy, sys, prometheus_client; prometheus_client.generate_latest(); "
    "sys.argv[0] = 'sshklm-agent'; runpy.run_module('agent', run_name='__main__')"
)


def measure(
    users: int, idle: float, work: Path, server: str | None, metrics: bool = False, library: bool = False
) -> None:
    root = work / f"root-{users}"
    build(root, users)
    state = work / f"state-{users}"
    config = work / f"agent-{users}.toml"
    text = f'[state]\ndir = "{state}"\n[usage]\nenabled = false\n'
    if metrics:
        (work / f"metrics-{users}").mkdir(mode=0o755)
        text += f'[metrics]\ntextfile = "{work}/metrics-{users}/sshklm-agent.prom"\n'
    if server is not None:
        from agent.control.enroll import enroll_host

        cp_url, token = server.split(" ", 1)
        enroll_host(cp_url, token, str(state), host_facts(f"bench-{users}"))
        text += (
            f'[server]\nurl = "{cp_url}"\nallow_plain_http_loopback = true\n[schedule]\nstartup_splay_s = 0\n'
        )
    config.write_text(text)
    # The first start finds an empty state directory; a restart (an upgrade, a reboot) finds the
    # last inventory and first_seen times of every key in it: production's usual start.
    for start in ("first start", "restart"):
        run_once(users, idle, work, root, config, start, library)


def run_once(
    users: int, idle: float, work: Path, root: Path, config: Path, start: str, library: bool
) -> None:
    log = work / f"agent-{users}.log"
    started = time.monotonic()
    entry = ["-c", WITH_PROMETHEUS_CLIENT] if library else ["-m", "agent"]
    proc = subprocess.Popen(
        [sys.executable, *entry, "run", "--config", str(config), "--root", str(root)],
        stderr=log.open("wb"),
    )
    try:
        while "ready" not in log.read_text():
            if proc.poll() is not None or time.monotonic() - started > 300:
                raise SystemExit(f"agent did not start: {log.read_text()[-800:]}")
            time.sleep(0.2)
        ready_s = time.monotonic() - started
        time.sleep(5)  # settle: first status write, watcher set-up
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        peak_threads = 0
        while time.monotonic() - t0 < idle:
            peak_threads = max(peak_threads, int(proc_status(proc.pid)["Threads"]))
            time.sleep(1)
        cpu = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0) * 100
        status = proc_status(proc.pid)
        rss = int(status["VmRSS"].split()[0]) / 1024
        peak = int(status["VmHWM"].split()[0]) / 1024
        print(
            f"{users:>6} users, {start:<11} | ready in {ready_s:5.1f} s | RSS {rss:6.1f} MB "
            f"| threads {peak_threads:2d} | idle CPU {cpu:.2f}% over {idle:.0f} s | peak RSS {peak:.0f} MB"
        )
    finally:
        proc.terminate()
        proc.wait(15)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument("--enrolled", action="store_true", help="enrolled with the reference control plane")
    parser.add_argument("--metrics", action="store_true", help="with metrics.textfile set")
    parser.add_argument(
        "--prometheus-client", action="store_true", help="prometheus_client loaded in the agent process"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-idle-"))
    cp = None
    try:
        server = None
        if args.enrolled:
            from tests.controlplane import ControlPlane

            cp = ControlPlane.start()
            server = f"{cp.url} {cp.bootstrap_token}"
        mode = "enrolled (reference control plane on loopback)" if args.enrolled else "standalone"
        mode += ", metrics file written" if args.metrics else ""
        mode += ", prometheus_client loaded" if args.prometheus_client else ""
        print(f"mode: {mode}")
        print("targets: RSS <= 60 MB (1,000 users), <= 100 MB (10,000 users); threads <= 10; CPU < 1%")
        for users in args.sizes:
            measure(users, args.idle, work, server, args.metrics, args.prometheus_client)
    finally:
        if cp is not None:
            cp.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
