"""Transport-neutral request/answer values, so routing and handlers never touch sockets."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .longpoll import Hold


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query string
    query: dict[str, str]  # first value of each parameter
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def json(self) -> Any:
        """The body as JSON; an empty body reads as {}. Malformed JSON is a 400 VALIDATION_ERROR."""
        from .errors import ApiError  # errors imports this module

        if not self.body.strip():
            return {}
        try:
            return json.loads(self.body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError(400, "request body is not valid JSON", {"reason": type(exc).__name__}) from None

    def json_object(self) -> dict[str, Any]:
        from .errors import ApiError

        value = self.json()
        if not isinstance(value, dict):
            raise ApiError(422, "request body must be a JSON object")
        return value


@dataclass
class Response:
    status: int
    body: Any = None  # None = no body (204/304)
    headers: dict[str, str] = field(default_factory=dict)
    hold: Hold | None = None  # §6.1: the server holds this answer until an instruction or the wait's end

    def encoded(self) -> bytes:
        if self.body is None:
            return b""
        return json.dumps(self.body, separators=(",", ":"), sort_keys=True).encode()
