"""Revocation latency through the whole loop: instruction issued -> sshd refuses the key.

Root only. Starts the reference control plane on loopback, a throwaway user with two keys in
authorized_keys, a private sshd (port on loopback) whose RevokedKeys is the agent's KRL, and a real
`sshklm-agent run` (enrolled, real root). Then N times: issue `revoke_keys` for one key's
fingerprint and try `ssh` logins with it until sshd refuses (the time is from issuing the
instruction to the first refused login); then `unrevoke_keys` and wait until the key logs in again
(reported too). Prints p50 / p90 / max of both.

The figure depends on how instructions reach the agent, so both modes run in one go, side by side,
each with its own agent (same sshd, same control plane): `long-poll` (the default: one request
waits at the control plane, agent-api.md 6.1; expect a round trip plus the apply) and `polling`
(`long_poll_s = 0`, instructions fetched with the heartbeat every `--heartbeat` seconds, the
server's poll_interval set to the same; expect about half of it plus the apply). Cycles are spaced
(`--interval` plus a random phase) so that heartbeats, results and events stay inside the
published write limit (100 requests a minute), which the agent enforces on itself: past it, what
would be measured is the rate limit. Resolution: one `ssh` login attempt (tens of ms on loopback).

Usage: python benchmarks/bench_revoke.py [--revocations 20] [--heartbeat 60] [--interval 2]
           [--modes long-poll polling]     (as root)
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
from tests.integration.sshd_support import Site, make_site


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
    parser.add_argument("--revocations", type=int, default=20, help="revoke/unrevoke cycles per mode")
    parser.add_argument("--heartbeat", type=float, default=60.0, help="heartbeat / poll_interval (s)")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between cycles")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: creates a user and runs sshd")
    work = Path(tempfile.mkdtemp(prefix="bench-revoke-"))
    site = make_site(work / "site")
    cp = ControlPlane.start()
    try:
        lines = [run_mode(mode, args, cp, site, work) for mode in args.modes]
        version = subprocess.run(["/usr/sbin/sshd", "-V"], capture_output=True, text=True).stderr.strip()
        print(
            f"sshd: {version}; {args.revocations} cycles per mode, {args.interval} s + random phase apart; "
            f"polling: heartbeat every {args.heartbeat} s (server poll_interval the same)"
        )
        for line in lines:
            print(line)
    finally:
        cp.stop()
        site.close()
        shutil.rmtree(work, ignore_errors=True)


# How each mode fetches instructions: schedule.long_poll_s (0: polling with the heartbeat).
MODES = {"long-poll": 60, "polling": 0}


def run_mode(mode: str, args: argparse.Namespace, cp: ControlPlane, site: Site, work: Path) -> str:
    """Revoke and restore one key `args.revocations` times through an agent in `mode`; the summary."""
    long_poll_s = MODES[mode]
    cp.poll_interval = max(1, round(args.heartbeat))
    state = work / f"state-{mode}"
    host_id = enroll(cp, state)
    config = work / f"agent-{mode}.toml"
    config.write_text(
        f'[server]\nurl = "{cp.url}"\nallow_plain_http_loopback = true\n[state]\ndir = "{state}"\n'
        f"[schedule]\nstartup_splay_s = 0\nheartbeat_s = {args.heartbeat}\nlong_poll_s = {long_poll_s}\n"
        f"[usage]\nenabled = false\n"
        f'[instructions]\npublic_keys = ["{cp.signing_public_key_openssh}"]\n'
        f'[discovery]\nsshd_config = "{site.config}"\nidentity_keys = false\norphan_homes = false\n'
        f'[trust]\ndir = "{site.trust_dir}"\n'
    )
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(config), "--root", "/"],
        stderr=(work / f"agent-{mode}.log").open("wb"),
    )
    try:
        wait(lambda: (site.trust_dir / "revoked_keys").exists(), 60, "the agent's KRL")
        if site.sshd is None:
            site.start_sshd()
        wait(lambda: cp.inventory(host_id) is not None, 120, "the first inventory")
        wait(lambda: site.login("member"), 30, "the first login")
        # A long-poll is established by the first instruction request after the start.
        time.sleep(3)
        fp = site.keys["member"][2]
        revoke, restore = [], []
        rng = random.Random(1)
        # A random phase against the poll: a fixed spacing would issue every instruction at the same
        # point of the heartbeat cycle and measure that point, not the distribution. (A held
        # long-poll is answered at once wherever in its wait it is.)
        phase = args.heartbeat if long_poll_s == 0 else 5.0
        for index in range(args.revocations):
            body = {"revocation_id": f"rvk_{mode}{index}", "fingerprints": [fp]}
            start = time.monotonic()
            cp.issue_instruction(host_id, "revoke_keys", body)
            wait(lambda: not site.login("member"), 180, f"refusal {index}")
            revoke.append(time.monotonic() - start)
            if not site.login("bystander"):
                raise SystemExit("the other key was refused too")
            start = time.monotonic()
            cp.issue_instruction(host_id, "unrevoke_keys", body)
            wait(lambda: site.login("member"), 180, f"restore {index}")
            restore.append(time.monotonic() - start)
            time.sleep(args.interval + rng.uniform(0, phase))
        return "\n".join(
            [
                f"{mode}:",
                "  " + summary("revoke_keys issued -> sshd refuses  ", revoke),
                "  " + summary("unrevoke_keys issued -> key logs in ", restore),
            ]
        )
    finally:
        agent.terminate()
        agent.wait(10)


if __name__ == "__main__":
    main()
