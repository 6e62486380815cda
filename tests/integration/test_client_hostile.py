"""ApiClient against answers the contract never gives (issue 11: "redirects are not delivery",
"a hostile or broken server"), from the reference control plane over real HTTP on loopback
(tests/controlplane/hostile.py).

- Only a 2xx delivers. A 3xx is a failed call, transient like a 5xx, logged with its status and
  the redirect's host (never its path or query); a 304 is an answer only to the policy call that
  sent If-None-Match.
- A 2xx whose body is not what the call needs (not JSON, not an object, nested past any sense,
  fields of the wrong type or out of range) is a failed call or, for fields the caller reads, a
  field left out; never an exception other than ApiError.
- Answers are read up to a cap per call (docs/api.md); past it the call fails without reading
  more, and memory does not grow with the size of the refused answer.
- Every attempt has a deadline for its total time: a server dribbling a byte at a time (in the
  body or in the headers) cannot hold a caller longer.
"""

from __future__ import annotations

import logging
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.control.backoff import BackoffPolicy
from agent.control.client import MAX_ANSWER_BYTES, MAX_INSTRUCTIONS_ANSWER_BYTES, ApiClient, Timeouts
from agent.control.enroll import load_credentials
from agent.control.errors import ApiError
from tests.controlplane import ControlPlane
from tests.integration.test_client_loopback import cp, event, facts
from tests.integration.test_client_loopback import enrolled as loopback_enrolled

__all__ = ["cp"]  # the reference control plane fixture, shared with test_client_loopback

ONE_TRY = BackoffPolicy(base=0.01, cap=0.02, max_attempts=1)
TWO_TRIES = BackoffPolicy(base=0.01, cap=0.02, max_attempts=2)
SECRET_QUERY = "token=not-for-logs"


def enrolled(cp: ControlPlane, tmp_path: Path, **options: Any) -> tuple[ApiClient, str]:
    """An enrolled client (two attempts per call unless told) holding a token already."""
    client, host = loopback_enrolled(cp, tmp_path, backoff=options.pop("backoff", TWO_TRIES), **options)
    client.ensure_token()
    return client, host


def forget_tokens(client: ApiClient, tmp_path: Path) -> None:
    """The next call authenticates again (the token answer is what the test is about)."""
    stored = load_credentials(tmp_path / "state")
    assert stored is not None
    client.set_api_key(stored.api_key)


def peak_traced(call: Callable[[], object]) -> tuple[BaseException | None, int]:
    """(what `call` raised, the peak of Python allocations while it ran)."""
    tracemalloc.start()
    try:
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - returned to the test
            return exc, tracemalloc.get_traced_memory()[1]
        return None, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _calls(cp: ControlPlane, host: str) -> dict[str, tuple[str, Callable[[ApiClient], object]]]:
    """Every call the agent makes: (path prefix, the call)."""
    inventory = {"snapshot_id": "s", "generation": 1, "host_id": host, "keys": [], "errors": []}
    return {
        "token": ("/v1/auth/token", lambda c: (c.set_api_key("sk_agent_x"), c.ensure_token())),
        "enroll": (
            "/v1/agents/enroll",
            lambda c: c.enroll(cp.bootstrap_token, facts("99998888777766665555444433332222")),
        ),
        "heartbeat": (f"/v1/hosts/{host}/heartbeat", lambda c: c.heartbeat(host, {"status": "ok"})),
        "inventory": (f"/v1/hosts/{host}/inventory", lambda c: c.put_inventory(host, inventory)),
        "events": (f"/v1/hosts/{host}/events", lambda c: c.post_events(host, [event(1)])),
        "instructions": (f"/v1/hosts/{host}/instructions", lambda c: c.get_instructions(host)),
        "result": (
            "/v1/instructions/",
            lambda c: c.post_instruction_result(
                "ins_x",
                {"status": "applied", "at": "2026-01-01T00:00:00Z", "error": None, "fingerprints_after": []},
            ),
        ),
        "scan_result": ("/v1/scans/", lambda c: c.put_scan_result("scn_x", inventory)),
        "policy": (f"/v1/hosts/{host}/policy", lambda c: c.get_policy(host, None)),
    }


CALL_NAMES = [
    "token",
    "enroll",
    "heartbeat",
    "inventory",
    "events",
    "instructions",
    "result",
    "scan_result",
    "policy",
]


# -- redirects ------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirected_event_batch_is_not_delivered(
    cp: ControlPlane, tmp_path: Path, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    client, host = enrolled(cp, tmp_path)
    cp.faults.redirect_next(2, status=status, path_prefix=f"/v1/hosts/{host}/events")
    caplog.set_level(logging.DEBUG, logger="sshklm")
    with pytest.raises(ApiError) as info:
        client.post_events(host, [event(1), event(2)])
    assert info.value.transient and info.value.status == status
    assert info.value.code == "HTTP_REDIRECT"
    assert cp.events(host) == []
    # The agent's own log lines (httpx/httpcore's debug traces are the log configuration's business).
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("sshklm")]
    text = "\n".join(ours) + str(info.value)
    assert str(status) in text and "elsewhere.example" in text
    assert SECRET_QUERY not in text and "/v1/moved" not in text
    # Redirects are not followed: nothing went to the other place, the call was tried twice.
    assert [r.status for r in cp.requests if r.path.endswith("/events")] == [status, status]
    # Once the server answers properly, the same events are delivered.
    assert client.post_events(host, [event(1), event(2)])["accepted_ids"] == ["ev-0001", "ev-0002"]


@pytest.mark.parametrize("name", CALL_NAMES)
def test_every_call_refuses_a_redirect(cp: ControlPlane, tmp_path: Path, name: str) -> None:
    client, host = enrolled(cp, tmp_path, backoff=ONE_TRY)
    prefix, call = _calls(cp, host)[name]
    inventory_before = cp.inventory(host)
    cp.faults.redirect_next(1, status=307, path_prefix=prefix)
    with pytest.raises(ApiError) as info:
        call(client)
    assert (info.value.code, info.value.status, info.value.transient) == ("HTTP_REDIRECT", 307, True)
    assert cp.inventory(host) == inventory_before and cp.events(host) == []


@pytest.mark.parametrize("name", [n for n in CALL_NAMES if n != "policy"])
def test_a_304_is_an_answer_only_to_a_conditional_policy_call(
    cp: ControlPlane, tmp_path: Path, name: str
) -> None:
    client, host = enrolled(cp, tmp_path, backoff=ONE_TRY)
    prefix, call = _calls(cp, host)[name]
    cp.faults.answer_next(1, 304, path_prefix=prefix, length=False)
    with pytest.raises(ApiError) as info:
        call(client)
    assert info.value.code == "UNEXPECTED_ANSWER" and info.value.transient


def test_a_304_to_a_policy_call_without_if_none_match_is_refused(cp: ControlPlane, tmp_path: Path) -> None:
    client, host = enrolled(cp, tmp_path, backoff=ONE_TRY)
    cp.faults.answer_next(1, 304, path_prefix=f"/v1/hosts/{host}/policy", length=False)
    with pytest.raises(ApiError):
        client.get_policy(host, None)
    policy, etag = client.get_policy(host, None)
    assert policy is not None and etag
    cp.faults.answer_next(
        1, 304, headers={"ETag": etag}, path_prefix=f"/v1/hosts/{host}/policy", length=False
    )
    assert client.get_policy(host, etag) == (None, etag)


@pytest.mark.parametrize("status", [100, 199, 600, 999])
def test_statuses_outside_http_are_failures(cp: ControlPlane, tmp_path: Path, status: int) -> None:
    client, host = enrolled(cp, tmp_path, backoff=ONE_TRY)
    cp.faults.answer_next(1, status, b'{"accepted": 1}', path_prefix=f"/v1/hosts/{host}/events")
    with pytest.raises(ApiError) as info:
        client.post_events(host, [event(1)])
    assert info.value.transient
    assert cp.events(host) == []


# -- bodies the calls do not expect ----------------------------------------------------------------

NOT_OBJECTS = [
    b"<html>captive portal</html>",
    b"[1, 2]",
    b'"accepted"',
    b"[" * 200_000,  # nested past the parser's recursion limit
    b'{"accepted": 1',  # cut short
    b"\xff\xfe{}",
]


@pytest.mark.parametrize("body", NOT_OBJECTS, ids=lambda b: repr(b[:12]))
@pytest.mark.parametrize("name", CALL_NAMES)
def test_a_2xx_whose_body_is_not_a_json_object_is_a_failed_call(
    cp: ControlPlane, tmp_path: Path, name: str, body: bytes
) -> None:
    client, host = enrolled(cp, tmp_path, backoff=ONE_TRY)
    prefix, call = _calls(cp, host)[name]
    cp.faults.answer_next(1, 200, body, {"Content-Type": "application/json"}, path_prefix=prefix)
    with pytest.raises(ApiError) as info:
        call(client)
    assert info.value.transient


@pytest.mark.parametrize("status", [400, 422, 500])
def test_an_error_whose_body_is_nested_past_sense_is_still_an_api_error(
    cp: ControlPlane, tmp_path: Path, status: int
) -> None:
    client, host = enrolled(cp, tmp_path, backoff=ONE_TRY)
    cp.faults.answer_next(
        1, status, b'{"error": ' + b"[" * 200_000, path_prefix=f"/v1/hosts/{host}/heartbeat"
    )
    with pytest.raises(ApiError) as info:
        client.heartbeat(host, {"status": "ok"})
    assert info.value.status == status


def test_a_204_delivers_a_write_that_needs_no_answer(cp: ControlPlane, tmp_path: Path) -> None:
    client, host = enrolled(cp, tmp_path, backoff=ONE_TRY)
    cp.faults.answer_next(1, 204, path_prefix=f"/v1/hosts/{host}/events", length=False)
    assert client.post_events(host, [event(1)])["accepted_ids"] == ["ev-0001"]
    cp.faults.answer_next(1, 204, path_prefix=f"/v1/hosts/{host}/instructions", length=False)
    assert client.get_instructions(host) == ([], None, False)


@pytest.mark.parametrize(
    "answer",
    [
        b"",
        b'{"host_id": {"a": 1}, "agent_id": "agt_1", "api_key": "sk_agent_1"}',
        b'{"host_id": "../../etc", "agent_id": "agt_1", "api_key": "sk_agent_1"}',
        b'{"host_id": "hst_1", "agent_id": 7, "api_key": "sk_agent_1"}',
        b'{"host_id": "hst_1", "agent_id": "agt_1", "api_key": "sk agent\\r\\nX-Injected: 1"}',
        b'{"host_id": "hst_1", "agent_id": "agt_1", "api_key": ""}',
    ],
)
def test_an_enrollment_answer_with_wrong_fields_is_refused(
    cp: ControlPlane, tmp_path: Path, answer: bytes
) -> None:
    client, _ = enrolled(cp, tmp_path, backoff=ONE_TRY)
    status = 204 if not answer else 201
    cp.faults.answer_next(1, status, answer, path_prefix="/v1/agents/enroll", length=bool(answer))
    with pytest.raises(ApiError):
        client.enroll(cp.bootstrap_token, facts("99998888777766665555444433332222"))


@pytest.mark.parametrize(
    "answer",
    [
        b'{"access_token": 5}',
        b'{"access_token": "abc\\r\\nX-Injected: 1"}',
        b'{"access_token": ""}',
        b'{"access_token": ["a"]}',
    ],
)
def test_a_token_answer_with_a_token_that_cannot_be_sent_is_refused(
    cp: ControlPlane, tmp_path: Path, answer: bytes
) -> None:
    client, _ = enrolled(cp, tmp_path, backoff=ONE_TRY)
    forget_tokens(client, tmp_path)
    cp.faults.answer_next(1, 200, answer, path_prefix="/v1/auth/token")
    with pytest.raises(ApiError):
        client.ensure_token()


@pytest.mark.parametrize(
    "lifetime",
    [b"1" + b"0" * 400, b"1e400", b"-5", b"true", b'"900"', b"0", b"null"],
    ids=lambda b: repr(b[:8]),
)
def test_absurd_token_lifetimes_are_not_believed(cp: ControlPlane, tmp_path: Path, lifetime: bytes) -> None:
    client, host = enrolled(cp, tmp_path, backoff=ONE_TRY)
    forget_tokens(client, tmp_path)
    body = (
        b'{"access_token": "opaque", "refresh_token": "opaque2", "expires_in": %s, "refresh_expires_in": %s}'
        % (
            lifetime,
            lifetime,
        )
    )
    cp.faults.answer_next(1, 200, body, path_prefix="/v1/auth/token")
    client.ensure_token()  # no OverflowError, no crash: a sane default lifetime instead
    expires = client.token_expires_at
    assert expires is not None and 0 < expires.timestamp() - time.time() <= 3600


def test_heartbeat_and_instruction_fields_of_the_wrong_type_are_left_out(
    cp: ControlPlane, tmp_path: Path
) -> None:
    client, host = enrolled(cp, tmp_path, backoff=ONE_TRY)
    heartbeat, instructions = f"/v1/hosts/{host}/heartbeat", f"/v1/hosts/{host}/instructions"
    for poll in (b"1e400", b"1" + b"0" * 400, b"-5", b"0", b"true", b'"60"', b"1e308", b"[60]", b"null"):
        cp.faults.answer_next(1, 200, b'{"poll_interval": %s}' % poll, path_prefix=heartbeat)
        assert "poll_interval" not in client.heartbeat(host, {"status": "ok"}), poll
        cp.faults.answer_next(
            1,
            200,
            b'{"instructions": ["a", 5, null, {"x": 1}], "poll_interval": %s}' % poll,
            path_prefix=instructions,
        )
        assert client.get_instructions(host) == (["a"], None, False), poll
    for number in (b"1e400", b"1" + b"0" * 400, b"-5", b"true", b'"3"', b"1.5", b"[3]", b"null"):
        body = b'{"policy_version": %s, "pending_instructions": %s}' % (number, number)
        cp.faults.answer_next(1, 200, body, path_prefix=heartbeat)
        assert client.heartbeat(host, {"status": "ok"}) == {}, number
    cp.faults.answer_next(
        1, 200, b'{"poll_interval": 90, "policy_version": 3, "x": 1}', path_prefix=heartbeat
    )
    assert client.heartbeat(host, {"status": "ok"}) == {"poll_interval": 90, "policy_version": 3, "x": 1}


# -- size caps ------------------------------------------------------------------------------------

HUGE = 200 << 20  # 200 MiB


@pytest.mark.parametrize("declare", [True, False], ids=["content-length", "until-close"])
def test_a_huge_instructions_answer_is_refused_at_the_cap_without_growing_memory(
    cp: ControlPlane, tmp_path: Path, declare: bool
) -> None:
    client, host = enrolled(cp, tmp_path, backoff=ONE_TRY)
    cp.faults.huge_answer_next(1, HUGE, path_prefix=f"/v1/hosts/{host}/instructions", declare=declare)
    error, peak = peak_traced(lambda: client.get_instructions(host))
    assert isinstance(error, ApiError) and error.code == "ANSWER_TOO_LARGE" and error.transient
    how = "declared" if declare else "undeclared"
    print(f"\n200 MiB instructions answer ({how}): peak traced {peak / 2**20:.1f} MiB")
    # At most the cap (what was read before it was refused) and a little more: not 200 MiB.
    assert peak < MAX_INSTRUCTIONS_ANSWER_BYTES * 2 + (4 << 20), peak
    # The client still works.
    assert client.get_instructions(host) == ([], 60, False)


@pytest.mark.parametrize("name", [n for n in CALL_NAMES if n != "instructions"])
def test_every_other_answer_is_capped_smaller(cp: ControlPlane, tmp_path: Path, name: str) -> None:
    client, host = enrolled(cp, tmp_path, backoff=ONE_TRY)
    prefix, call = _calls(cp, host)[name]
    cp.faults.huge_answer_next(1, MAX_ANSWER_BYTES + 1, path_prefix=prefix, declare=False)
    with pytest.raises(ApiError) as info:
        call(client)
    assert info.value.code == "ANSWER_TOO_LARGE"


def test_a_huge_error_body_is_cut_not_read(cp: ControlPlane, tmp_path: Path) -> None:
    client, host = enrolled(cp, tmp_path, backoff=ONE_TRY)
    cp.faults.answer_next(
        1,
        422,
        b'{"error": {"code": "VALIDATION_ERROR"}}' + b" " * (HUGE // 8),
        path_prefix=f"/v1/hosts/{host}/heartbeat",
    )
    error, peak = peak_traced(lambda: client.heartbeat(host, {"status": "ok"}))
    assert isinstance(error, ApiError) and error.status == 422
    assert peak < 4 << 20, peak  # 64 KiB of it were read, not 25 MiB


# -- deadlines ------------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", ["body", "headers"])
def test_a_dribbling_server_cannot_hold_a_call_past_its_deadline(
    cp: ControlPlane, tmp_path: Path, phase: str
) -> None:
    client, host = enrolled(cp, tmp_path, backoff=ONE_TRY, timeouts=Timeouts(read=30.0, total=1.5))
    cp.faults.dribble_next(1, interval=0.05, path_prefix=f"/v1/hosts/{host}/heartbeat", phase=phase)
    outcome: list[BaseException | object] = []

    def call() -> None:
        try:
            outcome.append(client.heartbeat(host, {"status": "ok"}))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    started = time.monotonic()
    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(60)  # a liveness bound, far above the deadline: before the fix it never ended
    assert not worker.is_alive(), "the call is still held by the dribbling server"
    print(f"\ndribbling {phase}: the call gave up after {time.monotonic() - started:.2f} s (deadline 1.5 s)")
    (error,) = outcome
    assert isinstance(error, ApiError) and error.transient, error
    assert "deadline" in str(error)
    assert client.heartbeat(host, {"status": "ok"})  # the next call is fine


def test_a_long_poll_may_be_held_past_the_deadline_for_its_wait(cp: ControlPlane, tmp_path: Path) -> None:
    """A long-poll (contract 6.1) is held by the server up to its `wait` when nothing is pending:
    its deadline and its read timeout grow by that wait. Without the growth, a wait longer than
    the call's deadline ended every long-poll as a timeout ("the call's deadline passed")."""
    client, host = enrolled(cp, tmp_path, backoff=ONE_TRY, timeouts=Timeouts(read=1.0, total=1.5))
    answer = client.get_instructions(host, wait_s=3)
    # Nothing pending and `wait_supported`: the reference server held it until the wait passed.
    assert answer == ([], 60, True)
    (request,) = [r for r in cp.requests if r.path.startswith(f"/v1/hosts/{host}/instructions")]
    assert request.status == 200 and "wait=3" in request.path


@pytest.mark.parametrize(
    ("header", "details"),
    [("1" + "0" * 400, None), ("99999999999", None), (None, b"1e308"), (None, b"1" + b"0" * 400)],
)
def test_an_absurd_retry_after_does_not_silence_the_agent_for_ever(
    cp: ControlPlane, tmp_path: Path, header: str | None, details: bytes | None
) -> None:
    """A 429 whose Retry-After (header or details) says "centuries" holds the class for at most
    an hour (like an X-RateLimit-Reset past an hour, it is not believed)."""
    client, host = enrolled(cp, tmp_path, backoff=ONE_TRY)
    body = b'{"error": {"code": "RATE_LIMITED", "message": "slow down", "details": {"retry_after": %s}}}' % (
        details or b"null"
    )
    cp.faults.answer_next(
        1, 429, body, {"Retry-After": header} if header else {}, path_prefix=f"/v1/hosts/{host}/heartbeat"
    )
    with pytest.raises(ApiError) as info:
        client.heartbeat(host, {"status": "ok"})
    assert info.value.code == "RATE_LIMITED"
    held = client.budget.blocked_until("write") - time.monotonic()
    assert 0 < held <= 3600 * 1.1 + 1, held


def test_an_etag_that_cannot_be_sent_back_is_not_kept(cp: ControlPlane, tmp_path: Path) -> None:
    """The policy's ETag goes back in If-None-Match: one with control characters would make every
    later policy call fail before it leaves (h11 refuses the header)."""
    client, host = enrolled(cp, tmp_path, backoff=ONE_TRY)
    policy = f"/v1/hosts/{host}/policy"
    cp.faults.answer_next(1, 200, b'{"version": 1}', {"ETag": '"a\x01b"'}, path_prefix=policy)
    document, etag = client.get_policy(host, None)
    assert document == {"version": 1} and etag is None
    assert client.get_policy(host, etag)[0] is not None  # the next call works
