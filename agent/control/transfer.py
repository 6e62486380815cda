"""One HTTP exchange, bounded: a deadline on its total time and a cap on the answer's size.

httpx's timeouts are per operation: a read timeout restarts with every byte, so a server sending
one byte a second (in the headers or the body) would hold a caller for as long as it likes. And a
response read whole costs as much memory as the server sends. The client therefore:

- runs each attempt under a deadline (`deadline`, a thread-local instant): the transport's network
  backend (`DeadlineBackend`) gives every connect, TLS handshake, read and write at most the time
  left, and fails the call (httpcore's ReadTimeout/WriteTimeout/ConnectTimeout, so httpx raises its
  own TransportError) once it has passed. Writes go out in 16 KiB slices so a slow reader cannot
  stretch one write past it either.
- streams the answer and keeps at most the call's cap (`read_capped`): a Content-Length above it is
  refused before the body is read, and reading stops at the first byte past it (the connection is
  closed, not drained). Memory does not grow with what the server sends. Answers are asked for
  uncompressed (`Accept-Encoding: identity`) and a compressed one is refused: a decompressor could
  turn a small answer into a large one before any cap sees it.

`BoundedTransport` is httpx's own HTTPTransport with its connection pool rebuilt over that network
backend (httpx does not take a backend as a parameter; the pinned version is covered by the
loopback tests of the deadline).
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import httpcore
import httpx

from agent.control.errors import ANSWER_TOO_LARGE, ApiError

WRITE_SLICE = 16 * 1024

_current = threading.local()


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Every network operation of this thread within the block ends by `seconds` from now."""
    previous = getattr(_current, "at", None)
    _current.at = time.monotonic() + seconds
    try:
        yield
    finally:
        _current.at = previous


DEADLINE_PASSED = "the call's deadline passed"

_T = TypeVar("_T")


def _bounded(timeout: float | None, error: type[Exception]) -> tuple[float | None, bool]:
    """(`timeout` shortened to the time left before this thread's deadline, whether the deadline
    is what bounds it); past the deadline, `error`."""
    at: float | None = getattr(_current, "at", None)
    if at is None:
        return timeout, False
    left = at - time.monotonic()
    if left <= 0:
        raise error(DEADLINE_PASSED)
    if timeout is None or left < timeout:
        return left, True
    return timeout, False


def _within_deadline(
    operation: Callable[[float | None], _T], timeout: float | None, error: type[Exception]
) -> _T:
    """Run `operation(timeout)` with the timeout the deadline leaves; a timeout that the deadline
    imposed is reported as the deadline's."""
    bounded, by_deadline = _bounded(timeout, error)
    try:
        return operation(bounded)
    except error:
        if by_deadline:
            raise error(DEADLINE_PASSED) from None
        raise


class DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return _within_deadline(lambda t: self._inner.read(max_bytes, t), timeout, httpcore.ReadTimeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        for start in range(0, len(buffer), WRITE_SLICE):
            self._write_piece(buffer[start : start + WRITE_SLICE], timeout)

    def _write_piece(self, piece: bytes, timeout: float | None) -> None:
        _within_deadline(lambda t: self._inner.write(piece, t), timeout, httpcore.WriteTimeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        inner = _within_deadline(
            lambda t: self._inner.start_tls(ssl_context, server_hostname, t), timeout, httpcore.ConnectTimeout
        )
        return DeadlineStream(inner)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = _within_deadline(
            lambda t: self._inner.connect_tcp(host, port, t, local_address, socket_options),
            timeout,
            httpcore.ConnectTimeout,
        )
        return DeadlineStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        stream = _within_deadline(
            lambda t: self._inner.connect_unix_socket(path, t, socket_options),
            timeout,
            httpcore.ConnectTimeout,
        )
        return DeadlineStream(stream)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class BoundedTransport(httpx.HTTPTransport):
    """httpx's HTTP/1.1 transport whose connections keep this thread's `deadline`."""

    def __init__(self, *, verify: ssl.SSLContext, limits: httpx.Limits) -> None:
        super().__init__(verify=verify, limits=limits, retries=0)
        self._pool = httpcore.ConnectionPool(
            ssl_context=verify,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            retries=0,
            network_backend=DeadlineBackend(),
        )


def _too_large(limit: int, status: int) -> ApiError:
    return ApiError(ANSWER_TOO_LARGE, f"answer larger than {limit} bytes: not read", {"limit": limit}, status)


def read_capped(response: httpx.Response, limit: int, *, truncate: bool = False) -> bytes:
    """At most `limit` bytes of a streamed answer. Past the limit: ApiError ANSWER_TOO_LARGE, or
    with `truncate` (error answers, read only for their message) the first `limit` bytes. The
    caller closes the response; the rest of the body is never read."""
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise ApiError(
            ANSWER_TOO_LARGE,
            "answer is compressed though identity was asked: not read",
            {},
            response.status_code,
        )
    declared = response.headers.get("Content-Length", "").strip()
    if declared.isdigit() and len(declared) < 20 and int(declared) > limit and not truncate:
        raise _too_large(limit, response.status_code)
    body = bytearray()
    for chunk in _chunks(response):
        body += chunk
        if len(body) > limit:
            if truncate:
                return bytes(body[:limit])
            raise _too_large(limit, response.status_code)
    return bytes(body)


def _chunks(response: httpx.Response) -> Iterable[bytes]:
    """The raw body as it arrives; an answer already in memory (httpx.MockTransport in unit tests)
    as one chunk."""
    try:
        return [response.content]
    except httpx.ResponseNotRead:
        return response.iter_raw()
