"""Fakes shared by the control unit tests: a clock, and a scripted control plane behind MockTransport.

(No tests here; named test_control_* to stay inside the control area's files.)
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt

from agent.control.backoff import BackoffPolicy
from agent.control.client import ApiClient

API_KEY = "sk_agent_UNIT_SECRET_KEY_0001"
BOOTSTRAP = "bt_UNIT_BOOTSTRAP_SECRET"
START = 1_800_000_000.0


class FakeClock:
    """Wall and monotonic time that only move when the code under test sleeps (or the test advances)."""

    def __init__(self, wall: float = START) -> None:
        self.wall = wall
        self.mono = 1000.0
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


def make_jwt(exp: float, kind: str, n: int) -> str:
    return jwt.encode(
        {"exp": int(exp), "typ": kind, "n": n}, "test-signing-key-of-sufficient-length", algorithm="HS256"
    )


@dataclass
class Seen:
    method: str
    path: str
    headers: httpx.Headers
    body: Any
    at: float
    raw_path: str


Handler = Callable[[httpx.Request, Any], httpx.Response | None]


@dataclass
class FakeServer:
    """A tiny control plane: issues JWTs, checks bearer tokens, and lets a test script failures.

    ``script`` maps a path prefix to a list of callables consumed one per matching request; a
    callable returning None falls through to the default behaviour.
    """

    clock: FakeClock
    api_key: str = API_KEY
    access_ttl: int = 900
    refresh_ttl: int = 604800
    seen: list[Seen] = field(default_factory=list)
    script: dict[str, list[Handler]] = field(default_factory=dict)
    valid_access: set[str] = field(default_factory=set)
    valid_refresh: set[str] = field(default_factory=set)
    issued: int = 0
    rotate_refresh: bool = True
    events: list[dict[str, Any]] = field(default_factory=list)
    bad_event_ids: set[str] = field(default_factory=set)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def client(self, **kwargs: Any) -> ApiClient:
        options: dict[str, Any] = {
            "api_key": self.api_key,
            "clock": self.clock.time,
            "monotonic": self.clock.monotonic,
            "sleep": self.clock.sleep,
            "rng": random.Random(7),
            "transport": self.transport(),
            "backoff": BackoffPolicy(base=1.0, cap=300.0, max_attempts=5),
        }
        options.update(kwargs)
        return ApiClient("https://cp.test", **options)

    def paths(self, method: str | None = None) -> list[str]:
        return [s.path for s in self.seen if method is None or s.method == method]

    def count(self, path: str) -> int:
        return sum(1 for s in self.seen if s.path == path)

    def _tokens(self) -> httpx.Response:
        self.issued += 1
        access = make_jwt(self.clock.wall + self.access_ttl, "access", self.issued)
        refresh = make_jwt(self.clock.wall + self.refresh_ttl, "refresh", self.issued)
        self.valid_access.add(access)
        self.valid_refresh.add(refresh)
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.access_ttl,
            "refresh_expires_in": self.refresh_ttl,
        }
        if self.rotate_refresh or self.issued == 1:
            body["refresh_token"] = refresh
        return httpx.Response(200, json=body)

    def handle(self, request: httpx.Request) -> httpx.Response:
        body: Any = json.loads(request.content) if request.content else None
        self.seen.append(
            Seen(
                request.method,
                request.url.path,
                request.headers,
                body,
                self.clock.mono,
                request.url.raw_path.decode(),
            )
        )
        for prefix, handlers in self.script.items():
            if request.url.path.startswith(prefix) and handlers:
                answer = handlers.pop(0)(request, body)
                if answer is not None:
                    return answer
        path = request.url.path
        if path == "/v1/auth/token":
            if body.get("api_key") != self.api_key:
                return error(401, "AUTH_INVALID", "invalid API key")
            return self._tokens()
        if path == "/v1/auth/refresh":
            if body.get("refresh_token") not in self.valid_refresh:
                return error(401, "AUTH_INVALID", "invalid refresh token")
            return self._tokens()
        if path == "/v1/agents/enroll":
            if request.headers.get("Authorization") != f"Bearer {BOOTSTRAP}":
                return error(401, "AUTH_INVALID", "bad bootstrap token")
            return httpx.Response(
                201, json={"host_id": "hst_1", "agent_id": "agt_1", "api_key": self.api_key}
            )
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.valid_access:
            return error(401, "AUTH_INVALID", "invalid access token")
        try:
            claims = jwt.decode(auth[7:], options={"verify_signature": False})
        except jwt.PyJWTError:
            return error(401, "AUTH_INVALID", "bad token")
        if claims["exp"] <= self.clock.wall:
            return error(401, "AUTH_INVALID", "expired")
        if path.endswith("/events"):
            for index, event in enumerate(body["events"]):
                if event["id"] in self.bad_event_ids:
                    return error(
                        422, "VALIDATION_ERROR", "invalid event", {"index": index, "reason": "bad type"}
                    )
            self.events.extend(body["events"])
            return httpx.Response(200, json={"accepted": len(body["events"]), "duplicates": 0})
        if path.endswith("/instructions"):
            return httpx.Response(200, json={"instructions": ["a.b.c"], "poll_interval": 30})
        if path.endswith("/policy"):
            if request.headers.get("If-None-Match") == '"v3"':
                return httpx.Response(304)
            return httpx.Response(200, json={"version": 3}, headers={"ETag": '"v3"'})
        return httpx.Response(200, json={"ok": True, "path": path})


def error(
    status: int,
    code: str,
    message: str = "error",
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return httpx.Response(
        status,
        json={"error": {"code": code, "message": message, "details": details or {}}},
        headers=headers,
    )


def always(response: Callable[[], httpx.Response], n: int) -> list[Handler]:
    return [lambda _req, _body: response() for _ in range(n)]
