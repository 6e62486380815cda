"""Scan benchmark: `sshklm-agent scan --root FAKE --format json` against `ssh-keygen -l` on the same keys.

Builds a fake root with 10,000 users and 100,000 authorized keys (mostly ed25519, a quarter RSA
2048-4096, some ECDSA, a tenth with options), then times, side by side in the same run:
  A) sshklm-agent scan --root ROOT --format json > /dev/null      (the whole discovery)
  B) ssh-keygen -l -f ALL_KEYS                                      (fingerprinting alone, C)
and prints the median of several runs, the ratio A/B (target <= 1.0), the scan's peak RSS
(target < 300 MB) and `sshklm-agent --version` start-up time (target < 150 ms).

RSA moduli are random odd numbers of the stated size (ssh-keygen parses and fingerprints them
without a primality test), so the fake root is built in seconds; ECDSA points are real.

Usage: python benchmarks/bench_scan.py [--users 10000] [--keys 100000] [--runs 5] [--dir DIR]
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

AGENT = [sys.executable, "-m", "agent"]


def _s(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _mpint(value: int) -> bytes:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return _s(b"\x00" + raw if raw[0] & 0x80 else raw)


def ed25519(rng: random.Random) -> str:
    blob = _s(b"ssh-ed25519") + _s(rng.randbytes(32))
    return "ssh-ed25519 " + base64.b64encode(blob).decode()


def rsa(rng: random.Random, bits: int) -> str:
    n = rng.getrandbits(bits) | (1 << (bits - 1)) | 1
    blob = _s(b"ssh-rsa") + _mpint(65537) + _mpint(n)
    return "ssh-rsa " + base64.b64encode(blob).decode()


def ecdsa_pool(count: int) -> list[str]:
    curves = [ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1()]
    out = []
    for i in range(count):
        key = ec.generate_private_key(curves[i % 3]).public_key()
        out.append(
            key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
        )
    return out


def build_root(root: Path, users: int, keys: int, seed: int = 7) -> Path:
    rng = random.Random(seed)
    ecdsa = ecdsa_pool(max(1, keys // 20))
    (root / "etc/ssh").mkdir(parents=True, exist_ok=True)
    (root / "etc/ssh/sshd_config").write_text("PubkeyAuthentication yes\n")
    passwd = ["root:x:0:0:root:/root:/bin/sh"]
    group = ["root:x:0:"]
    all_keys = root / "all_keys.pub"
    per_user = keys // users
    extra = keys - per_user * users
    with all_keys.open("w") as everything:
        for u in range(users):
            name = f"user{u:05d}"
            uid = 10_000 + u
            passwd.append(f"{name}:x:{uid}:{uid}::/home/{name}:/bin/sh")
            group.append(f"{name}:x:{uid}:")
            ssh = root / "home" / name / ".ssh"
            ssh.mkdir(parents=True)
            lines = []
            for k in range(per_user + (1 if u < extra else 0)):
                roll = rng.random()
                if roll < 0.25:
                    line = rsa(rng, rng.choice((2048, 3072, 4096)))
                elif roll < 0.30:
                    line = rng.choice(ecdsa)
                else:
                    line = ed25519(rng)
                line += f" {name}-key{k}@bench"
                everything.write(line + "\n")
                if rng.random() < 0.10:
                    line = 'from="10.0.0.0/8",no-pty ' + line
                lines.append(line)
            path = ssh / "authorized_keys"
            path.write_text("\n".join(lines) + "\n")
            path.chmod(0o600)
    (root / "etc/passwd").write_text("\n".join(passwd) + "\n")
    (root / "etc/group").write_text("\n".join(group) + "\n")
    return all_keys


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one run, output discarded."""
    start = time.perf_counter()
    with open(os.devnull, "wb") as null:
        proc = subprocess.Popen(cmd, stdout=null, stderr=subprocess.PIPE, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = proc.stderr.read().decode()[-500:] if proc.stderr else ""
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}): {tail}")
    return elapsed, usage.ru_maxrss


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", help="build the fake root here (kept); default: a temp dir, removed")
    args = parser.parse_args()
    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        raise SystemExit("ssh-keygen not found (apt-get install openssh-client)")
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench-scan-"))
    root = work / "root"
    try:
        t0 = time.perf_counter()
        if root.exists():
            shutil.rmtree(root)
        all_keys = build_root(root, args.users, args.keys)
        print(f"built fake root: {args.users} users, {args.keys} keys in {time.perf_counter() - t0:.1f} s")
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        scan_cmd = [*AGENT, "scan", "--root", str(root), "--format", "json"]
        keygen_cmd = [keygen, "-l", "-f", str(all_keys)]
        timed(scan_cmd, env)  # warm the page cache for both
        timed(keygen_cmd)
        scans, keygens, rss = [], [], []
        for _ in range(args.runs):  # interleaved, so both see the same machine state
            s, r = timed(scan_cmd, env)
            k, _ = timed(keygen_cmd)
            scans.append(s)
            keygens.append(k)
            rss.append(r)
        starts = sorted(timed([*AGENT, "--version"], env)[0] for _ in range(20))
        scan_med, keygen_med = statistics.median(scans), statistics.median(keygens)
        runs = ", ".join(f"{x:.3f}" for x in scans)
        print(f"sshklm-agent scan (json):  median {scan_med:.3f} s  (runs: {runs})")
        runs = ", ".join(f"{x:.3f}" for x in keygens)
        print(f"ssh-keygen -l:             median {keygen_med:.3f} s  (runs: {runs})")
        print(f"ratio scan/ssh-keygen:     {scan_med / keygen_med:.2f}  (target <= 1.0)")
        print(f"scan peak RSS:             {max(rss) / 1024:.0f} MB  (target < 300 MB)")
        print(
            f"--version start-up:        median {statistics.median(starts) * 1000:.0f} ms  (target < 150 ms)"
        )
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
