"""SSH wire format (RFC 4251 section 5) and OpenSSH's strict base64.

Pure functions over bytes: no I/O. Every reader raises `WireError` on malformed
input so callers can turn it into a per-line "invalid" reason without leaking content.
"""

from __future__ import annotations

import base64
import binascii
import struct

_B64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


class WireError(ValueError):
    """Malformed SSH wire data. The message never contains the data itself."""


def b64decode_strict(text: bytes | str) -> bytes:
    """Decode base64 exactly as OpenSSH's b64_pton does.

    Padding is required, characters outside the alphabet are refused and the unused
    bits of the last quantum must be zero. Python's decoder accepts non-zero pad bits,
    so the result is re-encoded and compared.
    """
    raw = text.encode("ascii", "strict") if isinstance(text, str) else text
    if not raw or len(raw) % 4 != 0:
        raise WireError("base64 length is not a multiple of 4")
    if not _B64_ALPHABET.issuperset(raw):
        raise WireError("invalid base64 character")
    try:
        decoded = base64.b64decode(raw, validate=True)
    except binascii.Error as exc:
        raise WireError("invalid base64") from exc
    if base64.b64encode(decoded) != raw:
        raise WireError("non-canonical base64 (non-zero pad bits)")
    return decoded


class Reader:
    """Sequential reader over an SSH wire buffer."""

    __slots__ = ("_buf", "_pos")

    def __init__(self, buf: bytes) -> None:
        self._buf = buf
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._buf) - self._pos

    def _take(self, n: int) -> bytes:
        if n < 0 or self._pos + n > len(self._buf):
            raise WireError("truncated data")
        out = self._buf[self._pos : self._pos + n]
        self._pos += n
        return out

    def uint8(self) -> int:
        return self._take(1)[0]

    def uint32(self) -> int:
        value: int = struct.unpack(">I", self._take(4))[0]
        return value

    def uint64(self) -> int:
        value: int = struct.unpack(">Q", self._take(8))[0]
        return value

    def string(self) -> bytes:
        return self._take(self.uint32())

    def cstring(self) -> str:
        """A string that must be valid UTF-8 text (key type names, principals)."""
        data = self.string()
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WireError("string is not valid UTF-8") from exc

    def mpint(self) -> int:
        """A two's-complement mpint; negative values are refused (no SSH key uses them)."""
        data = self.string()
        if data and data[0] & 0x80:
            raise WireError("negative mpint")
        return int.from_bytes(data, "big")

    def rest(self) -> bytes:
        return self._take(self.remaining)

    def expect_end(self) -> None:
        if self.remaining:
            raise WireError("trailing bytes after key data")


def put_uint32(value: int) -> bytes:
    return struct.pack(">I", value)


def put_string(data: bytes | str) -> bytes:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return struct.pack(">I", len(raw)) + raw


def put_mpint(value: int) -> bytes:
    """Canonical mpint encoding: minimal length, a leading zero byte only when the top bit is set."""
    if value < 0:
        raise WireError("negative mpint")
    if value == 0:
        return put_string(b"")
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    if raw[0] & 0x80:
        raw = b"\x00" + raw
    return put_string(raw)
