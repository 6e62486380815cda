"""agent/control/answers.py: what the agent takes as an answer (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.control.answers import (
    count,
    enrollment_fields,
    heartbeat_answer,
    interval_s,
    json_object,
    judge_status,
    redirect_error,
    redirect_host,
)
from agent.control.errors import ApiError


@given(st.integers(min_value=-(10**6), max_value=10**6), st.booleans())
def test_only_a_2xx_or_an_asked_for_304_delivers(status: int, conditional: bool) -> None:
    verdict = judge_status(status, not_modified_ok=conditional)
    assert (verdict == "delivered") == (200 <= status < 300 or (status == 304 and conditional))
    if 300 <= status < 400 and status != 304:
        assert verdict == "redirect"
    if verdict == "error":
        assert 400 <= status < 600


@pytest.mark.parametrize(
    ("location", "host"),
    [
        ("https://evil.example/v1/x?token=secret", "evil.example"),
        ("https://user:pw@evil.example:8443/x?a=b#c", "evil.example:8443"),
        ("/v1/elsewhere?token=secret", "(the same host)"),
        (None, "(no Location)"),
        ("https://[::1]:99999/", "(unparsable Location)"),
        ("https://ev\x1bil.example/", "(a host name with odd characters)"),
    ],
)
def test_a_redirect_is_named_by_its_host_only(location: str | None, host: str) -> None:
    assert redirect_host(location) == host
    err = redirect_error(302, location)
    assert err.transient and err.status == 302 and host in str(err)
    assert "secret" not in str(err) and "pw" not in repr(err)


@given(st.text())
def test_redirect_host_never_carries_the_path_or_query(location: str) -> None:
    host = redirect_host(location)
    assert "?" not in host and "/" not in host and "\n" not in host and "\x1b" not in host


@pytest.mark.parametrize("body", [b"<html>", b"[]", b"1", b"[" * 100_000, b"\xff", b'{"a":'])
def test_json_object_or_a_transient_error(body: bytes) -> None:
    with pytest.raises(ApiError) as info:
        json_object(body, 200)
    assert info.value.transient


def test_json_object() -> None:
    assert json_object(b"", 204) == {}
    assert json_object(b'{"a": 1}', 200) == {"a": 1}


def test_numbers_in_range_only() -> None:
    assert [interval_s(v) for v in (60, 1.5, 86400)] == [60, 1.5, 86400]
    assert all(interval_s(v) is None for v in (0, -1, 86401, True, "60", float("inf"), float("nan"), 10**400))
    assert [count(v) for v in (0, 3)] == [0, 3]
    assert all(count(v) is None for v in (-1, 1.0, True, None, 2**60))
    assert heartbeat_answer({"poll_interval": True, "policy_version": 2, "other": [1]}) == {
        "policy_version": 2,
        "other": [1],
    }


def test_enrollment_fields() -> None:
    ok = {"host_id": "hst_1", "agent_id": "agt_1", "api_key": "sk_agent_abc"}
    assert enrollment_fields(ok) == ("hst_1", "agt_1", "sk_agent_abc")
    for name, bad in [
        ("host_id", "a/b"),
        ("agent_id", 5),
        ("api_key", "a b"),
        ("api_key", "x\r\ny"),
        ("host_id", ""),
    ]:
        with pytest.raises(ApiError) as info:
            enrollment_fields({**ok, name: bad})
        assert name in info.value.message
