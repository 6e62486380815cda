"""The contract's uniform error model: every non-2xx answer is {"error": {code, message, details}}."""

from __future__ import annotations

from typing import Any

from .messages import Response

# Codes the contract names, plus plain names for the statuses it leaves open (5xx, 405).
_DEFAULT_CODES = {
    400: "VALIDATION_ERROR",
    401: "AUTH_INVALID",
    403: "AUTH_FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    422: "VALIDATION_ERROR",
    429: "RATE_LIMITED",
    500: "INTERNAL_ERROR",
    502: "BAD_GATEWAY",
    503: "UNAVAILABLE",
    504: "GATEWAY_TIMEOUT",
}


def default_code(status: int) -> str:
    """The error code a status carries when nobody chose one."""
    if status in _DEFAULT_CODES:
        return _DEFAULT_CODES[status]
    return "INTERNAL_ERROR" if status >= 500 else "VALIDATION_ERROR"


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


class ApiError(Exception):
    """Raised by handlers; turned into the uniform error answer. The message is safe to send and log."""

    def __init__(
        self,
        status: int,
        message: str,
        details: dict[str, Any] | None = None,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or default_code(status)
        self.message = message
        self.details = details or {}
        self.headers = headers or {}

    def response(self) -> Response:
        return Response(self.status, error_body(self.code, self.message, self.details), dict(self.headers))
