"""ApiClient against the real reference control plane over HTTP on loopback."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.control.backoff import BackoffPolicy
from agent.control.client import ApiClient
from agent.control.enroll import enroll_host, load_credentials
from agent.control.errors import ApiError
from tests.controlplane import ControlPlane

FAST = BackoffPolicy(base=0.05, cap=0.4, max_attempts=4)


def facts(machine_id: str = "11112222333344445555666677778888") -> dict[str, Any]:
    return {
        "machine_id": machine_id,
        "hostname": "web-01",
        "fqdn": "web-01.example.com",
        "os": {"id": "debian", "version_id": "12"},
        "kernel": "6.1.0-test",
        "agent_version": "0.1.0",
        "sshd_version": "OpenSSH_9.2p1",
        "host_keys": [],
    }


def event(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"ev-{i:04d}",
        "seq": i,
        "at": "2026-11-26T23:31:08Z",
        "type": "key_added",
        "user": "deploy",
        "path": "/home/deploy/.ssh/authorized_keys",
        "fingerprint": "SHA256:abc",
        "key": None,
        "detail": {},
        **extra,
    }


@pytest.fixture
def cp() -> Iterator[ControlPlane]:
    plane = ControlPlane.start(port=0, db=":memory:")
    try:
        yield plane
    finally:
        plane.stop()


def enrolled(cp: ControlPlane, tmp_path: Path, **client_options: Any) -> tuple[ApiClient, str]:
    enrollment = enroll_host(cp.url, cp.bootstrap_token, str(tmp_path / "state"), facts())
    client = ApiClient(
        cp.url, api_key=enrollment.api_key, backoff=client_options.pop("backoff", FAST), **client_options
    )
    return client, enrollment.host_id


def trail(cp: ControlPlane, since: int = 0) -> list[tuple[str, str, int]]:
    return [(r.method, r.path, r.status) for r in cp.requests[since:]]


def test_token_refreshed_before_expiry(tmp_path: Path) -> None:
    with ControlPlane.start(access_ttl=4) as cp:
        client, host = enrolled(cp, tmp_path)
        client.heartbeat(host, {"status": "ok"})
        first_exp = client.token_expires_at
        time.sleep(2.3)  # past half the 4 s lifetime, before expiry
        client.heartbeat(host, {"status": "ok"})
        hb = f"/v1/hosts/{host}/heartbeat"
        assert trail(cp, 1) == [
            ("POST", "/v1/auth/token", 200),
            ("POST", hb, 200),
            ("POST", "/v1/auth/refresh", 200),
            ("POST", hb, 200),
        ]
        assert client.token_expires_at is not None and first_exp is not None
        assert client.token_expires_at > first_exp
        client.close()


def test_401_refreshes_and_retries_once(cp: ControlPlane, tmp_path: Path) -> None:
    client, host = enrolled(cp, tmp_path)
    client.get_instructions(host)
    mark = len(cp.requests)
    cp.expire_access_tokens()
    assert client.get_instructions(host)[1] == 60
    path = f"/v1/hosts/{host}/instructions"
    assert trail(cp, mark) == [("GET", path, 401), ("POST", "/v1/auth/refresh", 200), ("GET", path, 200)]


def test_refresh_refused_reauthenticates(cp: ControlPlane, tmp_path: Path) -> None:
    client, host = enrolled(cp, tmp_path)
    client.heartbeat(host, {})
    mark = len(cp.requests)
    cp.expire_access_tokens()
    cp.expire_refresh_tokens()
    client.heartbeat(host, {})
    hb = f"/v1/hosts/{host}/heartbeat"
    assert trail(cp, mark) == [
        ("POST", hb, 401),
        ("POST", "/v1/auth/refresh", 401),
        ("POST", "/v1/auth/token", 200),
        ("POST", hb, 200),
    ]
    assert client.auth_state == "ok"


def test_revoked_api_key_sets_auth_invalid_without_hammering(cp: ControlPlane, tmp_path: Path) -> None:
    client, host = enrolled(cp, tmp_path)
    client.heartbeat(host, {})
    cp.revoke_api_key(host)
    mark = len(cp.requests)
    for _ in range(6):
        with pytest.raises(ApiError) as err:
            client.heartbeat(host, {})
        assert err.value.code == "AUTH_INVALID"
    assert client.auth_state == "auth_invalid"
    hb = f"/v1/hosts/{host}/heartbeat"
    assert trail(cp, mark) == [
        ("POST", hb, 401),
        ("POST", "/v1/auth/refresh", 401),
        ("POST", "/v1/auth/token", 401),
    ]


def test_429_retry_after_blocks_the_class(cp: ControlPlane, tmp_path: Path) -> None:
    client, host = enrolled(cp, tmp_path)
    client.heartbeat(host, {})
    mark = len(cp.requests)
    cp.faults.fail_next(
        1, status=429, code="RATE_LIMITED", path_prefix=f"/v1/hosts/{host}/heartbeat", retry_after=2
    )
    with pytest.raises(ApiError) as err:
        client.heartbeat(host, {}, wait=False)
    assert err.value.code == "RATE_LIMITED" and err.value.status == 429
    client.get_instructions(host)  # reads are not blocked
    client.put_inventory(host, {"host_id": host, "keys": [], "errors": []})  # a write: waits out the block
    records = cp.requests[mark:]
    assert [(r.method, r.status) for r in records] == [("POST", 429), ("GET", 200), ("PUT", 200)]
    assert records[1].at - records[0].at < 1.0
    assert records[2].at - records[0].at >= 2.0


def test_429_retried_after_retry_after(cp: ControlPlane, tmp_path: Path) -> None:
    client, host = enrolled(cp, tmp_path)
    client.heartbeat(host, {})
    mark = len(cp.requests)
    cp.faults.fail_next(1, status=429, code="RATE_LIMITED", path_prefix=f"/v1/hosts/{host}/", retry_after=1)
    client.heartbeat(host, {})
    records = cp.requests[mark:]
    assert [r.status for r in records] == [429, 200]
    assert records[1].at - records[0].at >= 1.0
    assert records[0].headers["idempotency-key"] == records[1].headers["idempotency-key"]


def test_server_rate_limit_never_reached_by_client_budget(tmp_path: Path) -> None:
    with ControlPlane.start(limits={"read": 5}) as cp:
        client, host = enrolled(cp, tmp_path, rate_limits={"read": 5})
        for _ in range(5):
            client.get_instructions(host)
        with pytest.raises(ApiError) as err:
            client.get_instructions(host, wait=False)
        assert err.value.code == "RATE_LIMITED" and err.value.status is None
        assert all(r.status != 429 for r in cp.requests)
        client.close()


def test_server_budget_headers_hold_the_class_before_a_429(tmp_path: Path) -> None:
    # The server allows 5 reads a minute, the client believes 1000: only X-RateLimit-Remaining: 0
    # (with X-RateLimit-Reset) on the fifth answer can keep the sixth call from earning a 429.
    with ControlPlane.start(limits={"read": 5}) as cp:
        client, host = enrolled(cp, tmp_path)
        for _ in range(5):
            client.get_instructions(host)
        with pytest.raises(ApiError) as err:
            client.get_instructions(host, wait=False)
        assert err.value.code == "RATE_LIMITED" and err.value.details["local"] is True
        assert 0 < err.value.details["retry_after"] <= 60
        assert all(r.status != 429 for r in cp.requests)
        client.heartbeat(host, {})  # writes have their own budget: not held
        client.close()


def test_5xx_bounded_exponential_retries(cp: ControlPlane, tmp_path: Path) -> None:
    client, host = enrolled(cp, tmp_path)
    client.heartbeat(host, {})
    mark = len(cp.requests)
    cp.faults.fail_next(10, status=503, path_prefix=f"/v1/hosts/{host}/heartbeat")
    with pytest.raises(ApiError) as err:
        client.heartbeat(host, {})
    assert err.value.code == "SERVER_ERROR" and err.value.status == 503
    records = cp.requests[mark:]
    assert [r.status for r in records] == [503] * FAST.max_attempts
    assert len({r.headers["idempotency-key"] for r in records}) == 1
    cp.faults.clear()
    cp.faults.fail_next(2, status=502, path_prefix=f"/v1/hosts/{host}/heartbeat")
    assert client.heartbeat(host, {})["poll_interval"] == 60


def test_dropped_answer_retried_with_same_key_is_not_applied_twice(cp: ControlPlane, tmp_path: Path) -> None:
    client, host = enrolled(cp, tmp_path)
    cp.faults.drop_next(1, path_prefix=f"/v1/hosts/{host}/events", after_processing=True)
    result = client.post_events(host, [event(1), event(2)])
    assert result["accepted"] == 2 and result["duplicates"] == 0
    assert [e["id"] for e in cp.events(host)] == ["ev-0001", "ev-0002"]
    assert cp.duplicate_count(host) == 0


def test_422_batch_split_drops_only_bad_event(
    cp: ControlPlane, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client, host = enrolled(cp, tmp_path)
    cp.set_event_validator(lambda e: "user not allowed" if e["user"] == "SECRET_CONTENT_MARKER" else None)
    batch = [event(i) for i in range(40)]
    batch[13] = event(13, user="SECRET_CONTENT_MARKER")
    batch[29] = event(29, user="SECRET_CONTENT_MARKER")
    with caplog.at_level(logging.DEBUG):
        result = client.post_events(host, batch)
    assert [d["id"] for d in result["dropped"]] == ["ev-0013", "ev-0029"]
    assert result["dropped"][0]["reason"] == "VALIDATION_ERROR: user not allowed"
    expected = [e["id"] for e in batch if e["user"] != "SECRET_CONTENT_MARKER"]
    assert result["accepted_ids"] == expected and result["accepted"] == 38
    assert [e["id"] for e in cp.events(host)] == expected  # seq order kept
    assert "ev-0013" in caplog.text and "SECRET_CONTENT_MARKER" not in caplog.text


def test_403_not_retried_and_404_not_found(cp: ControlPlane, tmp_path: Path) -> None:
    client, host = enrolled(cp, tmp_path)
    client.heartbeat(host, {})
    mark = len(cp.requests)
    with pytest.raises(ApiError) as forbidden:
        client.heartbeat("hst_someone_else", {})
    assert forbidden.value.code == "AUTH_FORBIDDEN"
    assert [r.status for r in cp.requests[mark:]] == [403]
    cp.forget_host(host)
    with pytest.raises(ApiError) as missing:
        client.get_instructions(host)
    assert missing.value.code == "NOT_FOUND"


def test_policy_etag(cp: ControlPlane, tmp_path: Path) -> None:
    client, host = enrolled(cp, tmp_path)
    policy, etag = client.get_policy(host, None)
    assert policy is not None and "version" in policy and etag
    assert client.get_policy(host, etag) == (None, etag)
    assert cp.requests[-1].status == 304


def test_enrollment_is_idempotent_and_replaces_key(cp: ControlPlane, tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    first = enroll_host(cp.url, cp.bootstrap_token, state, facts())
    second = enroll_host(cp.url, cp.bootstrap_token, state, facts())
    other = enroll_host(cp.url, cp.bootstrap_token, str(tmp_path / "other"), facts("9" * 32))
    assert first.host_id == second.host_id != other.host_id
    assert first.api_key != second.api_key
    creds = load_credentials(state)
    assert creds is not None and creds.api_key == second.api_key and creds.host_id == first.host_id
    old = ApiClient(cp.url, api_key=first.api_key, backoff=FAST)
    with pytest.raises(ApiError):
        old.heartbeat(first.host_id, {})
    assert old.auth_state == "auth_invalid"
    new = ApiClient(cp.url, api_key=creds.api_key, backoff=FAST)
    assert new.heartbeat(creds.host_id, {})["poll_interval"] == 60
    with pytest.raises(ApiError) as bad:
        enroll_host(cp.url, "bt_wrong", str(tmp_path / "x"), facts())
    assert bad.value.code == "AUTH_INVALID"


def test_no_secret_in_any_log_record(
    cp: ControlPlane, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "sshklm.control", "tests.controlplane"):
        caplog.set_level(logging.DEBUG, logger=name)
    secrets: set[str] = {cp.bootstrap_token, cp.admin_api_key}
    client, host = enrolled(cp, tmp_path)
    secrets.update(client._tokens.secrets())

    def note() -> None:
        secrets.update(client._tokens.secrets())

    client.heartbeat(host, {"status": "ok"})
    note()
    cp.expire_access_tokens()
    client.get_instructions(host)
    note()
    cp.expire_access_tokens()
    cp.expire_refresh_tokens()
    client.put_inventory(host, {"host_id": host, "keys": [], "errors": []})
    note()
    cp.faults.fail_next(1, status=503, path_prefix=f"/v1/hosts/{host}/events")
    cp.set_event_validator(lambda e: e["id"] != "bad")
    client.post_events(host, [event(1), {**event(2), "id": "bad"}])
    with pytest.raises(ApiError):
        client.enroll("bt_not_the_token", facts())
    with pytest.raises(ApiError):
        client.heartbeat("hst_other", {})
    cp.revoke_api_key(host)
    cp.expire_access_tokens()
    with pytest.raises(ApiError) as err:
        client.get_instructions(host)
    assert client.auth_state == "auth_invalid"
    note()
    assert len(secrets) >= 7  # bootstrap, admin key, API key, and several access/refresh tokens
    text = caplog.text + "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    text += f"{err.value} {err.value!r} {client!r}"
    assert any(r.name.startswith("httpx") for r in caplog.records)  # the capture really saw the HTTP layer
    for secret in secrets:
        assert secret not in text
    client.close()
