"""Administrator calls for revocation and CA trust (agent-api.md 6.2), and how an instruction's
result moves them. An operator revokes a key on many hosts at once:

    POST /v1/revocations {"hosts": ["web-01", ...] (default: every host),
                          "keys": [...], "fingerprints": [...], "certificates": [...]}
        -> 201 {"revocation_id", "hosts": {host_id: {"revoke": {"instruction_id", "status"}}}}
    POST /v1/revocations/{revocation_id}/withdraw {"hosts": [...]}   -> 202 (unrevoke_keys)
    GET  /v1/revocations/{revocation_id}
    POST /v1/cas {"hosts": [...], "public_key", "principals": {...}, "ca_id"?}  -> 201 (trust_ca)
    POST /v1/cas/{ca_id}/untrust {"hosts": [...]}                      -> 202 (untrust_ca)
    GET  /v1/cas/{ca_id}

Each host's part of an operation is `{"instruction_id", "status": "pending|applied|failed|
rejected|expired", "result"}`. The agent validates the bodies; here they are only shaped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import ApiError
from .messages import Request, Response
from .values import new_id, rfc3339

if TYPE_CHECKING:
    from .app import App, Principal

REVOCATION_KINDS = {"revoke_keys": "revoke", "unrevoke_keys": "unrevoke"}
CA_KINDS = {"trust_ca": "trust", "untrust_ca": "untrust"}


def _hosts(app: App, body: dict[str, Any]) -> list[dict[str, Any]]:
    refs = body.get("hosts")
    if refs is None:
        hosts = app.store.hosts()
        if not hosts:
            raise ApiError(422, "no hosts enrolled", {"field": "hosts"})
        return hosts
    if not isinstance(refs, list) or not refs:
        raise ApiError(422, "hosts must be a non-empty list", {"field": "hosts"})
    return [app._resolve_host(ref) for ref in refs]


def _hosts_again(app: App, body: dict[str, Any], doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The hosts named in `body`, else every host the operation `doc` went to."""
    return (
        _hosts(app, body) if body.get("hosts") is not None else [app._resolve_host(h) for h in doc["hosts"]]
    )


def _issue(
    app: App, kind: str, action: str, doc: dict[str, Any], body: dict[str, Any], hosts: list[Any]
) -> None:
    for host in hosts:
        jti, _ = app.issue_instruction(host["host_id"], kind, body)
        doc["hosts"].setdefault(host["host_id"], {})[action] = {
            "instruction_id": jti,
            "status": "pending",
            "result": None,
        }


def _lists(body: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for name in names:
        value = body.get(name)
        if value is not None and not isinstance(value, list):
            raise ApiError(422, f"{name} must be a list", {"field": name})
        if value:
            out[name] = value
    if not out:
        raise ApiError(422, "keys, fingerprints or certificates is required", {"field": "keys"})
    return out


def start_revocation(app: App, principal: Principal, params: dict[str, str], req: Request) -> Response:
    body = req.json_object()
    hosts = _hosts(app, body)
    revocation_id = new_id("rvk")
    instruction = {"revocation_id": revocation_id, **_lists(body, ("keys", "fingerprints", "certificates"))}
    doc: dict[str, Any] = {**instruction, "created_at": rfc3339(app.clock()), "hosts": {}}
    _issue(app, "revoke_keys", "revoke", doc, instruction, hosts)
    app.store.put_object("revocation", revocation_id, "*", doc)
    return Response(201, doc)


def withdraw_revocation(app: App, principal: Principal, params: dict[str, str], req: Request) -> Response:
    doc = app._object("revocation", params["revocation_id"])
    body = req.json_object()
    hosts = _hosts_again(app, body, doc)
    instruction = {k: doc[k] for k in ("revocation_id", "keys", "fingerprints", "certificates") if k in doc}
    _issue(app, "unrevoke_keys", "unrevoke", doc, instruction, hosts)
    app.store.put_object("revocation", doc["revocation_id"], "*", doc)
    return Response(202, doc)


def get_revocation(app: App, principal: Principal, params: dict[str, str], req: Request) -> Response:
    return Response(200, app._object("revocation", params["revocation_id"]))


def trust_ca(app: App, principal: Principal, params: dict[str, str], req: Request) -> Response:
    body = req.json_object()
    hosts = _hosts(app, body)
    public_key = body.get("public_key")
    if not isinstance(public_key, str) or not public_key:
        raise ApiError(422, "public_key must be a non-empty string", {"field": "public_key"})
    principals = body.get("principals") or {}
    if not isinstance(principals, dict):
        raise ApiError(422, "principals must be an object", {"field": "principals"})
    ca_id = body.get("ca_id") or new_id("ca")
    if not isinstance(ca_id, str):
        raise ApiError(422, "ca_id must be a string", {"field": "ca_id"})
    instruction = {"ca_id": ca_id, "public_key": public_key, "principals": principals}
    doc = app.store.get_object("ca", ca_id) or {"hosts": {}}
    doc.update(instruction, updated_at=rfc3339(app.clock()))
    _issue(app, "trust_ca", "trust", doc, instruction, hosts)
    app.store.put_object("ca", ca_id, "*", doc)
    return Response(201, doc)


def untrust_ca(app: App, principal: Principal, params: dict[str, str], req: Request) -> Response:
    doc = app._object("ca", params["ca_id"])
    body = req.json_object()
    hosts = _hosts_again(app, body, doc)
    _issue(app, "untrust_ca", "untrust", doc, {"ca_id": doc["ca_id"]}, hosts)
    app.store.put_object("ca", doc["ca_id"], "*", doc)
    return Response(202, doc)


def get_ca(app: App, principal: Principal, params: dict[str, str], req: Request) -> Response:
    return Response(200, app._object("ca", params["ca_id"]))


def follow_result(app: App, instruction: dict[str, Any], status: str, result: dict[str, Any]) -> bool:
    """Move a revocation's or CA's per-host status; True when the instruction was one of ours."""
    kind, body, host_id = instruction["kind"], instruction["body"] or {}, instruction["host_id"]
    if kind in REVOCATION_KINDS:
        object_kind, object_id, action = "revocation", body.get("revocation_id"), REVOCATION_KINDS[kind]
    elif kind in CA_KINDS:
        object_kind, object_id, action = "ca", body.get("ca_id"), CA_KINDS[kind]
    else:
        return False
    doc = app.store.get_object(object_kind, object_id) if isinstance(object_id, str) else None
    part = (doc or {}).get("hosts", {}).get(host_id, {}).get(action)
    if doc is None or part is None or part.get("instruction_id") != instruction["jti"]:
        return True  # issued directly (tests), not through these calls
    part.update(status=status, result=result)
    app.store.put_object(object_kind, object_id, "*", doc)
    return True
