"""The control plane's uniform error model (the shape of the published SDK's QcError).

Every failure of a control-plane call surfaces as one ApiError carrying the server's
``code``, ``message`` and ``details`` plus the HTTP ``status`` (None for transport
failures and for errors raised locally, e.g. an exhausted client-side rate budget).
str() and repr() show only the code, status and a bounded message: callers may log
them. Messages that come from the server are scrubbed of any secret the client knows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

AUTH_INVALID = "AUTH_INVALID"
AUTH_FORBIDDEN = "AUTH_FORBIDDEN"
NOT_FOUND = "NOT_FOUND"
RATE_LIMITED = "RATE_LIMITED"
VALIDATION_ERROR = "VALIDATION_ERROR"
TRANSPORT_ERROR = "TRANSPORT_ERROR"
SERVER_ERROR = "SERVER_ERROR"
HTTP_ERROR = "HTTP_ERROR"  # a 4xx the contract does not name (e.g. 409); not retried
HTTP_REDIRECT = "HTTP_REDIRECT"  # a 3xx: never followed, never success; transient (contract section 1)
UNEXPECTED_ANSWER = "UNEXPECTED_ANSWER"  # a status no call expects (1xx final, stray 304, 6xx); transient
ANSWER_TOO_LARGE = "ANSWER_TOO_LARGE"  # past the call's answer cap, or compressed though not asked; transient
TRANSIENT_CODES = frozenset(
    {TRANSPORT_ERROR, SERVER_ERROR, HTTP_REDIRECT, UNEXPECTED_ANSWER, ANSWER_TOO_LARGE}
)

MAX_MESSAGE_CHARS = 300
REDACTED = "[REDACTED]"

_CODE_BY_STATUS = {
    400: VALIDATION_ERROR,
    401: AUTH_INVALID,
    403: AUTH_FORBIDDEN,
    404: NOT_FOUND,
    422: VALIDATION_ERROR,
    429: RATE_LIMITED,
}


class ApiError(Exception):
    """A control-plane call failed; ``code`` says how (see the module constants)."""

    def __init__(
        self,
        code: str,
        message: str,
        details: Mapping[str, Any] | None = None,
        status: int | None = None,
    ) -> None:
        self.code = code
        self.message = message[:MAX_MESSAGE_CHARS]
        self.details: dict[str, Any] = dict(details or {})
        self.status = status
        super().__init__(self.code, self.message)

    def __str__(self) -> str:
        where = f"HTTP {self.status}" if self.status is not None else "local"
        return f"{self.code} ({where}): {self.message}"

    def __repr__(self) -> str:
        return f"ApiError(code={self.code!r}, status={self.status!r}, message={self.message!r})"

    @property
    def transient(self) -> bool:
        """5xx, timeouts, connection errors, redirects and answers the agent refuses: worth
        retrying with backoff (the data waits in the outbox meanwhile)."""
        return self.code in TRANSIENT_CODES


def code_for_status(status: int) -> str:
    if status >= 500:
        return SERVER_ERROR
    return _CODE_BY_STATUS.get(status, HTTP_ERROR)


def scrub(value: Any, secrets: Iterable[str]) -> Any:
    """Replace every known secret inside strings of a JSON-like value with [REDACTED]."""
    needles = [s for s in secrets if s]
    if not needles:
        return value
    if isinstance(value, str):
        for needle in needles:
            value = value.replace(needle, REDACTED)
        return value
    if isinstance(value, Mapping):
        return {str(k): scrub(v, needles) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v, needles) for v in value]
    return value


def error_from_response(status: int, body: bytes, secrets: Iterable[str] = ()) -> ApiError:
    """Build the ApiError for a non-2xx answer (pure).

    The body should be ``{"error": {"code", "message", "details"}}``; anything else (a proxy's
    HTML page, an empty body) still yields an error whose code follows the HTTP status. A 5xx
    is always SERVER_ERROR so the retry decision never depends on a server's spelling.
    """
    code = code_for_status(status)
    message = f"HTTP {status}"
    details: dict[str, Any] = {}
    try:
        parsed = json.loads(body.decode("utf-8")) if body else None
    except (ValueError, RecursionError):  # not UTF-8 or not JSON; nested past the parser's limit
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        err = parsed["error"]
        if isinstance(err.get("code"), str) and status < 500:
            code = err["code"]
        if isinstance(err.get("message"), str):
            message = err["message"]
        if isinstance(err.get("details"), dict):
            details = err["details"]
    secret_list = list(secrets)
    return ApiError(code, scrub(message, secret_list), scrub(details, secret_list), status)
