"""SSH wire encoding for building test blobs, written independently of agent.ssh.wire so the
tests do not check the agent's encoder with itself."""

from __future__ import annotations

import base64
import struct


def s(data: bytes | str) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return struct.pack(">I", len(raw)) + raw


def mpint(value: int, pad: int = 0) -> bytes:
    raw = value.to_bytes((value.bit_length() + 8) // 8, "big") if value else b""
    return s(b"\0" * pad + raw)


def b64(blob: bytes) -> str:
    return base64.b64encode(blob).decode()
