"""/_test/... : the ControlPlane test helpers over HTTP (administrator credentials required).

Not part of the contract; not subject to faults, rate limits or the request log.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from .errors import ApiError
from .messages import Request, Response

if TYPE_CHECKING:
    from .server import ControlPlane


def _opt_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise ApiError(422, f"{name} must be a string", {"field": name})
    return value


def _int(body: dict[str, Any], name: str, default: int | None = None) -> int:
    value = body.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ApiError(422, f"{name} must be an integer", {"field": name})
    return value


def _validator_rejecting(ids: set[str], types: set[str]) -> Any:
    def validate(event: dict[str, Any]) -> str | None:
        if event.get("id") in ids or event.get("type") in types:
            return "rejected by test validator"
        return None

    return validate


def _number(body: dict[str, Any], name: str, default: float) -> float:
    value = body.get(name, default)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ApiError(422, f"{name} must be a number", {"field": name})
    return float(value)


def _redirect(cp: ControlPlane, body: dict[str, Any]) -> None:
    location = _opt_str(body, "location") or "https://elsewhere.example:8443/v1/moved?token=not-for-logs"
    cp.faults.redirect_next(
        _int(body, "n", 1), _int(body, "status", 302), location, _opt_str(body, "path_prefix")
    )


def _answer(cp: ControlPlane, body: dict[str, Any]) -> None:
    headers = body.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise ApiError(422, "headers must be an object of strings", {"field": "headers"})
    content = (_opt_str(body, "body") or "").encode()
    cp.faults.answer_next(
        _int(body, "n", 1), _int(body, "status"), content, headers, _opt_str(body, "path_prefix")
    )


def _huge(cp: ControlPlane, body: dict[str, Any]) -> None:
    cp.faults.huge_answer_next(
        _int(body, "n", 1), _int(body, "size"), _opt_str(body, "path_prefix"), bool(body.get("declare", True))
    )


def _dribble(cp: ControlPlane, body: dict[str, Any]) -> None:
    phase = _opt_str(body, "phase") or "body"
    if phase not in ("body", "headers"):
        raise ApiError(422, "phase must be body or headers", {"field": "phase"})
    cp.faults.dribble_next(
        _int(body, "n", 1), _number(body, "interval", 1.0), _opt_str(body, "path_prefix"), phase
    )


_HOSTILE = {"redirect": _redirect, "answer": _answer, "huge": _huge, "dribble": _dribble}


def handle_test_request(cp: ControlPlane, req: Request) -> Response:
    try:
        cp._app.admin_principal(req)
        return _route(cp, req)
    except ApiError as exc:
        return exc.response()


def _route(cp: ControlPlane, req: Request) -> Response:  # noqa: C901 - a flat dispatch table
    body = req.json_object() if req.method in ("POST", "PUT") else {}
    path, method = req.path, req.method
    host = re.fullmatch(r"/_test/hosts/([^/]+)/(events|inventory|forget)", path)
    if method == "POST" and path == "/_test/faults/fail":
        retry_after = body.get("retry_after")
        cp.faults.fail_next(
            _int(body, "n", 1),
            _int(body, "status", 503),
            _opt_str(body, "code"),
            _opt_str(body, "path_prefix"),
            retry_after if isinstance(retry_after, int | float | str) else None,
        )
    elif method == "POST" and path == "/_test/faults/delay":
        seconds = body.get("seconds")
        if not isinstance(seconds, int | float) or isinstance(seconds, bool):
            raise ApiError(422, "seconds must be a number", {"field": "seconds"})
        cp.faults.delay(float(seconds), _opt_str(body, "path_prefix"))
    elif method == "POST" and path == "/_test/faults/drop":
        cp.faults.drop_next(
            _int(body, "n", 1), _opt_str(body, "path_prefix"), bool(body.get("after_processing"))
        )
    elif method == "POST" and path.startswith("/_test/faults/") and path.rsplit("/", 1)[1] in _HOSTILE:
        _HOSTILE[path.rsplit("/", 1)[1]](cp, body)
    elif method == "POST" and path == "/_test/faults/cut-idle":
        seconds = body.get("seconds")
        if seconds is not None and (not isinstance(seconds, int | float) or isinstance(seconds, bool)):
            raise ApiError(422, "seconds must be a number or null", {"field": "seconds"})
        cp.faults.cut_idle(None if seconds is None else float(seconds))
    elif method == "POST" and path == "/_test/long-poll":
        cp.long_poll = bool(body.get("enabled", True))
    elif method == "POST" and path == "/_test/faults/clear":
        cp.faults.clear()
    elif method == "POST" and path == "/_test/tokens/expire-access":
        return Response(200, {"expired": cp.expire_access_tokens()})
    elif method == "POST" and path == "/_test/tokens/expire-refresh":
        return Response(200, {"expired": cp.expire_refresh_tokens()})
    elif method == "POST" and path == "/_test/api-keys/revoke":
        target = _opt_str(body, "api_key") or _opt_str(body, "host_id")
        if not target:
            raise ApiError(422, "api_key or host_id is required")
        return Response(200, {"revoked": cp.revoke_api_key(target)})
    elif method == "POST" and path == "/_test/poll-interval":
        cp.poll_interval = _int(body, "seconds")
    elif method == "POST" and path == "/_test/event-validator":
        ids, types = body.get("reject_ids") or [], body.get("reject_types") or []
        cp.set_event_validator(_validator_rejecting(set(ids), set(types)) if ids or types else None)
    elif method == "POST" and path == "/_test/instructions":
        host_id, kind = _opt_str(body, "host_id"), _opt_str(body, "kind")
        if not host_id or not kind or not isinstance(body.get("body", {}), dict):
            raise ApiError(422, "host_id, kind and an object body are required")
        try:
            jws = cp.issue_instruction(
                host_id,
                kind,
                body.get("body", {}),
                exp_s=_int(body, "exp_s", 3600),
                sign=bool(body.get("sign", True)),
                alg=_opt_str(body, "alg") or "EdDSA",
                aud=_opt_str(body, "aud"),
            )
        except KeyError:
            raise ApiError(404, "host not found", {"host_id": host_id}) from None
        except ValueError as exc:
            raise ApiError(422, str(exc)) from None
        return Response(201, {"jws": jws})
    elif method == "GET" and path == "/_test/requests":
        return Response(200, {"requests": [r._asdict() for r in list(cp.requests)]})
    elif method == "GET" and path == "/_test/instruction-results":
        return Response(200, {"results": cp.instruction_results()})
    elif host and method == "GET" and host.group(2) == "events":
        h = host.group(1)
        return Response(200, {"events": cp.events(h), "duplicates": cp.duplicate_count(h)})
    elif host and method == "GET" and host.group(2) == "inventory":
        return Response(200, {"inventory": cp.inventory(host.group(1))})
    elif host and method == "POST" and host.group(2) == "forget":
        return Response(200, {"forgotten": cp.forget_host(host.group(1))})
    else:
        raise ApiError(404, "no such test endpoint", {"path": path})
    return Response(200, {"ok": True})
