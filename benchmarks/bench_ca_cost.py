"""What certificates signed by expensive CAs cost a parse of a user's authorized_keys, cold and
parsed again (issue 11). Prints figures; asserts nothing.

A user can fill a 1 MiB authorized_keys (discovery.max_file_bytes) with certificate lines whose CA
is an RSA key OpenSSH accepts but that is slow to verify: a 16,384-bit modulus (OpenSSH's limit,
SSHBUF_MAX_BIGNUM) with a 64-bit exponent (the largest OpenSSL takes above 3,072 bits), or a
3,072-bit modulus with a 3,071-bit exponent (OpenSSL takes any exponent up to 3,072 bits). The
signatures need not verify: checking them costs the same. Every rescan and every rewrite parses the
file again; signature verdicts are remembered (agent/ssh/signature.py), so only the first parse pays.

    .venv/bin/python benchmarks/bench_ca_cost.py [--mib 1.0]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.ssh.authorized_keys import parse_authorized_keys
from tests.unit.test_certificate_cost import big_ca_certificate_line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=float, default=1.0, help="file size (default: 1 MiB)")
    args = parser.parse_args()
    budget = int(args.mib * (1 << 20))
    for label, bits, e_bits in (
        ("16384-bit RSA CA, 64-bit e", 16384, 64),
        ("3072-bit RSA CA, 3071-bit e", 3072, 3071),
        ("2048-bit RSA CA, e=65537-sized", 2048, 17),
    ):
        one = big_ca_certificate_line(bits, e_bits)
        started = time.perf_counter()
        parse_authorized_keys(one)
        single = time.perf_counter() - started
        lines: list[bytes] = []
        size = 0
        while size + len(one) <= budget:
            lines.append(big_ca_certificate_line(bits, e_bits))
            size += len(lines[-1])
        data = b"".join(lines)
        started = time.perf_counter()
        parse_authorized_keys(data)
        cold = time.perf_counter() - started
        started = time.perf_counter()
        parse_authorized_keys(data)
        warm = time.perf_counter() - started
        print(
            f"{label}: one line {single * 1000:.1f} ms; a {size / 2**20:.2f} MiB file of {len(lines)} lines: "
            f"{cold:.2f} s first parse, {warm * 1000:.1f} ms parsed again"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
