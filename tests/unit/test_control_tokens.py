from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest

from agent.control.errors import ApiError
from agent.control.tokens import TokenManager, jwt_expiry, token_set_from_response
from tests.unit.test_control_support import START, FakeClock, make_jwt


def test_jwt_expiry_reads_exp_without_verifying() -> None:
    assert jwt_expiry(make_jwt(START + 900, "access", 1)) == START + 900
    assert jwt_expiry("opaque-token") is None
    assert jwt_expiry("a.b.c") is None


def test_token_set_prefers_jwt_exp_and_falls_back_to_expires_in() -> None:
    access = make_jwt(START + 300, "access", 1)
    tokens = token_set_from_response(
        {"access_token": access, "refresh_token": "r1", "expires_in": 900}, START
    )
    assert tokens.access_expires_at == START + 300
    opaque = token_set_from_response(
        {"access_token": "opaque", "expires_in": 60, "refresh_expires_in": 100}, START, previous_refresh="r0"
    )
    assert opaque.access_expires_at == START + 60
    assert opaque.refresh_token == "r0"  # no new refresh token: keep the previous one
    assert opaque.refresh_expires_at == START + 100
    with pytest.raises(ApiError):
        token_set_from_response({"token_type": "Bearer"}, START)


def test_token_set_repr_hides_tokens() -> None:
    tokens = token_set_from_response(
        {"access_token": "ACCESS_SECRET", "refresh_token": "REFRESH_SECRET"}, START
    )
    assert "SECRET" not in repr(tokens)


class FakeIssuer:
    def __init__(self, clock: FakeClock, delay: float = 0.0) -> None:
        self.clock = clock
        self.calls: list[str] = []
        self.delay = delay
        self.refuse_key = False
        self.refuse_refresh = False
        self.n = 0
        self.ttl = 900
        self.lock = threading.Lock()

    def post(self, path: str, body: Mapping[str, Any]) -> Mapping[str, Any]:
        with self.lock:
            self.calls.append(path)
        if self.delay:
            time.sleep(self.delay)
        if path.endswith("/token") and self.refuse_key:
            raise ApiError("AUTH_INVALID", "invalid API key", status=401)
        if path.endswith("/refresh") and self.refuse_refresh:
            raise ApiError("AUTH_INVALID", "refresh expired", status=401)
        with self.lock:
            self.n += 1
            n = self.n
        return {
            "access_token": make_jwt(self.clock.wall + self.ttl, "access", n),
            "refresh_token": make_jwt(self.clock.wall + 604800, "refresh", n),
        }


def test_concurrent_callers_share_one_refresh() -> None:
    clock = FakeClock()
    issuer = FakeIssuer(clock, delay=0.05)
    manager = TokenManager("sk_key", issuer.post, clock=clock.time)
    manager.access_token()
    clock.advance(900 - 30)  # inside the refresh margin
    results: list[str] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        results.append(manager.access_token())

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert issuer.calls == ["/v1/auth/token", "/v1/auth/refresh"]
    assert len(set(results)) == 1


def test_concurrent_401s_on_the_same_token_share_one_renewal() -> None:
    clock = FakeClock()
    issuer = FakeIssuer(clock, delay=0.05)
    manager = TokenManager("sk_key", issuer.post, clock=clock.time)
    rejected = manager.access_token()
    barrier = threading.Barrier(6)
    results: list[str] = []

    def worker() -> None:
        barrier.wait()
        results.append(manager.reject(rejected))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert issuer.calls.count("/v1/auth/refresh") == 1
    assert rejected not in results and len(set(results)) == 1


def test_expired_refresh_token_is_not_sent_reauth_instead() -> None:
    clock = FakeClock()
    issuer = FakeIssuer(clock)
    manager = TokenManager("sk_key", issuer.post, clock=clock.time)
    manager.access_token()
    clock.advance(604800 + 1)
    manager.access_token()
    assert issuer.calls == ["/v1/auth/token", "/v1/auth/token"]


def test_auth_invalid_pause_and_set_api_key_clears_it() -> None:
    clock = FakeClock()
    issuer = FakeIssuer(clock)
    issuer.refuse_key = True
    manager = TokenManager("sk_key", issuer.post, clock=clock.time)
    with pytest.raises(ApiError) as first:
        manager.access_token()
    assert first.value.status == 401 and manager.state == "auth_invalid"
    with pytest.raises(ApiError) as local:
        manager.access_token()
    assert local.value.code == "AUTH_INVALID" and local.value.status is None
    assert issuer.calls == ["/v1/auth/token"]
    manager.set_api_key("sk_new")
    issuer.refuse_key = False
    manager.access_token()
    state: str = manager.state
    assert state == "ok" and issuer.calls == ["/v1/auth/token", "/v1/auth/token"]


def test_a_refusal_is_announced_and_a_held_pause_is_kept_by_a_new_manager() -> None:
    clock = FakeClock()
    issuer = FakeIssuer(clock)
    issuer.refuse_key = True
    announced: list[float] = []
    first = TokenManager("sk_key", issuer.post, clock=clock.time, on_auth_invalid=announced.append)
    with pytest.raises(ApiError):
        first.access_token()
    assert announced == [clock.time() + 15 * 60]
    # The next process (a restart) is told of the pause: it does not ask the server before it ends.
    issuer.refuse_key = False
    second = TokenManager("sk_key", issuer.post, clock=clock.time)
    second.hold(announced[0])
    with pytest.raises(ApiError) as held:
        second.access_token()
    assert held.value.status is None and second.state == "auth_invalid"
    assert issuer.calls == ["/v1/auth/token"]
    clock.advance(15 * 60)
    second.access_token()
    assert second.state == "ok" and issuer.calls == ["/v1/auth/token", "/v1/auth/token"]
    third = TokenManager("sk_key", issuer.post, clock=clock.time)
    third.hold(announced[0])  # a pause already over is no pause
    assert third.state == "unauthenticated"


def test_no_api_key_is_a_local_auth_error() -> None:
    clock = FakeClock()
    issuer = FakeIssuer(clock)
    manager = TokenManager(None, issuer.post, clock=clock.time)
    with pytest.raises(ApiError) as err:
        manager.access_token()
    assert err.value.code == "AUTH_INVALID" and issuer.calls == []


def test_manager_repr_and_secrets() -> None:
    clock = FakeClock()
    manager = TokenManager("sk_THE_KEY", FakeIssuer(clock).post, clock=clock.time)
    token = manager.access_token()
    assert "sk_THE_KEY" not in repr(manager) and token not in repr(manager)
    assert "sk_THE_KEY" in manager.secrets() and token in manager.secrets()


def test_short_lived_token_refreshes_at_half_life_not_every_call() -> None:
    clock = FakeClock()
    issuer = FakeIssuer(clock)
    issuer.ttl = 10
    manager = TokenManager("sk_key", issuer.post, clock=clock.time)
    manager.access_token()
    clock.advance(4)
    manager.access_token()
    assert issuer.calls == ["/v1/auth/token"]
    clock.advance(1.5)
    manager.access_token()
    assert issuer.calls == ["/v1/auth/token", "/v1/auth/refresh"]
