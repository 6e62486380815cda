"""What the agent accepts as an answer from the control plane (pure: statuses, bodies, fields).

Every byte from the server is hostile until checked (docs/api.md, "Answers the agent refuses"):

- `judge_status`: only a 2xx delivers; a 304 only answers a conditional GET that asked for it;
  a 3xx is never followed and never success (contract section 1): a failed call, transient like a
  5xx; a status outside 200-599 is a failed call too. 4xx/5xx go on to the error model (errors.py).
- `redirect_error` names the redirect's host, never its path or query (they may carry tokens).
- `json_object`: a body is a JSON object or the call failed (not JSON, another JSON value, nested
  past the parser's recursion limit: all SERVER_ERROR, transient).
- Fields the agent reads are checked for type and range; a field that fails is left out (the
  caller then does without it) or, where the call cannot do without it (enrollment), the call
  fails.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Literal
from urllib.parse import urlsplit

from agent.control.errors import HTTP_REDIRECT, SERVER_ERROR, UNEXPECTED_ANSWER, ApiError

JSONDict = dict[str, Any]
Verdict = Literal["delivered", "redirect", "unexpected", "error"]

_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
# What may go into an Authorization header or a 0600 file as one token: visible ASCII, no blanks.
_CREDENTIAL = re.compile(r"[\x21-\x7e]{1,16384}")
_HOST = re.compile(r"[A-Za-z0-9.\-:\[\]]{1,255}")
MAX_INTERVAL_S = 86_400  # a poll interval past a day is not believed
MAX_RETRY_AFTER_S = 3600.0  # a 429's wait is held to an hour (as an X-RateLimit-Reset is, backoff.py)
MAX_COUNT = 2**53  # counters (versions, pending instructions) fit a JSON number exactly


def judge_status(status: int, *, not_modified_ok: bool = False) -> Verdict:
    """How to take an answer's status (see the module docstring)."""
    if 200 <= status < 300 or (status == 304 and not_modified_ok):
        return "delivered"
    if 300 <= status < 400 and status != 304:
        return "redirect"
    if 400 <= status < 600:
        return "error"
    return "unexpected"  # 1xx as a final answer, a 304 nobody asked for, 6xx and beyond


def redirect_host(location: str | None) -> str:
    """The host a Location points at, for a log line: never its path, query or credentials."""
    if not location:
        return "(no Location)"
    try:
        parts = urlsplit(location.strip())
        host = parts.hostname
        port = parts.port
    except ValueError:
        return "(unparsable Location)"
    if not host:
        return "(the same host)"
    if not _HOST.fullmatch(host):
        return "(a host name with odd characters)"
    return f"{host}:{port}" if port else host


def redirect_error(status: int, location: str | None) -> ApiError:
    return ApiError(
        HTTP_REDIRECT,
        f"redirect to {redirect_host(location)} not followed: only a 2xx delivers",
        {"redirect_host": redirect_host(location)},
        status,
    )


def unexpected_status_error(status: int) -> ApiError:
    what = "304 Not Modified to a request that was not conditional" if status == 304 else "status"
    return ApiError(UNEXPECTED_ANSWER, f"unexpected {what} {status}", {}, status)


def json_object(body: bytes, status: int | None) -> JSONDict:
    """The answer's JSON object ({} for an empty body: a 204, a write answered with nothing)."""
    if not body:
        return {}
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise ApiError(SERVER_ERROR, "answer is not JSON", status=status) from None
    if not isinstance(value, dict):
        raise ApiError(SERVER_ERROR, "answer is not a JSON object", status=status)
    return value


def number_in(value: object, low: float, high: float) -> bool:
    """A JSON number (not a boolean), finite, within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return low <= value <= high


def interval_s(value: object) -> int | float | None:
    """A poll interval from the server: seconds in 1..86400, else None."""
    return value if number_in(value, 1, MAX_INTERVAL_S) else None  # type: ignore[return-value]


def retry_after_s(value: object) -> float | None:
    """A 429's wait (seconds, from the header as parsed or from `details.retry_after`): a number
    held to 0..MAX_RETRY_AFTER_S ("centuries" is an hour, not for ever), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:  # NaN
        return None
    return MAX_RETRY_AFTER_S if value > MAX_RETRY_AFTER_S else max(0.0, float(value))


def count(value: object) -> int | None:
    """A version or a count: an integer in 0..2**53, else None."""
    return value if isinstance(value, int) and number_in(value, 0, MAX_COUNT) else None


def heartbeat_answer(answer: JSONDict) -> JSONDict:
    """The heartbeat answer with its known fields checked; a field that fails is left out."""
    checks = {"poll_interval": interval_s, "policy_version": count, "pending_instructions": count}
    out = {k: v for k, v in answer.items() if k not in checks}
    for name, check in checks.items():
        if name in answer and check(answer[name]) is not None:
            out[name] = answer[name]
    return out


def instructions_answer(answer: JSONDict) -> tuple[list[str], int | float | None]:
    """(the JWS strings of the list, the poll interval or None); other items are left out."""
    raw = answer.get("instructions")
    instructions = [item for item in raw if isinstance(item, str)] if isinstance(raw, list) else []
    return instructions, interval_s(answer.get("poll_interval"))


def enrollment_fields(answer: JSONDict) -> tuple[str, str, str]:
    """(host_id, agent_id, api_key) of an enrollment answer; the call fails without all three,
    each of a shape that can go into a URL path, a log line, a header and a file."""
    host_id, agent_id, api_key = (answer.get(k) for k in ("host_id", "agent_id", "api_key"))
    for name, value, shape in (
        ("host_id", host_id, _ID),
        ("agent_id", agent_id, _ID),
        ("api_key", api_key, _CREDENTIAL),
    ):
        if not isinstance(value, str) or not shape.fullmatch(value):
            raise ApiError(SERVER_ERROR, f"enrollment answer has no usable {name}")
    assert isinstance(host_id, str) and isinstance(agent_id, str) and isinstance(api_key, str)
    return host_id, agent_id, api_key


_ETAG = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,254}[\x21-\x7e])?")


def etag(value: str | None) -> str | None:
    """An ETag that can go back in If-None-Match (visible ASCII, up to 256 characters), or None."""
    return value if value is not None and _ETAG.fullmatch(value) else None


def credential(value: object) -> str | None:
    """A token as it may be sent in an Authorization header (visible ASCII, no blanks), or None."""
    return value if isinstance(value, str) and _CREDENTIAL.fullmatch(value) else None
