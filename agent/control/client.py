"""ApiClient: the agent's one HTTP client for the control plane (contract sections 1-7).

One ``httpx.Client`` per ApiClient with explicit timeouts, pool limits and verified TLS. Every
call goes through ``_call``, which: waits for the request class's rate budget; attaches a bearer
token from the TokenManager (refreshing once on a 401); gives every POST/PUT an Idempotency-Key
that all retries of that logical request reuse; runs each attempt through ``_exchange`` (a
deadline on its total time, the answer read up to the call's cap: transfer.py); takes only a 2xx
(or an asked-for 304) as an answer (``judge_status``, answers.py): retries 3xx, 5xx, timeouts,
connection errors and refused answers with exponential backoff and full jitter up to
``max_attempts``; honours 429 Retry-After for the whole class; and raises ApiError for everything
else (403 and validation errors are never retried). Bodies and the fields the agent reads are
checked in answers.py. What follows each attempt is decided by agent/control/retry.py (CallRetry,
pure); `_call` sends (`_attempt`), describes the outcome and carries the decision out. Time, sleep
and randomness are injected so every branch is testable without waiting.

(Over 500 lines: one class for the contract's calls and the request engine they all share; the
pure parts live in answers.py, backoff.py, retry.py and tokens.py, the bounded exchange in
transfer.py.)
"""

from __future__ import annotations

import logging
import random
import ssl
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypedDict
from urllib.parse import quote

import httpx

from agent import __version__
from agent.control.answers import (
    enrollment_fields,
    heartbeat_answer,
    instructions_answer,
    json_object,
    judge_status,
    redirect_error,
    retry_after_s,
    unexpected_status_error,
)
from agent.control.answers import (
    etag as answer_etag,
)
from agent.control.backoff import (
    BackoffPolicy,
    RateBudget,
    RequestClass,
    classify,
    exhausted_budget_wait,
    parse_retry_after,
)
from agent.control.errors import (
    AUTH_INVALID,
    RATE_LIMITED,
    TRANSPORT_ERROR,
    VALIDATION_ERROR,
    ApiError,
    error_from_response,
)
from agent.control.retry import Attempt, CallRetry, TransportKind
from agent.control.tokens import AuthState, TokenManager
from agent.control.transfer import BoundedTransport, deadline, read_capped

log = logging.getLogger("sshklm.control")

USER_AGENT = f"sshklm-agent/{__version__}"
MAX_EVENTS_PER_CALL = 500
# Answer caps per call (docs/api.md): every answer of the contract is a few KiB, except the list
# of pending instructions (each JWS up to 64 KiB). Error answers are read only for their message.
MAX_ANSWER_BYTES = 1 << 20
MAX_INSTRUCTIONS_ANSWER_BYTES = 16 << 20
MAX_ERROR_BODY_BYTES = 64 << 10
# An upload's deadline grows with its size: the deadline plus a second per 64 KiB (a large
# inventory over a slow link is not a stuck server).
UPLOAD_FLOOR_BYTES_PER_S = 64 << 10
MAX_WAIT_S = 60  # §6.1: 1 <= wait <= 60
TOKEN_CALL_ATTEMPTS = 1  # POST /v1/auth/token and /v1/auth/refresh (see _token_post)
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

JSONDict = dict[str, Any]


@dataclass(frozen=True)
class Enrollment:
    host_id: str
    agent_id: str
    api_key: str = field(repr=False)


@dataclass(frozen=True)
class Timeouts:
    connect: float = 10.0
    read: float = 30.0
    write: float = 30.0
    pool: float = 10.0
    total: float = 120.0  # the deadline of one attempt, connect to last byte (transfer.py)


class DroppedEvent(TypedDict):
    id: str
    reason: str


class EventBatchResult(TypedDict):
    accepted: int  # new events the server stored
    duplicates: int  # events the server already had
    accepted_ids: list[str]  # every id the server now holds (new or duplicate): ack them
    dropped: list[DroppedEvent]  # rejected one by one as invalid: ack (drop) them too


class Instructions(NamedTuple):
    """A §6 answer: the pending instructions (compact JWS, oldest first), the server's poll interval,
    and whether it honoured a `wait` (§6.1: it held the request; absent: an older server)."""

    tokens: list[str]
    poll_interval: int | float | None  # seconds, 1..86400 (answers.interval_s)
    wait_supported: bool


@dataclass(frozen=True)
class _Request:
    """One logical request, as every attempt of it sends it."""

    method: str
    path: str
    json: Mapping[str, Any] | None
    content: bytes | None
    headers: dict[str, str]  # the Authorization header is refreshed before each attempt
    timeout: httpx.Timeout  # httpx's per-operation timeouts (the read one grown by a long-poll's hold)
    deadline_s: float  # each attempt's total time, before the growth for a large upload (transfer.py)
    max_answer: int  # the answer's cap in bytes
    not_modified_ok: bool  # a conditional GET: a 304 is an answer


DEFAULT_TIMEOUTS = Timeouts()
DEFAULT_BACKOFF = BackoffPolicy()


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Verified TLS: the system trust store, or only ``ca_file`` when one is configured."""
    return ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()


def _json_body(document: Mapping[str, Any] | str) -> dict[str, Any]:
    """The request arguments for a JSON body given as a document or as already encoded text."""
    if isinstance(document, str):
        return {"content": document.encode("utf-8")}
    return {"json": document}


def _untrusted_certificate(exc: BaseException) -> bool:
    """True when the TLS handshake failed because the server's certificate was not verified."""
    seen: BaseException | None = exc
    for _ in range(8):  # httpx -> httpcore -> ssl: a short chain; bounded anyway
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def transport_kind(exc: httpx.TransportError) -> TransportKind:
    """How an attempt failed without an answer (see agent/control/retry.py)."""
    if _untrusted_certificate(exc):
        # A configuration problem (ca_file, the server's certificate), not a blip: retrying within
        # the call cannot help. The next scheduled call tries again.
        return "tls"
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return "connect"
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    return "dropped"  # RemoteProtocolError (closed without an answer), ReadError/WriteError (reset)


def _seg(value: str) -> str:
    """One path segment: an id from the server must not be able to change the path."""
    return quote(value, safe="")


class ApiClient:
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        ca_file: str | None = None,
        verify: ssl.SSLContext | None = None,
        max_connections: int = 4,
        backoff: BackoffPolicy = DEFAULT_BACKOFF,
        rate_limits: Mapping[str, int] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        transport: httpx.BaseTransport | None = None,
        on_auth_invalid: Callable[[float], None] | None = None,
        token_renewal_spread: float = 0.0,
        on_attempt: Callable[[RequestClass, Attempt], None] | None = None,
    ) -> None:
        """``verify`` overrides the TLS context (tests with their own CA); ``transport`` replaces the
        network entirely (httpx.MockTransport in unit tests). ``clock`` is wall time (token expiry,
        HTTP-dates); ``monotonic`` drives the rate budget and Retry-After blocks. ``on_attempt``
        hears every attempt's outcome, token calls included (the daemon counts them for metrics)."""
        self._on_attempt = on_attempt
        self.base_url = base_url.rstrip("/")
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self.backoff = backoff
        self.budget = RateBudget(rate_limits)
        self._deadline_s = timeouts.total
        if transport is None:
            # With transport= given httpx ignores its own verify/limits, so they go on the transport.
            transport = BoundedTransport(
                verify=verify if verify is not None else tls_context(ca_file),
                limits=httpx.Limits(
                    max_connections=max_connections, max_keepalive_connections=max_connections
                ),
            )
        self._http = httpx.Client(
            base_url=self.base_url,
            transport=transport,
            timeout=httpx.Timeout(
                connect=timeouts.connect, read=timeouts.read, write=timeouts.write, pool=timeouts.pool
            ),
            headers={"User-Agent": USER_AGENT, "Accept": "application/json", "Accept-Encoding": "identity"},
            follow_redirects=False,
        )
        self._tokens = TokenManager(
            api_key,
            self._token_post,
            clock=clock,
            on_auth_invalid=on_auth_invalid,
            renewal_spread=token_renewal_spread,
            rng=self._rng,
        )

    def __repr__(self) -> str:
        return f"ApiClient(base_url={self.base_url!r}, auth_state={self.auth_state!r})"

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- status --

    @property
    def auth_state(self) -> AuthState:
        return self._tokens.state

    @property
    def token_expires_at(self) -> datetime | None:
        """When the current access token expires (for ``status``); None before authenticating."""
        return self._tokens.token_expires_at

    def set_api_key(self, api_key: str) -> None:
        self._tokens.set_api_key(api_key)

    def hold_authentication(self, until: float) -> None:
        """Keep to a pause after the API key was refused, begun by an earlier process (wall time)."""
        self._tokens.hold(until)

    @property
    def token_stale_at(self) -> float | None:
        """When the access token is due for renewal (wall time; None before authenticating)."""
        return self._tokens.stale_at

    def ensure_token(self) -> None:
        """Refresh (or re-authenticate) now if the access token is within a minute of expiry."""
        self._tokens.access_token()

    # -- agent-facing calls --

    def enroll(self, bootstrap_token: str, facts: Mapping[str, Any], *, wait: bool = True) -> Enrollment:
        answer = self._call_json(
            "POST",
            "/v1/agents/enroll",
            json=facts,
            auth=False,
            headers={"Authorization": f"Bearer {bootstrap_token}"},
            extra_secrets=(bootstrap_token,),
            wait=wait,
        )
        enrollment = Enrollment(*enrollment_fields(answer))
        self._tokens.set_api_key(enrollment.api_key)
        log.info("enrolled as host %s (agent %s)", enrollment.host_id, enrollment.agent_id)
        return enrollment

    def heartbeat(
        self,
        host_id: str,
        body: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        wait: bool = True,
        attempts: int | None = None,
    ) -> JSONDict:
        """The answer, with `poll_interval`, `policy_version` and `pending_instructions` left out
        unless they are numbers in range (answers.heartbeat_answer)."""
        answer = self._call_json(
            "POST",
            f"/v1/hosts/{_seg(host_id)}/heartbeat",
            json=body,
            idempotency_key=idempotency_key,
            wait=wait,
            attempts=attempts,
        )
        return heartbeat_answer(answer)

    def put_inventory(
        self,
        host_id: str,
        inventory_json: Mapping[str, Any] | str,
        *,
        idempotency_key: str | None = None,
        wait: bool = True,
        attempts: int | None = None,
    ) -> JSONDict:
        """`inventory_json`: the document, or its JSON text (Inventory.to_json_text)."""
        return self._call_json(
            "PUT",
            f"/v1/hosts/{_seg(host_id)}/inventory",
            **_json_body(inventory_json),
            idempotency_key=idempotency_key,
            wait=wait,
            attempts=attempts,
        )

    def post_events(
        self, host_id: str, events_json_list: Sequence[Mapping[str, Any]], *, wait: bool = True
    ) -> EventBatchResult:
        """Send events in order, at most 500 per call.

        A batch refused with VALIDATION_ERROR is split (at the index the server names, else in
        halves) until the bad events stand alone; those are dropped and logged by id and reason,
        never content. Other errors propagate (the outbox keeps everything and resends; the
        server ignores ids it has already seen).
        """
        path = f"/v1/hosts/{_seg(host_id)}/events"
        result: EventBatchResult = {"accepted": 0, "duplicates": 0, "accepted_ids": [], "dropped": []}
        events = list(events_json_list)
        for start in range(0, len(events), MAX_EVENTS_PER_CALL):
            self._post_event_batch(path, events[start : start + MAX_EVENTS_PER_CALL], result, wait)
        return result

    def get_instructions(
        self, host_id: str, *, wait_s: int | None = None, attempts: int | None = None, wait: bool = True
    ) -> Instructions:
        """Pending instructions (§6); with `wait_s` (1..60) the server may hold the request until one
        is pending or `wait_s` passed (§6.1), and the read timeout and the deadline grow by `wait_s`.
        `attempts`: see `_call` (the instruction channel makes one and decides itself what follows a
        failure). Items that are not strings and an out-of-range poll interval are left out
        (answers.instructions_answer)."""
        path = f"/v1/hosts/{_seg(host_id)}/instructions"
        if wait_s is not None:
            if not 1 <= wait_s <= MAX_WAIT_S:
                raise ValueError(f"wait_s must be 1..{MAX_WAIT_S}")
            path += f"?wait={wait_s}"
        answer = self._call_json(
            "GET",
            path,
            wait=wait,
            attempts=attempts,
            hold_s=float(wait_s or 0),
            max_answer=MAX_INSTRUCTIONS_ANSWER_BYTES,
        )
        instructions, poll_interval = instructions_answer(answer)
        return Instructions(instructions, poll_interval, answer.get("wait_supported") is True)

    def post_instruction_result(
        self, jti: str, body: Mapping[str, Any], *, idempotency_key: str | None = None, wait: bool = True
    ) -> JSONDict:
        return self._call_json(
            "POST",
            f"/v1/instructions/{_seg(jti)}/result",
            json=body,
            idempotency_key=idempotency_key,
            wait=wait,
        )

    def put_scan_result(
        self,
        scan_id: str,
        inventory_json: Mapping[str, Any] | str,
        *,
        idempotency_key: str | None = None,
        wait: bool = True,
    ) -> JSONDict:
        """`inventory_json`: the document, or its JSON text (Inventory.to_json_text)."""
        return self._call_json(
            "PUT",
            f"/v1/scans/{_seg(scan_id)}/result",
            **_json_body(inventory_json),
            idempotency_key=idempotency_key,
            wait=wait,
        )

    def get_policy(
        self, host_id: str, etag: str | None, *, wait: bool = True, attempts: int | None = None
    ) -> tuple[JSONDict | None, str | None]:
        """(policy, etag); (None, etag) when the server answers 304 Not Modified."""
        headers = {"If-None-Match": etag} if etag else None
        response = self._call(
            "GET",
            f"/v1/hosts/{_seg(host_id)}/policy",
            headers=headers,
            wait=wait,
            attempts=attempts,
            not_modified_ok=bool(etag),
        )
        if response.status_code == 304:
            return None, etag
        return _json_object(response), answer_etag(response.headers.get("ETag", etag))

    # -- the request engine --

    def _token_post(self, path: str, body: Mapping[str, Any]) -> Mapping[str, Any]:
        # One attempt: a token exchange happens inside another call (or the link's token duty),
        # whose owner retries on its own schedule. Retrying here too multiplied every call's
        # attempts during an outage (the fleet simulator measured ~5x the load).
        return self._call_json("POST", path, json=body, auth=False, attempts=TOKEN_CALL_ATTEMPTS)

    def _call_json(self, method: str, path: str, **kwargs: Any) -> JSONDict:
        return _json_object(self._call(method, path, **kwargs))

    def _call(
        self,
        method: str,
        path: str,
        *,
        json: Mapping[str, Any] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        auth: bool = True,
        idempotency_key: str | None = None,
        extra_secrets: Iterable[str] = (),
        wait: bool = True,
        attempts: int | None = None,
        hold_s: float = 0.0,
        max_answer: int = MAX_ANSWER_BYTES,
        not_modified_ok: bool = False,
        deadline_s: float | None = None,
    ) -> httpx.Response:
        """One logical call: the shell that carries out CallRetry's decisions (agent/control/retry.py).

        `attempts`: tries at most (default `backoff.max_attempts`); `hold_s`: the server may hold
        this request that long before answering (a long-poll), so the read timeout and the deadline
        grow by it; `max_answer`: the answer's cap in bytes; `not_modified_ok`: a conditional GET,
        for which a 304 is an answer; `deadline_s`: each attempt's deadline before the hold
        (default `Timeouts.total`)."""
        cls = classify(method, path)
        send_headers = dict(headers or {})
        if content is not None:
            send_headers["Content-Type"] = "application/json"
        if method.upper() in _WRITE_METHODS:
            send_headers["Idempotency-Key"] = idempotency_key or str(uuid.uuid4())
        request = _Request(
            method,
            path,
            json,
            content,
            send_headers,
            self._timeout_holding(hold_s),
            (self._deadline_s if deadline_s is None else deadline_s) + hold_s,
            max_answer,
            not_modified_ok,
        )
        retry = CallRetry(self.backoff, attempts=attempts, wait=wait, not_modified_ok=not_modified_ok)
        while True:
            self._await_budget(cls, wait)
            token = self._tokens.access_token() if auth else None  # its errors are final here
            if token is not None:
                send_headers["Authorization"] = f"Bearer {token}"
            response, err, attempt = self._attempt(request, extra_secrets)
            if self._on_attempt is not None:
                self._on_attempt(cls, attempt)
            decision = retry.decide(attempt, self._rng, authenticated=token is not None)
            if decision.hold_class_s is not None:
                self._hold_class(cls, decision.hold_class_s, attempt)
            if decision.verdict == "done":  # a delivered answer ends the call whatever else is true
                assert response is not None
                return response
            assert err is not None
            if attempt.status == 429:
                err.details.setdefault("retry_after", round(decision.hold_class_s or 0.0, 3))
            if decision.verdict == "renew":
                log.info("%s %s: access token refused (%s); renewing once", method, path, err.code)
                self._tokens.reject(token or "")
                continue
            if decision.verdict == "give_up":
                self._log_final(method, path, err, decision.failures, retry.attempts)
                raise err
            if attempt.status != 429:  # a 429 waits in _await_budget: its class is held
                # Debug only: the caller (the daemon's LinkHealth) logs a failed call, throttled.
                log.debug(
                    "%s %s: %s; retry %d/%d in %.2f s",
                    method,
                    path,
                    err,
                    decision.failures,
                    retry.attempts - 1,
                    decision.sleep_s,
                )
                self._sleep(decision.sleep_s)

    def _attempt(
        self, request: _Request, extra_secrets: Iterable[str]
    ) -> tuple[httpx.Response | None, ApiError | None, Attempt]:
        """Send once: (the answer, when one was read; the error, unless the answer delivers; what
        happened, for CallRetry). Only a 2xx, or an asked-for 304, delivers (answers.judge_status,
        which CallRetry applies to the same status)."""
        try:
            response = self._exchange(request)
        except httpx.UnsupportedProtocol as exc:
            return None, ApiError(TRANSPORT_ERROR, f"unsupported URL: {exc}"), Attempt(None, "unsupported")
        except httpx.TransportError as exc:  # timeouts (the deadline too), connection and protocol errors
            kind = transport_kind(exc)
            err = ApiError(TRANSPORT_ERROR, f"{type(exc).__name__}: {exc}", {"transport": kind})
            return None, err, Attempt(None, kind)
        except ApiError as exc:  # an answer refused unread (too large, compressed): transient
            return None, exc, Attempt(None, "unread")
        status = response.status_code
        budget_wait = exhausted_budget_wait(
            response.headers.get("X-RateLimit-Remaining"), response.headers.get("X-RateLimit-Reset")
        )
        verdict = judge_status(status, not_modified_ok=request.not_modified_ok)
        if verdict == "delivered":
            return response, None, Attempt(status, budget_wait=budget_wait)
        if verdict == "redirect":
            err = redirect_error(status, response.headers.get("Location"))
        elif verdict == "unexpected":
            err = unexpected_status_error(status)
        else:
            err = error_from_response(status, response.content, (*self._tokens.secrets(), *extra_secrets))
        retry_after = None
        if status == 429:
            # Header, else details; held to an hour (answers.retry_after_s): "centuries" is not for ever.
            now_wall = datetime.fromtimestamp(self._clock(), UTC)
            retry_after = retry_after_s(parse_retry_after(response.headers.get("Retry-After"), now_wall))
            if retry_after is None:
                retry_after = retry_after_s(err.details.get("retry_after"))
        return response, err, Attempt(status, retry_after=retry_after, budget_wait=budget_wait)

    def _exchange(self, request: _Request) -> httpx.Response:
        """One attempt under the call's deadline (grown for a large upload), its answer read up to
        the call's cap (an error answer up to MAX_ERROR_BODY_BYTES, cut there): transfer.py.
        Raises httpx.TransportError (the deadline passed: a timeout) or ApiError (too large)."""
        sent = self._http.build_request(
            request.method,
            request.path,
            json=request.json,
            content=request.content,
            headers=request.headers,
            timeout=request.timeout,
        )
        upload = len(sent.content)
        with deadline(request.deadline_s + upload / UPLOAD_FLOOR_BYTES_PER_S):
            streamed = self._http.send(sent, stream=True)
            try:
                if 200 <= streamed.status_code < 300:
                    body = read_capped(streamed, request.max_answer)
                else:
                    body = read_capped(streamed, MAX_ERROR_BODY_BYTES, truncate=True)
            finally:
                streamed.close()
        return httpx.Response(streamed.status_code, headers=streamed.headers, content=body, request=sent)

    def _hold_class(self, cls: RequestClass, seconds: float, attempt: Attempt) -> None:
        """No call of `cls` for `seconds`: the server throttled it (429) or said its budget is spent."""
        self.budget.block_until(cls, self._monotonic() + seconds)
        if attempt.status == 429:
            log.warning(
                "%s calls rate limited by the server (RATE_LIMITED); pausing them for %.2f s", cls, seconds
            )
        else:
            log.info("%s budget spent on the server; next %s call in %.0f s", cls, cls, seconds)

    @staticmethod
    def _log_final(method: str, path: str, err: ApiError, failures: int, attempts: int) -> None:
        if err.code == VALIDATION_ERROR:
            log.warning("%s %s refused: %s details=%s", method, path, err, err.details)
        elif attempts > 1 and failures >= attempts:
            # Debug only: the caller (the daemon's LinkHealth) logs a failed call, throttled.
            log.debug("%s %s failed after %d attempts: %s", method, path, failures, err)

    def _timeout_holding(self, hold_s: float) -> httpx.Timeout:
        """The client's timeouts, the read timeout grown by a long-poll's hold."""
        base = self._http.timeout
        if hold_s <= 0:
            return base
        return httpx.Timeout(
            connect=base.connect, read=(base.read or 0.0) + hold_s, write=base.write, pool=base.pool
        )

    def _await_budget(self, cls: RequestClass, wait: bool) -> None:
        while True:
            delay = self.budget.acquire(cls, self._monotonic())
            if delay <= 0:
                return
            if not wait:
                raise ApiError(
                    RATE_LIMITED,
                    f"client-side rate budget for {cls} calls exhausted",
                    {"retry_after": round(delay, 3), "class": cls, "local": True},
                )
            log.debug("%s budget: waiting %.2f s", cls, delay)
            self._sleep(delay)

    def _post_event_batch(
        self, path: str, batch: Sequence[Mapping[str, Any]], result: EventBatchResult, wait: bool
    ) -> None:
        try:
            answer = self._call_json("POST", path, json={"events": list(batch)}, wait=wait)
        except ApiError as err:
            if err.code != VALIDATION_ERROR:
                raise
            if len(batch) == 1:
                event_id = str(batch[0].get("id"))
                reason = _reason(err)
                log.warning("dropping event %s rejected by the server: %s", event_id, reason)
                result["dropped"].append({"id": event_id, "reason": reason})
                return
            for part in split_batch(batch, bad_index_hint(err.details, len(batch))):
                self._post_event_batch(path, part, result, wait)
            return
        accepted = answer.get("accepted")
        duplicates = answer.get("duplicates")
        result["accepted"] += accepted if isinstance(accepted, int) else 0
        result["duplicates"] += duplicates if isinstance(duplicates, int) else 0
        result["accepted_ids"].extend(str(event.get("id")) for event in batch)


def bad_index_hint(details: Mapping[str, Any], size: int) -> int | None:
    """The batch index the server blamed, when its details name one (only a hint: every part is
    re-sent, so a wrong hint costs a request, never an event)."""
    for key in ("index", "event_index"):
        value = details.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < size:
            return value
    for key in ("indices", "indexes", "invalid"):
        values = details.get(key)
        if isinstance(values, list):
            for value in values:
                if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < size:
                    return value
    return None


def split_batch(batch: Sequence[Mapping[str, Any]], hint: int | None) -> list[Sequence[Mapping[str, Any]]]:
    """Split a refused batch (len >= 2) in order: around the blamed index, else in halves."""
    if hint is None:
        middle = len(batch) // 2
        return [batch[:middle], batch[middle:]]
    parts = [batch[:hint], batch[hint : hint + 1], batch[hint + 1 :]]
    return [part for part in parts if part]


def _reason(err: ApiError) -> str:
    """Why the server refused a lone event: its per-event reason when details give one."""
    text = err.message
    reason = err.details.get("reason")
    errors = err.details.get("errors")
    if isinstance(reason, str) and reason:
        text = reason
    elif isinstance(errors, list) and errors and isinstance(errors[0], dict):
        first = errors[0].get("reason")
        text = first if isinstance(first, str) and first else text
    return f"{err.code}: {text[:200]}"


def _json_object(response: httpx.Response) -> JSONDict:
    return json_object(response.content, response.status_code)


__all__ = [
    "AUTH_INVALID",
    "ApiClient",
    "DroppedEvent",
    "Enrollment",
    "EventBatchResult",
    "Instructions",
    "Timeouts",
    "tls_context",
]
