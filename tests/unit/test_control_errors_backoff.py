from __future__ import annotations

import json
import random
from datetime import UTC, datetime

import pytest

from agent.control.backoff import (
    BackoffPolicy,
    RateBudget,
    backoff_ceiling,
    backoff_delay,
    classify,
    exhausted_budget_wait,
    parse_retry_after,
    retry_after_from_details,
)
from agent.control.errors import ApiError, error_from_response, scrub

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)


# -- errors --


def test_error_from_contract_body() -> None:
    body = json.dumps(
        {"error": {"code": "RATE_LIMITED", "message": "Too many requests", "details": {"retry_after": 12}}}
    ).encode()
    err = error_from_response(429, body)
    assert (err.code, err.message, err.details, err.status) == (
        "RATE_LIMITED",
        "Too many requests",
        {"retry_after": 12},
        429,
    )
    assert isinstance(err, ApiError)


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "VALIDATION_ERROR"),
        (401, "AUTH_INVALID"),
        (403, "AUTH_FORBIDDEN"),
        (404, "NOT_FOUND"),
        (422, "VALIDATION_ERROR"),
        (429, "RATE_LIMITED"),
        (500, "SERVER_ERROR"),
        (503, "SERVER_ERROR"),
        (409, "HTTP_ERROR"),
    ],
)
def test_error_code_follows_status_when_body_is_not_the_contract(status: int, code: str) -> None:
    err = error_from_response(status, b"<html>proxy error</html>")
    assert err.code == code and err.status == status and err.message == f"HTTP {status}"


def test_5xx_is_server_error_whatever_the_body_says() -> None:
    err = error_from_response(503, b'{"error": {"code": "MAINTENANCE", "message": "later"}}')
    assert err.code == "SERVER_ERROR" and err.transient and err.message == "later"


def test_error_scrubs_known_secrets_and_bounds_message() -> None:
    body = json.dumps(
        {
            "error": {
                "code": "AUTH_INVALID",
                "message": "key sk_SECRET is bad" + "x" * 1000,
                "details": {"echo": ["sk_SECRET"], "n": 1},
            }
        }
    ).encode()
    err = error_from_response(401, body, ["sk_SECRET", ""])
    assert "sk_SECRET" not in str(err) and "sk_SECRET" not in repr(err)
    assert "sk_SECRET" not in json.dumps(err.details)
    assert err.details == {"echo": ["[REDACTED]"], "n": 1}
    assert len(err.message) <= 300


def test_str_and_repr_show_code_and_status() -> None:
    err = ApiError("NOT_FOUND", "host unknown", {"id": "hst_1"}, 404)
    assert str(err) == "NOT_FOUND (HTTP 404): host unknown"
    assert "NOT_FOUND" in repr(err) and "404" in repr(err)
    assert str(ApiError("TRANSPORT_ERROR", "ConnectError")) == "TRANSPORT_ERROR (local): ConnectError"


def test_scrub_leaves_non_strings() -> None:
    assert scrub({"a": 1, "b": None, "c": "s3cr3t!"}, ["s3cr3t"]) == {"a": 1, "b": None, "c": "[REDACTED]!"}


# -- backoff --


@pytest.mark.parametrize(
    ("method", "path", "cls"),
    [
        ("GET", "/v1/hosts/h/instructions", "read"),
        ("POST", "/v1/hosts/h/events", "write"),
        ("PUT", "/v1/hosts/h/inventory", "write"),
        ("PUT", "/v1/scans/scn_1/result", "write"),
        ("GET", "/v1/ephemeral/eph_1", "read"),
        ("POST", "/v1/scans", "scan"),
        ("POST", "/v1/ephemeral", "ephemeral"),
        ("POST", "/v1/auth/token", "write"),
    ],
)
def test_classify(method: str, path: str, cls: str) -> None:
    assert classify(method, path) == cls


def test_parse_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("2", NOW) == 2.0
    assert parse_retry_after(" 120 ", NOW) == 120.0
    assert parse_retry_after("Thu, 26 Nov 2026 12:00:30 GMT", NOW) == 30.0
    assert parse_retry_after("Thu, 26 Nov 2026 11:00:00 GMT", NOW) == 0.0  # in the past: no wait
    assert parse_retry_after("1.5", NOW) == 1.5
    for bad in (None, "", "soon", "nan", "inf"):
        assert parse_retry_after(bad, NOW) is None


def test_retry_after_from_details() -> None:
    assert retry_after_from_details({"retry_after": 12}) == 12.0
    assert retry_after_from_details({"retry_after": "12"}) is None
    assert retry_after_from_details({"retry_after": True}) is None
    assert retry_after_from_details({}) is None


def test_full_jitter_stays_in_exponential_envelope() -> None:
    policy = BackoffPolicy(base=1.0, cap=300.0)
    rng = random.Random(1)
    for retry, ceiling in [(0, 1), (1, 2), (2, 4), (5, 32), (8, 256), (9, 300), (200, 300)]:
        assert policy.ceiling(retry) == ceiling
        samples = [policy.transient_delay(retry, rng) for _ in range(200)]
        assert all(0 <= s <= ceiling for s in samples)
        assert max(samples) > ceiling * 0.8  # full jitter spreads over the whole range
        assert min(samples) < ceiling * 0.2


def test_backoff_through_ten_thousand_consecutive_failures() -> None:
    # The sender retries for as long as an outage lasts: every attempt number has a finite delay
    # inside the envelope, which reaches the cap and stays there.
    rng = random.Random(3)
    delays = [backoff_delay(attempt, rng, base=1.0, cap=300.0) for attempt in range(10_000)]
    assert all(0.0 <= d <= 300.0 for d in delays)
    assert [backoff_ceiling(a, base=1.0, cap=300.0) for a in (0, 1, 8, 9, 1024, 9_999)] == [
        1.0,
        2.0,
        256.0,
        300.0,
        300.0,
        300.0,
    ]
    assert max(delays[9:]) > 290.0  # past the cap's attempt, the jitter still spans the whole range
    assert backoff_ceiling(-1, base=1.0, cap=300.0) == 1.0
    assert backoff_ceiling(10**9, base=1e300, cap=1e308) == 1e308  # no OverflowError, even here
    policy = BackoffPolicy(base=1.0, cap=300.0)
    assert [policy.ceiling(a) for a in range(10_000)] == [
        backoff_ceiling(a, base=1.0, cap=300.0) for a in range(10_000)
    ]


def test_rate_limited_delay_never_below_retry_after() -> None:
    policy = BackoffPolicy()
    rng = random.Random(2)
    samples = [policy.rate_limited_delay(2.0, 0, rng) for _ in range(200)]
    assert all(2.0 <= s <= 2.2 for s in samples)
    assert len(set(samples)) > 100  # jittered, not lockstep
    no_header = [policy.rate_limited_delay(None, 3, rng) for _ in range(50)]
    assert all(8.0 <= s <= 8.8 for s in no_header)


def test_policy_validation() -> None:
    with pytest.raises(ValueError):
        BackoffPolicy(base=0)
    with pytest.raises(ValueError):
        BackoffPolicy(max_attempts=0)


def test_rate_budget_sliding_window() -> None:
    budget = RateBudget({"scan": 3})
    assert [budget.acquire("scan", t) for t in (0.0, 10.0, 20.0)] == [0.0, 0.0, 0.0]
    assert budget.acquire("scan", 30.0) == pytest.approx(30.0)  # the call at t=0 leaves the window at 60
    assert budget.acquire("scan", 60.0) == 0.0
    assert budget.acquire("scan", 61.0) == pytest.approx(9.0)
    assert budget.acquire("read", 61.0) == 0.0  # classes are independent


def test_rate_budget_published_defaults_and_validation() -> None:
    budget = RateBudget()
    assert dict(budget.limits) == {"read": 1000, "write": 100, "scan": 10, "ephemeral": 50}
    assert all(budget.acquire("write", 0.0) == 0.0 for _ in range(100))
    assert budget.acquire("write", 0.0) > 0
    with pytest.raises(ValueError):
        RateBudget({"bogus": 1})
    with pytest.raises(ValueError):
        RateBudget({"read": 0})


def test_rate_budget_block_until_only_extends() -> None:
    budget = RateBudget()
    budget.block_until("write", 10.0)
    budget.block_until("write", 5.0)
    assert budget.blocked_until("write") == 10.0
    assert budget.acquire("write", 4.0) == pytest.approx(6.0)
    assert budget.acquire("read", 4.0) == 0.0
    assert budget.acquire("write", 10.0) == 0.0


@pytest.mark.parametrize(
    ("remaining", "reset", "wait"),
    [
        ("0", "12", 12.0),
        (" 0 ", "1.5", 1.5),
        ("3", "12", None),  # budget left
        ("0", None, None),
        (None, "12", None),
        ("0", "soon", None),
        ("0", "0", None),
        ("0", "1767225600", None),  # an epoch time: not believed (the 429 path still protects)
        ("0", "-5", None),
    ],
)
def test_exhausted_budget_wait(remaining: str | None, reset: str | None, wait: float | None) -> None:
    assert exhausted_budget_wait(remaining, reset) == wait
