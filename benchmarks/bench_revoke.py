"""Revocation latency through the whole loop: instruction issued -> sshd refuses the key.

Root only. Starts the reference control plane on loopback, a throwaway user with two keys in
authorized_keys, a private sshd (port on loopback) whose RevokedKeys is the agent's KRL, and a real
`sshklm-agent run` (enrolled, real root). Then N times: issue `revoke_keys` for one key's
fingerprint and try `ssh` logins with it until sshd refuses (the time is from issuing the
instruction to the first refused login); then `unrevoke_keys` and wait until the key logs in again
(reported too). Prints p50 / p90 / max of both.

The figure depends on how instructions reach the agent: this branch polls them with the
heartbeat (`--heartbeat`, seconds; the server's poll_interval is set to the same), so expect about
half of it plus the apply; with the long-poll (agent-api.md 6.1) it is a round trip plus the apply.
Cycles are spaced (`--interval`) so that heartbeats, results and events stay inside the published
write limit (100 requests a minute), which the agent enforces on itself: past it, what would be
measured is the rate limit. Resolution: one `ssh` login attempt (tens of ms on loopback).

Usage: sudo python benchmarks/bench_revoke.py [--revocations 20] [--heartbeat 2] [--interval 2]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.controlplane import ControlPlane
from tests.integration.daemon_support import enroll
from tests.integration.sshd_support import make_site


def wait(predicate, timeout: float, what: str) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"timed out: {what}")
    return time.monotonic() - start


def summary(name: str, values: list[float]) -> str:
    values = sorted(values)
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
    return (
        f"{name}: p50 {pick(0.5) * 1000:.0f} ms   p90 {pick(0.9) * 1000:.0f} ms   "
        f"max {values[-1] * 1000:.0f} ms   mean {statistics.mean(values) * 1000:.0f} ms   (n={len(values)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--revocations", type=int, default=20)
    parser.add_argument("--heartbeat", type=float, default=2.0, help="heartbeat / poll_interval (s)")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between cycles")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: creates a user and runs sshd")
    work = Path(tempfile.mkdtemp(prefix="bench-revoke-"))
    site = make_site(work / "site")
    cp = ControlPlane.start()
    agent: subprocess.Popen[bytes] | None = None
    try:
        cp.poll_interval = max(1, round(args.heartbeat))
        state = work / "state"
        host_id = enroll(cp, state)
        config = work / "agent.toml"
        config.write_text(
            f'[server]\nurl = "{cp.url}"\nallow_plain_http_loopback = true\n[state]\ndir = "{state}"\n'
            f"[schedule]\nstartup_splay_s = 0\nheartbeat_s = {args.heartbeat}\n[usage]\nenabled = false\n"
            f'[instructions]\npublic_keys = ["{cp.signing_public_key_openssh}"]\n'
            f'[discovery]\nsshd_config = "{site.config}"\nidentity_keys = false\norphan_homes = false\n'
            f'[trust]\ndir = "{site.trust_dir}"\n'
        )
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(config), "--root", "/"],
            stderr=(work / "agent.log").open("wb"),
        )
        wait(lambda: (site.trust_dir / "revoked_keys").exists(), 60, "the agent's KRL")
        site.start_sshd()
        wait(lambda: cp.inventory(host_id) is not None, 120, "the first inventory")
        wait(lambda: site.login("member"), 30, "the first login")
        fp = site.keys["member"][2]
        revoke, restore = [], []
        rng = random.Random(1)
        for index in range(args.revocations):
            body = {"revocation_id": f"rvk_bench{index}", "fingerprints": [fp]}
            start = time.monotonic()
            cp.issue_instruction(host_id, "revoke_keys", body)
            wait(lambda: not site.login("member"), 120, f"refusal {index}")
            revoke.append(time.monotonic() - start)
            if not site.login("bystander"):
                raise SystemExit("the other key was refused too")
            start = time.monotonic()
            cp.issue_instruction(host_id, "unrevoke_keys", body)
            wait(lambda: site.login("member"), 120, f"restore {index}")
            restore.append(time.monotonic() - start)
            # A random phase against the poll: a fixed spacing would issue every instruction at the
            # same point of the heartbeat cycle and measure that point, not the distribution.
            time.sleep(args.interval + rng.uniform(0, args.heartbeat))
        version = subprocess.run(["/usr/sbin/sshd", "-V"], capture_output=True, text=True).stderr.strip()
        print(
            f"sshd: {version}; instruction delivery: polling with the heartbeat every {args.heartbeat} s "
            f"(server poll_interval {cp.poll_interval} s), cycles {args.interval} s + random phase apart"
        )
        print(summary("revoke_keys issued -> sshd refuses  ", revoke))
        print(summary("unrevoke_keys issued -> key logs in ", restore))
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(10)
        cp.stop()
        site.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
