"""SSH wire format (RFC 4251 section 5) and OpenSSH's base64: the agent's one decoder of SSH data.

Pure functions over bytes. Every key, certificate, signature and identity file goes through here.

Readers take `(buf, pos)` and return `(value, next_pos)` instead of living on a reader object:
the key parser calls them hundreds of thousands of times per scan and a plain function call is
the cheapest thing Python offers. They check lengths the way OpenSSH's sshbuf does and raise
`WireError` with a fixed phrase, never the data.

`b64decode` is OpenSSH's `b64_pton`, used both for the key word of an authorized_keys / .pub line
(`sshkey_read`) and for the body of an openssh-key-v1 identity file (`private2_uudecode`):
whitespace (C `isspace`: space, tab, LF, VT, FF, CR) is skipped anywhere, padding is required,
nothing but whitespace may follow it, and the unused bits of the last quantum must be zero.
Checked against `ssh-keygen -l` (OpenSSH 9.2) in tests/integration/test_keygen_oracle.py.
"""

from __future__ import annotations

import binascii
from typing import Final

__all__ = [
    "MAX_BIGNUM_BYTES",
    "WireError",
    "b64decode",
    "b64encode",
    "bignum",
    "canonical_mpint",
    "cstring",
    "mpint_bytes",
    "put_mpint",
    "put_string",
    "string",
    "uint",
]

MAX_BIGNUM_BYTES: Final = 16384 // 8  # SSHBUF_MAX_BIGNUM

_ISSPACE: Final = b" \t\n\x0b\x0c\r"
_a2b = binascii.a2b_base64
_b2a = binascii.b2a_base64


class WireError(ValueError):
    """Malformed SSH data. `reason` is a short fixed phrase; it never contains the data."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- base64 ----------------------------------------------------------------------------------------


def b64decode(text: bytes) -> bytes:
    """OpenSSH's b64_pton: exactly the canonical encoding of some bytes, whitespace anywhere ignored.

    `strict_mode` refuses a missing pad, misplaced pads and data after them, but still accepts
    non-zero pad bits (OpenSSH refuses them: a subliminal channel), so the result is re-encoded
    and compared. Whitespace is the rare case: it is removed only when the first attempt fails.
    """
    try:
        data = _a2b(text, strict_mode=True)
    except (binascii.Error, ValueError):
        stripped = text.translate(None, _ISSPACE)
        if stripped == text:
            raise WireError("invalid base64") from None
        return b64decode(stripped)
    if _b2a(data, newline=False) != text:
        raise WireError("invalid base64")
    return data


def b64encode(data: bytes) -> str:
    """Padded standard base64, as sshkey_write prints a key."""
    return _b2a(data, newline=False).decode("ascii")


# --- readers ---------------------------------------------------------------------------------------


def string(buf: bytes, pos: int) -> tuple[bytes, int]:
    """sshbuf_get_string: a uint32 length and that many bytes."""
    end = pos + 4
    if end > len(buf):
        raise WireError("truncated key data")
    stop = end + int.from_bytes(buf[pos:end], "big")
    if stop > len(buf):
        raise WireError("truncated key data")
    return buf[end:stop], stop


def cstring(buf: bytes, pos: int) -> tuple[bytes, int]:
    """sshbuf_get_cstring: a string in which a NUL may only be the last byte (and is dropped)."""
    data, pos = string(buf, pos)
    z = data.find(b"\0")
    if z != -1:
        if z != len(data) - 1:
            raise WireError("invalid string in key data")
        data = data[:-1]
    return data, pos


def uint(buf: bytes, pos: int, size: int) -> tuple[int, int]:
    """A big-endian unsigned integer of `size` bytes (1, 4 or 8 on the wire)."""
    end = pos + size
    if end > len(buf):
        raise WireError("truncated key data")
    return int.from_bytes(buf[pos:end], "big"), end


def mpint_bytes(buf: bytes, pos: int) -> tuple[bytes, int]:
    """The raw bytes of an mpint, checked as sshbuf_get_bignum2 checks them: not negative, at
    most 16384 bits (one leading zero byte allowed on top), redundant leading zeros tolerated."""
    raw, pos = string(buf, pos)
    if raw:
        if raw[0] & 0x80:
            raise WireError("negative number in key")
        n = len(raw)
        if n > MAX_BIGNUM_BYTES + 1 or (n == MAX_BIGNUM_BYTES + 1 and raw[0] != 0):
            raise WireError("number too large in key")
    return raw, pos


def bignum(buf: bytes, pos: int) -> tuple[int, int]:
    """sshbuf_get_bignum2 as an int."""
    raw, pos = mpint_bytes(buf, pos)
    return int.from_bytes(raw, "big"), pos


def canonical_mpint(raw: bytes) -> bool:
    """Minimal encoding: no leading zero byte unless the next byte's top bit needs it."""
    return not raw or raw[0] != 0 or (len(raw) > 1 and raw[1] >= 0x80)


# --- writers ---------------------------------------------------------------------------------------


def put_string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def put_mpint(value: int) -> bytes:
    """Canonical mpint: minimal length, a leading zero byte only when the top bit is set."""
    if value < 0:
        raise WireError("negative mpint")
    if value == 0:
        return b"\0\0\0\0"
    raw = value.to_bytes((value.bit_length() + 8) // 8, "big")  # one spare bit keeps the sign clear
    return len(raw).to_bytes(4, "big") + raw
