"""agent.ssh.wire: the one decoder of SSH data (b64_pton base64, sshbuf readers, canonical writers).

The rules themselves are checked against ssh-keygen in tests/integration/test_keygen_oracle.py;
these tests pin the edges without the oracle.
"""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.ssh.wire import (
    MAX_BIGNUM_BYTES,
    WireError,
    b64decode,
    b64encode,
    bignum,
    canonical_mpint,
    cstring,
    mpint_bytes,
    put_mpint,
    put_string,
    string,
    uint,
)
from tests.sshwire import mpint, s


@given(st.binary(max_size=200))
def test_base64_round_trip(data: bytes) -> None:
    assert b64decode(base64.b64encode(data)) == data
    assert b64encode(data) == base64.b64encode(data).decode()


@given(st.binary(min_size=1, max_size=60), st.data())
def test_whitespace_anywhere_is_skipped(data: bytes, draw: st.DataObject) -> None:
    token = bytearray(base64.b64encode(data))
    for _ in range(draw.draw(st.integers(1, 4))):
        at = draw.draw(st.integers(0, len(token)))
        token[at:at] = draw.draw(st.sampled_from([b" ", b"\t", b"\n", b"\v", b"\f", b"\r"]))
    assert b64decode(bytes(token)) == data


@pytest.mark.parametrize(
    "token",
    [
        b"QUJD=",  # a pad after a full quantum
        b"QUI",  # padding missing
        b"QUI=QUJD",  # data after the padding
        b"QUJ=",  # non-zero pad bits ("AB" is QUI=)
        b"QQ==A",
        b"QU!D",  # not base64
        b"QUJD\0",  # NUL is not whitespace
        "QUJDé".encode(),
    ],
)
def test_refused_tokens(token: bytes) -> None:
    with pytest.raises(WireError) as info:
        b64decode(token)
    assert info.value.reason == "invalid base64"


def test_readers_walk_a_buffer() -> None:
    buf = s(b"ssh-ed25519") + (7).to_bytes(4, "big") + mpint(0x80) + (1 << 40).to_bytes(8, "big")
    name, pos = string(buf, 0)
    count, pos = uint(buf, pos, 4)
    value, pos = bignum(buf, pos)
    big, pos = uint(buf, pos, 8)
    assert (name, count, value, big, pos) == (b"ssh-ed25519", 7, 0x80, 1 << 40, len(buf))


@pytest.mark.parametrize(
    "buf",
    [b"", b"\0\0\0", b"\0\0\0\x05abcd", b"\xff\xff\xff\xffx"],
)
def test_truncated_strings(buf: bytes) -> None:
    with pytest.raises(WireError, match="truncated key data"):
        string(buf, 0)


def test_cstring_allows_only_a_final_nul() -> None:
    assert cstring(s(b"abc\0"), 0) == (b"abc", 8)
    with pytest.raises(WireError, match="invalid string"):
        cstring(s(b"a\0bc"), 0)


def test_mpint_limits_follow_sshbuf_get_bignum2() -> None:
    assert mpint_bytes(s(b"\0\0\x01"), 0)[0] == b"\0\0\x01"  # redundant zeros tolerated
    with pytest.raises(WireError, match="negative"):
        mpint_bytes(s(b"\x80"), 0)
    assert bignum(s(b"\0" + b"\xff" * MAX_BIGNUM_BYTES), 0)[0] == (1 << 16384) - 1
    with pytest.raises(WireError, match="too large"):
        mpint_bytes(s(b"\x01" + b"\0" * MAX_BIGNUM_BYTES), 0)


@given(st.integers(min_value=0, max_value=1 << 4200))
def test_put_mpint_is_canonical_and_read_back(value: int) -> None:
    encoded = put_mpint(value)
    assert encoded == mpint(value)
    raw, _ = mpint_bytes(encoded, 0)
    assert canonical_mpint(raw)
    assert bignum(encoded, 0) == (value, len(encoded))


def test_put_string_and_negative_mpint() -> None:
    assert put_string(b"abc") == s(b"abc")
    with pytest.raises(WireError):
        put_mpint(-1)


def test_errors_never_carry_the_data() -> None:
    secret = b"SECRET-BYTES"
    for call in (lambda: b64decode(secret + b"!"), lambda: cstring(s(b"x\0" + secret), 0)):
        with pytest.raises(WireError) as info:
            call()
        assert b"SECRET" not in repr(info.value).encode()
