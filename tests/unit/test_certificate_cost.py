"""A certificate signed by a 16,384-bit RSA CA (OpenSSH's own limit: SSHBUF_MAX_BIGNUM, so it is a
key sshd accepts and discovery must too) costs a full RSA verification per parse, and a user's file
is parsed on every rescan and every rewrite (issue 11). Verdicts are remembered (keyed by a digest
of the CA, the signature and the signed bytes): a line parsed again costs a hash, not an RSA
operation. The figures print; no timed assertion (benchmarks/bench_ca_cost.py measures)."""

from __future__ import annotations

import base64
import os
import secrets
import struct
import time

import pytest

import agent.ssh.signature as signature_module
from agent.ssh.authorized_keys import parse_authorized_keys


def s(data: bytes | str) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return struct.pack(">I", len(raw)) + raw


def mpint(n: int) -> bytes:
    raw = n.to_bytes((n.bit_length() + 8) // 8, "big")
    return s(raw)


def big_ca_certificate_line(bits: int = 16384, exponent_bits: int = 64) -> bytes:
    """An ed25519 user certificate 'signed' by a random `bits`-bit RSA CA (its signature does not
    verify: verifying it costs the same, and a user needs no real CA to make the agent pay)."""
    n = secrets.randbits(bits) | (1 << (bits - 1)) | 1
    e = secrets.randbits(exponent_bits) | (1 << (exponent_bits - 1)) | 1
    ca_blob = s("ssh-rsa") + mpint(e) + mpint(n)
    tbs = (
        s("ssh-ed25519-cert-v01@openssh.com")
        + s(os.urandom(32))
        + s(os.urandom(32))
        + struct.pack(">QI", 1, 1)
        + s("id")
        + s(s("alice"))
        + struct.pack(">QQ", 0, 2**64 - 1)
        + s(b"")
        + s(b"")
        + s(b"")
        + s(ca_blob)
    )
    blob = tbs + s(s("rsa-sha2-512") + s(os.urandom(bits // 8 - 1)))
    return b"ssh-ed25519-cert-v01@openssh.com " + base64.b64encode(blob) + b" big-ca\n"


def test_a_line_parsed_again_is_not_verified_again(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [big_ca_certificate_line() for _ in range(5)]
    data = b"".join(lines)
    calls: list[int] = []
    real = signature_module._verify

    def counting(*args: object) -> bool:
        calls.append(1)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(signature_module, "_verify", counting)
    started = time.perf_counter()
    first = parse_authorized_keys(data)
    cold = time.perf_counter() - started
    assert len(calls) == 5
    started = time.perf_counter()
    for _ in range(10):  # ten rescans of the unchanged file
        again = parse_authorized_keys(data)
    warm = (time.perf_counter() - started) / 10
    print(
        f"\n5 certificates by 16384-bit RSA CAs: {cold * 1000:.1f} ms cold, {warm * 1000:.2f} ms parsed again"
    )
    assert len(calls) == 5  # not one more RSA operation
    assert [ln.kind for ln in again] == [ln.kind for ln in first] == ["invalid"] * 5
    assert [ln.error for ln in again] == [ln.error for ln in first]


def test_the_verdict_is_keyed_by_the_signed_bytes_and_the_signature() -> None:
    line = big_ca_certificate_line(bits=2048, exponent_bits=17)
    assert parse_authorized_keys(line)[0].kind == "invalid"
    # The same bytes with one bit of the signature flipped: a new verdict, not the cached one.
    blob = bytearray(base64.b64decode(line.split()[1]))
    blob[-1] ^= 1
    other = b"ssh-ed25519-cert-v01@openssh.com " + base64.b64encode(bytes(blob)) + b"\n"
    assert signature_module._memo_key is not None  # the memo exists
    assert parse_authorized_keys(other)[0].kind == "invalid"


def test_the_memo_is_bounded() -> None:
    for _ in range(signature_module.MEMO_ENTRIES + 50):
        signature_module._remember(os.urandom(32), False)
    assert len(signature_module._memo) == signature_module.MEMO_ENTRIES
