"""Answers the contract never gives, for tests of a client facing a hostile or broken server.

Each is a `HostileAnswer`: it writes its own bytes to the connection (status line, headers, body),
so it can do what `Response` cannot: redirect, send a body that is not JSON, announce or stream
hundreds of megabytes, dribble the headers or the body a byte at a time. The request is not
processed (nothing is applied). Used through `Faults.redirect_next`, `answer_next`,
`huge_answer_next` and `dribble_next` (and the matching /_test/faults/... endpoints).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

_REASONS = {200: "OK", 204: "No Content", 301: "Moved Permanently", 302: "Found", 303: "See Other",
            304: "Not Modified", 307: "Temporary Redirect", 308: "Permanent Redirect"}  # fmt: skip


class HostileAnswer(Protocol):
    status: int  # for the request log

    def write(self, out: BinaryIO, stop: threading.Event) -> None:
        """Write the whole answer (or as much as the client takes before it hangs up)."""


def _head(status: int, headers: Mapping[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Odd')}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass(frozen=True)
class RawAnswer:
    """Any status, headers and body, exactly as given (a 3xx with a Location, a 204, a 200 whose
    body is not JSON or not an object, a 304 nobody asked for, ...). Content-Length is added
    unless the headers carry one or `length=False`."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    length: bool = True

    def write(self, out: BinaryIO, stop: threading.Event) -> None:
        headers = dict(self.headers)
        if self.length and not any(k.lower() == "content-length" for k in headers):
            headers["Content-Length"] = str(len(self.body))
        headers.setdefault("Connection", "close")
        out.write(_head(self.status, headers))
        out.write(self.body)
        out.flush()


def redirect(status: int, location: str) -> RawAnswer:
    """A 3xx pointing elsewhere, with a small JSON body (what a proxy or a moved server sends)."""
    return RawAnswer(status, b'{"moved": true}', {"Location": location, "Content-Type": "application/json"})


@dataclass(frozen=True)
class HugeAnswer:
    """A 200 whose JSON body is `size` bytes (`{"instructions": ["AAAA...`), streamed in 64 KiB
    chunks; with `declare=False` no Content-Length (the end is the connection's close)."""

    size: int
    declare: bool = True
    status: int = 200

    def write(self, out: BinaryIO, stop: threading.Event) -> None:
        prefix, suffix = b'{"instructions": ["', b'"]}'
        headers = {"Content-Type": "application/json", "Connection": "close"}
        if self.declare:
            headers["Content-Length"] = str(self.size)
        out.write(_head(self.status, headers) + prefix)
        left = self.size - len(prefix) - len(suffix)
        chunk = b"A" * 65536
        while left > 0 and not stop.is_set():
            piece = chunk if left >= len(chunk) else chunk[:left]
            out.write(piece)
            left -= len(piece)
        out.write(suffix)
        out.flush()


@dataclass(frozen=True)
class DribbleAnswer:
    """A slow-loris answer: one byte every `interval` seconds, for ever (until the client hangs up
    or the server stops). `phase="body"`: complete headers announcing a 1 MiB body first;
    `phase="headers"`: the status line and then header bytes, never ending them."""

    interval: float
    phase: str = "body"
    status: int = 200

    def write(self, out: BinaryIO, stop: threading.Event) -> None:
        if self.phase == "body":
            out.write(
                _head(self.status, {"Content-Type": "application/json", "Content-Length": str(1 << 20)})
            )
            drip = b" "  # JSON allows leading blanks: the body never becomes invalid, only slow
        else:
            out.write(f"HTTP/1.1 {self.status} OK\r\nX-Slow: ".encode())
            drip = b"a"
        out.flush()
        while not stop.wait(self.interval):
            out.write(drip)
            out.flush()


def write_answer(answer: HostileAnswer, out: BinaryIO, stop: threading.Event) -> None:
    """Write `answer`; a client that hangs up (the point of several tests) is not an error."""
    with contextlib.suppress(OSError, ValueError):
        answer.write(out, stop)
