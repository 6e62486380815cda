"""Fault injection for tests: fail, delay or drop matching requests, or answer them as a hostile or
broken server would (tests/controlplane/hostile.py). Thread-safe."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

from .hostile import DribbleAnswer, HostileAnswer, HugeAnswer, RawAnswer, redirect


@dataclass
class FailRule:
    remaining: int
    status: int
    code: str | None
    path_prefix: str | None
    retry_after: int | float | str | None


@dataclass
class DropRule:
    remaining: int
    path_prefix: str | None
    after_processing: bool


@dataclass
class HostileRule:
    remaining: int
    path_prefix: str | None
    answer: HostileAnswer


@dataclass(frozen=True)
class FaultPlan:
    delay: float
    drop: DropRule | None
    fail: FailRule | None
    hostile: HostileAnswer | None = None


def _matches(prefix: str | None, path: str) -> bool:
    return prefix is None or path.startswith(prefix)


class Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fails: list[FailRule] = []
        self._drops: list[DropRule] = []
        self._delays: dict[str | None, float] = {}
        self._hostile: list[HostileRule] = []
        # A proxy in front that cuts idle connections: a held (§6.1) request is dropped, unanswered,
        # after this many seconds. None: no such proxy.
        self.cut_idle_s: float | None = None

    def fail_next(
        self,
        n: int,
        status: int = 503,
        code: str | None = None,
        path_prefix: str | None = None,
        retry_after: int | float | str | None = None,
    ) -> None:
        """The next n matching requests get `status` (error body `code`) without being processed."""
        with self._lock:
            self._fails.append(FailRule(n, status, code, path_prefix, retry_after))

    def delay(self, seconds: float, path_prefix: str | None = None) -> None:
        """Every matching request waits `seconds` before it is processed, until set to 0 or cleared."""
        with self._lock:
            if seconds > 0:
                self._delays[path_prefix] = seconds
            else:
                self._delays.pop(path_prefix, None)

    def drop_next(self, n: int, path_prefix: str | None = None, after_processing: bool = False) -> None:
        """Close the connection of the next n matching requests without answering.

        By default before processing (nothing applied); after_processing=True applies the request and
        then loses the answer (what a client sees when a response times out).
        """
        with self._lock:
            self._drops.append(DropRule(n, path_prefix, after_processing))

    # -- answers the contract never gives (each request matched is not processed) --

    def _answer_next(self, n: int, path_prefix: str | None, answer: HostileAnswer) -> None:
        with self._lock:
            self._hostile.append(HostileRule(n, path_prefix, answer))

    def redirect_next(
        self,
        n: int,
        status: int = 302,
        location: str = "https://elsewhere.example:8443/v1/moved?token=not-for-logs",
        path_prefix: str | None = None,
    ) -> None:
        """The next n matching requests are redirected (`status` 3xx with `Location`)."""
        self._answer_next(n, path_prefix, redirect(status, location))

    def answer_next(
        self,
        n: int,
        status: int,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        path_prefix: str | None = None,
        length: bool = True,
    ) -> None:
        """The next n matching requests get exactly this status, headers and body (a 204, a 200
        that is not JSON or not an object or has fields of the wrong types, a stray 304...)."""
        self._answer_next(n, path_prefix, RawAnswer(status, body, dict(headers or {}), length))

    def huge_answer_next(
        self, n: int, size: int, path_prefix: str | None = None, declare: bool = True
    ) -> None:
        """The next n matching requests get a 200 of `size` bytes of JSON (declared in
        Content-Length, or not: then it ends when the connection closes)."""
        self._answer_next(n, path_prefix, HugeAnswer(size, declare))

    def dribble_next(
        self, n: int, interval: float = 1.0, path_prefix: str | None = None, phase: str = "body"
    ) -> None:
        """The next n matching requests are answered one byte every `interval` seconds, for ever:
        the body (`phase="body"`, after complete headers) or the headers themselves."""
        if phase not in ("body", "headers"):
            raise ValueError("phase must be body or headers")
        self._answer_next(n, path_prefix, DribbleAnswer(interval, phase))

    # -- a proxy in front --

    def cut_idle(self, seconds: float | None) -> None:
        """Drop every request held longer than `seconds` without an answer (None: never), as a proxy
        with an idle timeout does."""
        self.cut_idle_s = seconds

    def clear(self) -> None:
        self.cut_idle_s = None
        with self._lock:
            self._fails.clear()
            self._drops.clear()
            self._delays.clear()
            self._hostile.clear()

    def take(self, path: str) -> FaultPlan:
        """Consume at most one rule for this request (a hostile answer wins, then a drop, then a
        fail) and return the plan."""
        with self._lock:
            delay = max((s for p, s in self._delays.items() if _matches(p, path)), default=0.0)
            hostile = next(
                (r for r in self._hostile if r.remaining > 0 and _matches(r.path_prefix, path)), None
            )
            if hostile is not None:
                hostile.remaining -= 1
                self._hostile = [r for r in self._hostile if r.remaining > 0]
                return FaultPlan(delay, None, None, hostile.answer)
            drop = next((r for r in self._drops if r.remaining > 0 and _matches(r.path_prefix, path)), None)
            fail = None
            if drop is not None:
                drop.remaining -= 1
            else:
                fail = next(
                    (r for r in self._fails if r.remaining > 0 and _matches(r.path_prefix, path)), None
                )
                if fail is not None:
                    fail.remaining -= 1
            self._drops = [r for r in self._drops if r.remaining > 0]
            self._fails = [r for r in self._fails if r.remaining > 0]
            return FaultPlan(delay, drop, fail)
