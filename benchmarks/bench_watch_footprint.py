"""Footprint of the change watcher at scale: RSS, threads, inotify watches and idle CPU.

Builds a fake root with N users (each with ~/.ssh/authorized_keys), starts one Watcher on all of
them (authorized_keys as file targets, ~/.ssh as dir targets, plus /etc/ssh/sshd_config and
/etc/passwd), then measures over an idle period. Each N runs in a fresh child process so RSS figures
do not include the previous run.

    .venv/bin/python benchmarks/bench_watch_footprint.py                  # 1,000 and 10,000 users, 60 s idle
    .venv/bin/python benchmarks/bench_watch_footprint.py --idle 10 --users 10000
    .venv/bin/python benchmarks/bench_watch_footprint.py --watch-limit 5000   # simulate max_user_watches
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.daemon.watcher import InotifyBackend, Watcher


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def inotify_watches_of_self() -> int:
    """Counts `inotify wd:` lines in /proc/self/fdinfo: the kernel's own view."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                continue
            count += Path(f"/proc/self/fdinfo/{fd}").read_text().count("inotify wd:")
        except OSError:
            continue
    return count


def build_root(base: Path, users: int) -> tuple[list[str], list[str]]:
    files = ["/etc/ssh/sshd_config", "/etc/passwd"]
    dirs: list[str] = []
    (base / "etc/ssh").mkdir(parents=True)
    (base / "etc/ssh/sshd_config").write_text("PermitRootLogin no\n")
    passwd = []
    for i in range(users):
        name = f"user{i:05d}"
        ssh = base / "home" / name / ".ssh"
        ssh.mkdir(parents=True)
        (ssh / "authorized_keys").write_text(f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA {name}\n")
        files.append(f"/home/{name}/.ssh/authorized_keys")
        dirs.append(f"/home/{name}/.ssh")
        passwd.append(f"{name}:x:{10000 + i}:{10000 + i}::/home/{name}:/bin/sh")
    (base / "etc/passwd").write_text("\n".join(passwd) + "\n")
    return files, dirs


class LimitedBackend(InotifyBackend):
    """Simulates fs.inotify.max_user_watches without touching the host setting."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.count = 0

    def add(self, path: bytes, mask: int) -> int:
        if self.count >= self.limit:
            raise OSError(errno.ENOSPC, "inotify watch limit reached")
        wd = super().add(path, mask)
        self.count += 1
        return wd


def measure(users: int, idle_s: float, watch_limit: int | None) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="sshklm-bench-") as tmp:
        base = Path(tmp)
        files, dirs = build_root(base, users)
        rss_before = rss_mb()
        changes: list[int] = []
        kwargs: dict[str, object] = {}
        if watch_limit is not None:
            kwargs["inotify_factory"] = lambda: LimitedBackend(watch_limit)
        watcher = Watcher(
            on_changes=lambda paths: changes.append(len(paths)),
            on_rescan=lambda reason: None,
            root=str(base),
            poll_interval_s=min(30.0, max(1.0, idle_s / 3)),
            **kwargs,  # type: ignore[arg-type]
        )
        t0 = time.perf_counter()
        watcher.set_targets(files, dirs)
        watcher.start()
        setup_s = time.perf_counter() - t0
        cpu0 = time.process_time()
        time.sleep(idle_s)
        idle_cpu = time.process_time() - cpu0
        # One real change, to show the watcher is live after the idle period.
        with open(base / "home/user00000/.ssh/authorized_keys", "a") as f:
            f.write("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5BBBB extra\n")
        time.sleep(1.0)
        stats = watcher.stats()
        result: dict[str, object] = {
            "users": users,
            "setup_s": round(setup_s, 2),
            "rss_mb": round(rss_mb(), 1),
            "rss_delta_mb": round(rss_mb() - rss_before, 1),
            "threads": threading.active_count(),
            "watcher_threads": stats.threads,
            "watches_kernel": inotify_watches_of_self(),
            "watches": stats.watches,
            "targets_inotify": stats.targets_inotify,
            "targets_polled": stats.targets_polled,
            "polling_reasons": stats.polling_reasons,
            "idle_s": idle_s,
            "idle_cpu_s": round(idle_cpu, 3),
            "change_seen": bool(changes),
        }
        watcher.stop()
        return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument("--idle", type=float, default=60.0, help="idle period in seconds (default 60)")
    parser.add_argument("--watch-limit", type=int, default=None, help="simulate max_user_watches (ENOSPC)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(measure(args.users[0], args.idle, args.watch_limit)))
        return

    limit = Path("/proc/sys/fs/inotify/max_user_watches").read_text().strip()
    print(f"fs.inotify.max_user_watches = {limit} (per user, shared by all of root's processes)")
    rows = []
    for n in args.users:
        cmd = [sys.executable, __file__, "--child", "--users", str(n), "--idle", str(args.idle)]
        if args.watch_limit is not None:
            cmd += ["--watch-limit", str(args.watch_limit)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    header = (
        f"{'users':>6} {'setup s':>8} {'RSS MB':>7} {'+MB':>6} {'threads':>7} {'watches':>8} "
        f"{'inotify':>8} {'polled':>7} {'idle CPU s':>10} {'live':>5}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['users']:>6} {r['setup_s']:>8} {r['rss_mb']:>7} {r['rss_delta_mb']:>6} {r['threads']:>7} "
            f"{r['watches_kernel']:>8} {r['targets_inotify']:>8} {r['targets_polled']:>7} "
            f"{r['idle_cpu_s']:>10} {'yes' if r['change_seen'] else 'NO':>5}"
        )
        if r["polling_reasons"]:
            print(f"{'':>6} polled because: {r['polling_reasons']}")
    print(f"(idle period {args.idle:g} s; threads = whole process incl. main; targets = files + ~/.ssh dirs)")
    print("(watches = the kernel's count: one per ~/.ssh, plus /home, /etc/ssh, /etc and / shared by all)")


if __name__ == "__main__":
    main()
