"""The contract as request -> answer: routing, authentication, rate limits, idempotency, handlers.

No sockets here (see server.py); the wall clock is injected. One lock serialises every request, which
makes idempotent replay and event de-duplication race-free at the throughput tests need.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from . import trust_routes
from .errors import ApiError
from .keyview import apply_events, expired_grants
from .longpoll import Hold, Waiters
from .messages import Request, Response
from .ratelimit import SlidingWindowLimiter
from .signing import InstructionSigner, generate_ssh_keypair
from .store import Store
from .tokens import TokenError, TokenIssuer
from .values import new_id, new_secret, public_key_fingerprint, rfc3339, secret_hash

log = logging.getLogger("tests.controlplane")

MAX_EVENTS_PER_CALL = 500
INSTRUCTION_TTL_S = 3600
EVENT_TYPES = frozenset(
    {
        "key_added",
        "key_removed",
        "key_changed",
        "file_unreadable",
        "sshd_config_changed",
        "key_used",
        "instruction_applied",
        "instruction_failed",
    }
)
RESULT_STATUSES = frozenset({"applied", "failed", "rejected", "expired"})
# How an instruction result moves the resource it came from.
ROTATION_STATUS = {"applied": "applied", "failed": "failed", "rejected": "rejected", "expired": "failed"}
GRANT_STATUS = {"applied": "active", "failed": "failed", "rejected": "rejected", "expired": "expired"}
DEFAULT_POLICY: dict[str, Any] = {
    "min_rsa_bits": 2048,
    "allowed_types": ["ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa", "sk-ssh-ed25519@openssh.com"],
    "max_key_age_days": 365,
    "require_from_for_root": True,
    "ephemeral_max_ttl_s": 86400,
}
_POLICY_FIELDS: dict[str, Callable[[Any], bool]] = {
    "min_rsa_bits": lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
    "allowed_types": lambda v: isinstance(v, list) and all(isinstance(t, str) and t for t in v),
    "max_key_age_days": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    "require_from_for_root": lambda v: isinstance(v, bool),
    "ephemeral_max_ttl_s": lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
}

AuthMode = Literal["api_key_body", "refresh_body", "bootstrap", "host", "agent", "admin"]
EventValidator = Callable[[dict[str, Any]], object]


@dataclass(frozen=True)
class Principal:
    subject: str  # rate-limit and idempotency scope: host_id, "admin" or "bootstrap"
    role: Literal["agent", "admin", "bootstrap"]
    key_id: str | None
    token_jti: str | None = None


Handler = Callable[[Principal, dict[str, str], Request], Response]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    auth: AuthMode
    rate_class: str | None = None  # None: "read" for GET, else "write"


def _require_str(body: Mapping[str, Any], name: str, *, optional: bool = False) -> str | None:
    value = body.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise ApiError(422, f"{name} must be a non-empty string", {"field": name})
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bearer(req: Request) -> str:
    value = req.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "missing bearer credentials", {"reason": "missing"})
    return token.strip()


def _wait_seconds(value: str | None) -> int | None:
    """§6.1's `wait`: None when absent; 1..60 seconds, else 422."""
    if value is None:
        return None
    if not value.isdigit() or not 1 <= int(value) <= 60:
        raise ApiError(422, "wait must be an integer from 1 to 60", {"field": "wait"})
    return int(value)


def _etag_matches(header: str, etag: str) -> bool:
    candidates = [c.strip().removeprefix("W/") for c in header.split(",")]
    return "*" in candidates or etag in candidates


class App:
    def __init__(
        self,
        store: Store,
        issuer: TokenIssuer,
        signer: InstructionSigner,
        limiter: SlidingWindowLimiter,
        clock: Callable[[], float],
        *,
        poll_interval: int = 60,
    ) -> None:
        self.store = store
        self.issuer = issuer
        self.signer = signer
        self.limiter = limiter
        self.clock = clock
        self.poll_interval = poll_interval
        # §6.1: hold `wait` requests (False: an older server that ignores `wait` and answers at once).
        self.long_poll = True
        self.waiters = Waiters()
        self.event_validator: EventValidator | None = None
        self.bootstrap_token = new_secret("bt")
        self.admin_api_key = new_secret("sk_admin")
        self._bootstrap_hash = secret_hash(self.bootstrap_token)
        with store.lock, store.transaction():
            # A restart on a file database issues a new admin key; the old one stops working.
            store.revoke_api_keys(subject="admin")
            store.add_api_key(new_id("key"), secret_hash(self.admin_api_key), "admin", "admin", None, clock())
            if store.policy("default") is None:
                store.set_policy("default", dict(DEFAULT_POLICY), store.next_counter("policy_version"))
        self.routes = self._routes()

    # -- routing ------------------------------------------------------------------------------------
    def _routes(self) -> list[Route]:
        def r(
            method: str, path: str, handler: Handler, auth: AuthMode, rate_class: str | None = None
        ) -> Route:
            regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path)
            return Route(method, re.compile(f"^{regex}$"), handler, auth, rate_class)

        return [
            r("POST", "/v1/auth/token", self.auth_token, "api_key_body"),
            r("POST", "/v1/auth/refresh", self.auth_refresh, "refresh_body"),
            r("POST", "/v1/agents/enroll", self.enroll, "bootstrap"),
            r("GET", "/v1/hosts", self.list_hosts, "admin"),
            r("GET", "/v1/hosts/{host_id}", self.get_host, "host"),
            r("POST", "/v1/hosts/{host_id}/heartbeat", self.heartbeat, "host"),
            r("PUT", "/v1/hosts/{host_id}/inventory", self.put_inventory, "host"),
            r("POST", "/v1/hosts/{host_id}/events", self.post_events, "host"),
            r("GET", "/v1/hosts/{host_id}/instructions", self.get_instructions, "host"),
            r("GET", "/v1/hosts/{host_id}/policy", self.get_host_policy, "host"),
            r("POST", "/v1/instructions/{jti}/result", self.post_instruction_result, "agent"),
            r("GET", "/v1/keys", self.list_keys, "admin"),
            r("POST", "/v1/scans", self.start_scans, "admin", "scan"),
            r("GET", "/v1/scans/{scan_id}", self.get_scan, "admin"),
            r("PUT", "/v1/scans/{scan_id}/result", self.put_scan_result, "agent"),
            r("POST", "/v1/ephemeral", self.request_ephemeral, "admin", "ephemeral"),
            r("GET", "/v1/ephemeral/{grant_id}", self.get_grant, "admin"),
            r("POST", "/v1/ephemeral/{grant_id}/revoke", self.revoke_grant, "admin"),
            r("POST", "/v1/rotations", self.start_rotation, "admin"),
            r("GET", "/v1/rotations/{rotation_id}", self.get_rotation, "admin"),
            r("GET", "/v1/policies/{target}", self.get_policy, "admin"),
            r("PUT", "/v1/policies/{target}", self.put_policy, "admin"),
            *self._trust_routes(r),
        ]

    def _trust_routes(self, r: Callable[..., Route]) -> list[Route]:
        """Revocation and CA trust (trust_routes.py)."""

        def bound(fn: Callable[..., Response]) -> Handler:
            return lambda principal, params, req: fn(self, principal, params, req)

        t = trust_routes
        return [
            r("POST", "/v1/revocations", bound(t.start_revocation), "admin"),
            r("GET", "/v1/revocations/{revocation_id}", bound(t.get_revocation), "admin"),
            r("POST", "/v1/revocations/{revocation_id}/withdraw", bound(t.withdraw_revocation), "admin"),
            r("POST", "/v1/cas", bound(t.trust_ca), "admin"),
            r("GET", "/v1/cas/{ca_id}", bound(t.get_ca), "admin"),
            r("POST", "/v1/cas/{ca_id}/untrust", bound(t.untrust_ca), "admin"),
        ]

    def _match(self, req: Request) -> tuple[Route, dict[str, str]]:
        path_matched = False
        for route in self.routes:
            m = route.pattern.match(req.path)
            if m is None:
                continue
            path_matched = True
            if route.method == req.method:
                return route, m.groupdict()
        if path_matched:
            raise ApiError(405, f"method {req.method} not allowed here")
        raise ApiError(404, "no such resource", {"path": req.path})

    # -- the request pipeline -----------------------------------------------------------------------
    def handle(self, req: Request) -> Response:
        with self.store.lock:
            try:
                return self._handle(req)
            except ApiError as exc:
                return exc.response()
            except Exception as exc:
                # The type only (traceback at debug level): exception text may quote request content.
                log.error("internal error handling %s %s: %s", req.method, req.path, type(exc).__name__)
                log.debug("traceback", exc_info=True)
                return ApiError(500, "internal error").response()

    def _handle(self, req: Request) -> Response:
        route, params = self._match(req)
        principal = self._authenticate(route, params, req)
        rate_class = route.rate_class or ("read" if req.method == "GET" else "write")
        decision = self.limiter.hit(principal.subject, rate_class, self.clock())
        rate_headers = decision.headers()
        if not decision.allowed:
            raise ApiError(
                429,
                "Too many requests",
                {"retry_after": decision.retry_after, "class": rate_class},
                headers={**rate_headers, "Retry-After": str(decision.retry_after)},
            )
        key = req.headers.get("idempotency-key") if req.method in ("POST", "PUT", "PATCH", "DELETE") else None
        fingerprint = hashlib.sha256(f"{req.method} {req.path}\n".encode() + req.body).hexdigest()
        if key:
            stored = self.store.idempotent_answer(principal.subject, key)
            if stored is not None:
                if not hmac.compare_digest(stored[0], fingerprint):
                    raise ApiError(
                        422,
                        "Idempotency-Key reused for a different request",
                        {"reason": "idempotency_key_reuse"},
                    )
                return Response(
                    stored[1], stored[2], {**stored[3], **rate_headers, "Idempotent-Replayed": "true"}
                )
        try:
            with self.store.transaction():
                response = route.handler(principal, params, req)
        except ApiError as exc:
            response = exc.response()
        if key and response.status < 500 and response.status not in (401, 429):
            self.store.save_idempotent_answer(
                principal.subject, key, fingerprint, response.status, response.body, response.headers
            )
        response.headers.update(rate_headers)
        return response

    # -- authentication -----------------------------------------------------------------------------
    def _principal_for_key(self, key_id: str) -> Principal:
        row = self.store.api_key(key_id)
        if row is None or row["revoked"]:
            raise ApiError(401, "API key is invalid or revoked", {"reason": "api_key_revoked"})
        return Principal(str(row["subject"]), row["role"], key_id)

    def principal_from_access_token(self, token: str) -> Principal:
        try:
            claims = self.issuer.decode(token, "access", self.clock())
        except TokenError as exc:
            raise ApiError(401, f"access token {exc.reason}", {"reason": f"token_{exc.reason}"}) from None
        revoked = self.store.token_revocation(claims.jti)
        if revoked is not None:
            raise ApiError(401, f"access token {revoked}", {"reason": f"token_{revoked}"})
        principal = self._principal_for_key(claims.akid)
        return Principal(principal.subject, principal.role, principal.key_id, claims.jti)

    def principal_from_api_key(self, api_key: str) -> Principal:
        row = self.store.api_key_by_hash(secret_hash(api_key))
        if row is None or row["revoked"]:
            raise ApiError(401, "API key is invalid or revoked", {"reason": "api_key_invalid"})
        return Principal(str(row["subject"]), row["role"], str(row["key_id"]))

    def admin_principal(self, req: Request) -> Principal:
        """Admin access for /_test: the admin API key itself or an admin access token."""
        credential = _bearer(req)
        if credential.startswith("sk_"):
            principal = self.principal_from_api_key(credential)
        else:
            principal = self.principal_from_access_token(credential)
        if principal.role != "admin":
            raise ApiError(403, "administrator credentials required")
        return principal

    def _authenticate(self, route: Route, params: dict[str, str], req: Request) -> Principal:
        if route.auth == "api_key_body":
            api_key = _require_str(req.json_object(), "api_key")
            assert api_key is not None
            return self.principal_from_api_key(api_key)
        if route.auth == "refresh_body":
            # Identify only (signature, expiry, key); the handler checks rotation, so a retried refresh
            # with the same Idempotency-Key replays its first answer instead of failing.
            token = _require_str(req.json_object(), "refresh_token")
            assert token is not None
            try:
                claims = self.issuer.decode(token, "refresh", self.clock())
            except TokenError as exc:
                raise ApiError(
                    401, f"refresh token {exc.reason}", {"reason": f"token_{exc.reason}"}
                ) from None
            principal = self._principal_for_key(claims.akid)
            return Principal(principal.subject, principal.role, principal.key_id, claims.jti)
        if route.auth == "bootstrap":
            if not hmac.compare_digest(secret_hash(_bearer(req)), self._bootstrap_hash):
                raise ApiError(401, "bootstrap token is invalid", {"reason": "bootstrap_invalid"})
            return Principal("bootstrap", "bootstrap", None)
        principal = self.principal_from_access_token(_bearer(req))
        if route.auth == "admin" and principal.role != "admin":
            raise ApiError(403, "administrator permission required")
        if route.auth in ("agent", "host") and principal.role not in ("agent", "admin"):
            raise ApiError(403, "agent permission required")
        if route.auth == "host":
            host_id = params["host_id"]
            if principal.role == "agent" and principal.subject != host_id:
                raise ApiError(403, "this API key may act only on its own host", {"host_id": host_id})
            if self.store.host(host_id) is None:
                raise ApiError(404, "host not found", {"host_id": host_id})
        return principal

    def _own(self, principal: Principal, host_id: str, what: str) -> None:
        if principal.role == "agent" and principal.subject != host_id:
            raise ApiError(403, f"this {what} belongs to another host")

    # -- tokens and enrollment ----------------------------------------------------------------------
    def _token_pair(self, principal: Principal) -> Response:
        assert principal.key_id is not None
        now = self.clock()
        access, a = self.issuer.issue("access", principal.subject, principal.key_id, now)
        refresh, r = self.issuer.issue("refresh", principal.subject, principal.key_id, now)
        self.store.add_token(a.jti, "access", principal.subject, principal.key_id, a.exp)
        self.store.add_token(r.jti, "refresh", principal.subject, principal.key_id, r.exp)
        return Response(
            200,
            {
                "access_token": access,
                "refresh_token": refresh,
                "token_type": "Bearer",
                "expires_in": self.issuer.access_ttl,
                "refresh_expires_in": self.issuer.refresh_ttl,
            },
        )

    def auth_token(self, principal: Principal, params: dict[str, str], req: Request) -> Response:
        return self._token_pair(principal)

    def auth_refresh(self, principal: Principal, params: dict[str, str], req: Request) -> Response:
        assert principal.token_jti is not None
        revoked = self.store.token_revocation(principal.token_jti)
        if revoked is not None:
            raise ApiError(401, f"refresh token {revoked}", {"reason": f"token_{revoked}"})
        self.store.revoke_token(principal.token_jti, "rotated")
        return self._token_pair(principal)

    def enroll(self, principal: Principal, params: dict[str, str], req: Request) -> Response:
        body = req.json_object()
        machine_id = _require_str(body, "machine_id")
        hostname = _require_str(body, "hostname")
        assert machine_id is not None and hostname is not None
        info = {
            k: body.get(k) for k in ("fqdn", "os", "kernel", "agent_version", "sshd_version", "host_keys")
        }
        existing = self.store.host_by_machine(machine_id)
        host_id = existing["host_id"] if existing else new_id("hst")
        agent_id = existing["agent_id"] if existing else new_id("agt")
        now = self.clock()
        self.store.upsert_host(host_id, agent_id, machine_id, hostname, info, now)
        # One live key per host: re-enrolling revokes the old key (and with it every token it got).
        self.store.revoke_api_keys(subject=host_id)
        api_key = new_secret("sk_agent")
        self.store.add_api_key(new_id("key"), secret_hash(api_key), host_id, "agent", host_id, now)
        return Response(201, {"agent_id": agent_id, "host_id": host_id, "api_key": api_key})

    # -- agent reporting ----------------------------------------------------------------------------
    def _host_view(self, host: dict[str, Any]) -> dict[str, Any]:
        inventory = host["inventory"] or {}
        info = host["info"] or {}
        return {
            "host_id": host["host_id"],
            "agent_id": host["agent_id"],
            "hostname": host["hostname"],
            **info,
            "enrolled_at": rfc3339(host["enrolled_at"]),
            "last_heartbeat_at": rfc3339(host["heartbeat_at"]) if host["heartbeat_at"] else None,
            "status": (host["heartbeat"] or {}).get("status"),
            "last_inventory_at": rfc3339(host["inventory_at"]) if host["inventory_at"] else None,
            "keys": len(inventory.get("keys") or []),
        }

    def list_hosts(self, principal: Principal, params: dict[str, str], req: Request) -> Response:
        return Response(200, {"hosts": [self._host_view(h) for h in self.store.hosts()]})

    def get_host(self, principal: Principal, params: dict[str, str], req: Request) -> Response:
        host = self.store.host(params["host_id"])
        assert host is not None
        return Response(200, self._host_view(host))

    def heartbeat(self, principal: Principal, params: dict[str, str], req: Request) -> Response:
        host_id = params["host_id"]
        self.store.set_heartbeat(host_id, req.json_object(), self.clock())
        _, version = self.effective_policy(host_id)
        return Response(
            200,
            {
                "poll_interval": self.poll_interval,
                "policy_version": version,
                "pending_instructions": len(self.store.pending_instructions(host_id)),
            },
        )

    @staticmethod
    def _check_inventory(body: dict[str, Any], host_id: str) -> None:
        if not isinstance(body.get("keys"), list):
            raise ApiError(422, "inventory.keys must be a list", {"field": "keys"})
        if body.get("host_id") not in (None, host_id):
            raise ApiError(422, "inventory.host_id does not match the path", {"field": "host_id"})

    def put_inventory(self, principal: Principal, params: dict[str, str], req: Request) -> Response:
        body = req.json_object()
        self._check_inventory(body, params["host_id"])
        self.store.set_inventory(params["host_id"], body, self.clock())
        return Response(200, {"accepted": True})

    def _event_problem(self, event: Any) -> str | None:
        if not isinstance(event, dict):
            return "event must be an object"
        if not isinstance(event.get("id"), str) or not event["id"]:
            return "id must be a non-empty string"
        if not _is_int(event.get("seq")):
            return "seq must be an integer"
        if event.get("type") not in EVENT_TYPES:
            return "type is not a known event type"
        if self.event_validator is not None:
            try:
                verdict = self.event_validator(event)
            except ValueError as exc:
                return str(exc) or "rejected by validator"
            if verdict is False:
                return "rejected by validator"
            if isinstance(verdict, str):
                return verdict
        return None

    def post_events(self, principal: Principal, params: dict[str, str], req: Request) -> Response:
        host_id = params["host_id"]
        events = req.json_object().get("events")
        if not isinstance(events, list):
            raise ApiError(422, "events must be a list", {"field": "events"})
        if len(events) > MAX_EVENTS_PER_CALL:
            raise ApiError(
                422, "too many events in one call", {"max": MAX_EVENTS_PER_CALL, "count": len(events)}
            )
        problems = [(i, p) for i, e in enumerate(events) if (p := self._event_problem(e)) is not None]
        if problems:
            raise ApiError(
                422,
                "invalid event in batch",
                {"index": problems[0][0], "errors": [{"index": i, "reason": p} for i, p in problems]},
            )
        accepted = duplicates = 0
        for event in events:
            if self.store.event_seen(host_id, event["id"]):
                duplicates += 1
            else:
                self.store.add_event(host_id, event)
                accepted += 1
        if duplicates:
            self.store.add_duplicates(host_id, duplicates)
        self._follow_events(host_id, events)
        return Response(200, {"accepted": accepted, "duplicates": duplicates})

    def _follow_events(self, host_id: str, events: list[dict[str, Any]]) -> None:
        """A grant whose key the agent removed at expiry reads `expired` (a revoked one follows its
        result). The key view follows the events when it is read (`list_keys`)."""
        for grant_id in expired_grants(events):
            doc = self.store.get_object("grant", grant_id)
            if doc is None or doc.get("host_id") != host_id or doc.get("status") not in ("pending", "active"):
                continue
            doc.update(status="expired", updated_at=rfc3339(self.clock()))
            self.store.put_object("grant", grant_id, host_id, doc)

    # -- instructions -------------------------------------------------------------------------------
    def issue_instruction(
        self,
        host_id: str,
        kind: str,
        body: dict[str, Any],
        *,
        exp_s: int = INSTRUCTION_TTL_S,
        sign: bool = True,
        alg: str = "EdDSA",
        aud: str | None = None,
        key: object | None = None,
        claims: dict[str, Any] | None = None,
    ) -> tuple[str, str]:
        """Queue an instruction for host_id; returns (jti, compact JWS). `claims` adds or overrides
        claims in the token only (an `nbf`, an absurd `exp`): the queue keeps `now + exp_s`."""
        now = int(self.clock())
        jti = new_id("ins", 12)
        signed_claims = {
            "jti": jti,
            "aud": aud or host_id,
            "iat": now,
            "exp": now + exp_s,
            "kind": kind,
            "body": body,
            **(claims or {}),
        }
        if sign and alg == "EdDSA" and key is None:
            jws = self.signer.sign(signed_claims)
        else:
            jws = self.signer.forge(signed_claims, sign=sign, alg=alg, key=key)
        self.store.add_instruction(jti, host_id, kind, body, jws, now, now + exp_s)
        self.waiters.issued(host_id)  # under the store lock: answered once this request commits
        return jti, jws

    def get_instructions(self, principal: Principal, params: dict[str, str], req: Request) -> Response:
        host_id = params["host_id"]
        wait = _wait_seconds(req.query.get("wait")) if self.long_poll else None
        response = self.instructions_answer(host_id, waited=wait is not None)
        if wait is None or response.body["instructions"]:
            return response
        if self.waiters.full():
            raise ApiError(
                503,
                "too many requests waiting for instructions",
                {"retry_after": 5, "held": self.waiters.max_held},
                headers={"Retry-After": "5"},
            )
        response.hold = Hold(host_id, float(wait), self.waiters.generation(host_id))
        return response

    def instructions_answer(self, host_id: str, *, waited: bool) -> Response:
        """The §6 answer now (after a §6.1 hold too: the caller holds the store lock)."""
        pending = self.store.pending_instructions(host_id)
        body: dict[str, Any] = {
            "instructions": [i["jws"] for i in pending],
            "poll_interval": self.poll_interval,
        }
        if waited:
            body["wait_supported"] = True
        return Response(200, body)

    def post_instruction_result(self, principal: Principal, params: dict[str, str], req: Request) -> Response:
        instruction = self.store.instruction(params["jti"])
        if instruction is None:
            raise ApiError(404, "instruction not found", {"jti": params["jti"]})
        self._own(principal, instruction["host_id"], "instruction")
        body = req.json_object()
        status = body.get("status")
        if status not in RESULT_STATUSES:
            raise ApiError(422, "status must be applied, failed, rejected or expired", {"field": "status"})
        error = body.get("error")
        if error is not None and not isinstance(error, dict):
            raise ApiError(422, "error must be an object or null", {"field": "error"})
        now = self.clock()
        self.store.set_instruction_result(instruction["jti"], status, body, now)
        self._follow_result(instruction, status, body, now)
        return Response(200, {"jti": instruction["jti"], "status": status})

    def _follow_result(
        self, instruction: dict[str, Any], status: str, result: dict[str, Any], now: float
    ) -> None:
        """A rotation's, grant's, revocation's or CA's status follows the result of its instruction."""
        if trust_routes.follow_result(self, instruction, status, result):
            return
        kind, body = instruction["kind"], instruction["body"] or {}
        target: tuple[str, str, str] | None = None
        if kind == "rotation" and "rotation_id" in body:
            target = ("rotation", body["rotation_id"], ROTATION_STATUS[status])
        elif kind == "ephemeral" and "grant_id" in body:
            target = ("grant", body["grant_id"], GRANT_STATUS[status])
        elif kind == "revoke_ephemeral" and "grant_id" in body and status == "applied":
            target = ("grant", body["grant_id"], "revoked")
        elif kind == "scan" and "scan_id" in body and status != "applied":
            target = ("scan", body["scan_id"], status)
        if target is None:
            return
        doc = self.store.get_object(target[0], target[1])
        if doc is None:
            return
        doc.update(status=target[2], updated_at=rfc3339(now), result=result)
        self.store.put_object(target[0], target[1], doc["host_id"], doc)

    # -- policy -------------------------------------------------------------------------------------
    def effective_policy(self, host_id: str) -> tuple[dict[str, Any], int]:
        found = self.store.policy(host_id) or self.store.policy("default")
        assert found is not None
        return found

    @staticmethod
    def _etag(version: int) -> str:
        return f'"policy-{version}"'

    def get_host_policy(self, principal: Principal, params: dict[str, str], req: Request) -> Response:
        policy, version = self.effective_policy(params["host_id"])
        etag = self._etag(version)
        if_none_match = req.headers.get("if-none-match")
        if if_none_match and _etag_matches(if_none_match, etag):
            return Response(304, None, {"ETag": etag})
        return Response(200, {"version": version, **policy}, {"ETag": etag})

    def _policy_target(self, target: str) -> str:
        return "default" if target == "default" else self._resolve_host(target)["host_id"]

    def get_policy(self, principal: Principal, params: dict[str, str], req: Request) -> Response:
        target = self._policy_target(params["target"])
        policy, version = self.store.policy(target) or self.effective_policy(target)
        return Response(200, {"target": target, "version": version, **policy}, {"ETag": self._etag(version)})

    def put_policy(self, principal: Principal, params: dict[str, str], req: Request) -> Response:
        target = self._policy_target(params["target"])
        body = req.json_object()
        body.pop("version", None)  # the server assigns versions
        unknown = sorted(set(body) - set(_POLICY_FIELDS))
        if unknown:
            raise ApiError(422, "unknown policy fields", {"fields": unknown})
        bad = sorted(name for name, value in body.items() if not _POLICY_FIELDS[name](value))
        if bad:
            raise ApiError(422, "invalid policy values", {"fields": bad})
        base = self.store.policy("default") if target != "default" else None
        policy = {**DEFAULT_POLICY, **(base[0] if base else {}), **body}
        version = self.store.next_counter("policy_version")
        self.store.set_policy(target, policy, version)
        return Response(200, {"target": target, "version": version, **policy}, {"ETag": self._etag(version)})

    # -- administrator calls ------------------------------------------------------------------------
    def _resolve_host(self, ref: Any) -> dict[str, Any]:
        """`host` accepts a host_id or a hostname."""
        if not isinstance(ref, str) or not ref:
            raise ApiError(422, "host must be a host_id or hostname", {"field": "host"})
        host = self.store.host(ref)
        if host is not None:
            return host
        matches = self.store.hosts(hostname=ref)
        if not matches:
            raise ApiError(404, "host not found", {"host": ref})
        if len(matches) > 1:
            raise ApiError(
                422, "hostname is ambiguous", {"host": ref, "host_ids": [h["host_id"] for h in matches]}
            )
        return matches[0]

    def list_keys(self, principal: Principal, params: dict[str, str], req: Request) -> Response:
        q = req.query
        hosts = [self._resolve_host(q["host"])] if q.get("host") else self.store.hosts()
        algorithm = q.get("algorithm", "").lower()
        out = []
        for host in hosts:
            for key in self._key_view(host):
                if not isinstance(key, dict):
                    continue
                if q.get("user") and key.get("user") != q["user"]:
                    continue
                if q.get("fingerprint") and key.get("fingerprint") != q["fingerprint"]:
                    continue
                key_type = str(key.get("type", "")).lower()
                if algorithm and algorithm not in (key_type, key_type.removeprefix("ssh-")):
                    continue
                out.append({**key, "host_id": host["host_id"], "hostname": host["hostname"]})
        return Response(200, {"keys": out})

    def _key_view(self, host: dict[str, Any]) -> list[dict[str, Any]]:
        """The host's last inventory with the key events since applied (keyview.py): an appended
        key shows here as soon as its event arrived, not at the next full inventory."""
        inventory = host["inventory"] or {}
        keys = [k for k in inventory.get("keys") or [] if isinstance(k, dict)]
        return apply_events(keys, self.store.events(host["host_id"]), inventory.get("collected_at"))

    def start_scans(self, principal: Principal, params: dict[str, str], req: Request) -> Response:
        refs = req.json_object().get("hosts")
        if not isinstance(refs, list) or not refs:
            raise ApiError(422, "hosts must be a non-empty list", {"field": "hosts"})
        scans = []
        for host in [self._resolve_host(ref) for ref in refs]:
            scan_id = new_id("scn")
            jti, _ = self.issue_instruction(host["host_id"], "scan", {"scan_id": scan_id})
            doc = {
                "scan_id": scan_id,
                "host_id": host["host_id"],
                "hostname": host["hostname"],
                "status": "pending",
                "instruction_id": jti,
                "created_at": rfc3339(self.clock()),
            }
            self.store.put_object("scan", scan_id, host["host_id"], doc)
            scans.append(doc)
        return Response(201, {"scans": scans})

    def _object(self, kind: str, object_id: str) -> dict[str, Any]:
        doc = self.store.get_object(kind, object_id)
        if doc is None:
            raise ApiError(404, f"{kind} not found", {"id": object_id})
        return doc

    def get_scan(self, principal: Principal, params: dict[str, str], req: Request) -> Response:
        doc = self._object("scan", params["scan_id"])
        doc.pop("inventory", None)
        return Response(200, doc)

    def put_scan_result(self, principal: Principal, params: dict[str, str], req: Request) -> Response:
        doc = self._object("scan", params["scan_id"])
        self._own(principal, doc["host_id"], "scan")
        body = req.json_object()
        self._check_inventory(body, doc["host_id"])
        now = self.clock()
        self.store.set_inventory(doc["host_id"], body, now)
        doc.update(status="completed", completed_at=rfc3339(now), keys=len(body["keys"]))
        self.store.put_object("scan", doc["scan_id"], doc["host_id"], doc)
        return Response(200, {"accepted": True})

    def request_ephemeral(self, principal: Principal, params: dict[str, str], req: Request) -> Response:
        body = req.json_object()
        host = self._resolve_host(body.get("host"))
        username = _require_str(body, "username")
        reason = _require_str(body, "reason", optional=True)
        ticket_id = _require_str(body, "ticket_id", optional=True)
        ttl = body.get("ttl")
        policy, _ = self.effective_policy(host["host_id"])
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 < ttl <= policy["ephemeral_max_ttl_s"]:
            raise ApiError(
                422,
                "ttl must be an integer within the policy maximum",
                {"field": "ttl", "max": policy["ephemeral_max_ttl_s"]},
            )
        grant_id = new_id("eph")
        private_key, public_key, fingerprint = generate_ssh_keypair(f"ephemeral:{grant_id}")
        now = self.clock()
        expires_at = rfc3339(now + ttl)
        instruction_body = {
            "grant_id": grant_id,
            "user": username,
            "public_key": public_key,
            "expires_at": expires_at,
            "reason": reason,
            "ticket_id": ticket_id,
        }
        # The instruction is worthless once the grant has expired.
        jti, _ = self.issue_instruction(host["host_id"], "ephemeral", instruction_body, exp_s=ttl)
        doc = {
            **instruction_body,
            "host_id": host["host_id"],
            "fingerprint": fingerprint,
            "status": "pending",
            "instruction_id": jti,
            "created_at": rfc3339(now),
        }
        self.store.put_object("grant", grant_id, host["host_id"], doc)
        return Response(
            201,
            {
                "grant_id": grant_id,
                "private_key": private_key,
                "public_key": public_key,
                "fingerprint": fingerprint,
                "expires_at": expires_at,
                "host_id": host["host_id"],
                "instruction_id": jti,
                "status": "pending",
            },
        )

    def get_grant(self, principal: Principal, params: dict[str, str], req: Request) -> Response:
        return Response(200, self._object("grant", params["grant_id"]))

    def revoke_grant(self, principal: Principal, params: dict[str, str], req: Request) -> Response:
        doc = self._object("grant", params["grant_id"])
        jti, _ = self.issue_instruction(doc["host_id"], "revoke_ephemeral", {"grant_id": doc["grant_id"]})
        doc.update(status="revoking", revoke_instruction_id=jti, updated_at=rfc3339(self.clock()))
        self.store.put_object("grant", doc["grant_id"], doc["host_id"], doc)
        return Response(202, {"grant_id": doc["grant_id"], "status": "revoking", "instruction_id": jti})

    def start_rotation(self, principal: Principal, params: dict[str, str], req: Request) -> Response:
        body = req.json_object()
        host = self._resolve_host(body.get("host"))
        user = _require_str(body, "user")
        action = body.get("action", "replace")
        if action not in ("replace", "add", "remove"):
            raise ApiError(422, "action must be replace, add or remove", {"field": "action"})
        old_fingerprint = _require_str(body, "old_fingerprint", optional=action == "add")
        options = _require_str(body, "options", optional=True)
        new_key = _require_str(body, "new_key", optional=True)
        algorithm = body.get("algorithm")
        rotation_id = new_id("rot")
        private_key = None
        if action == "remove":
            if new_key is not None or algorithm is not None:
                raise ApiError(422, "remove takes no new key", {"field": "new_key"})
        elif new_key is not None and algorithm is not None:
            raise ApiError(422, "give new_key or algorithm, not both", {"field": "algorithm"})
        elif new_key is None:
            if algorithm != "ed25519":
                raise ApiError(422, 'new_key or algorithm "ed25519" is required', {"field": "algorithm"})
            private_key, new_key, _ = generate_ssh_keypair(f"rotation:{rotation_id}")
        new_fingerprint = None
        if new_key is not None:
            try:
                new_fingerprint = public_key_fingerprint(new_key)
            except ValueError as exc:
                raise ApiError(422, f"new_key: {exc}", {"field": "new_key"}) from None
        instruction_body: dict[str, Any] = {"rotation_id": rotation_id, "user": user, "action": action}
        if old_fingerprint is not None:
            instruction_body["old_fingerprint"] = old_fingerprint
        if new_key is not None:
            instruction_body["new_key"] = new_key
        if options is not None:
            instruction_body["options"] = options
        jti, _ = self.issue_instruction(host["host_id"], "rotation", instruction_body)
        now = rfc3339(self.clock())
        doc = {
            **instruction_body,
            "host_id": host["host_id"],
            "new_fingerprint": new_fingerprint,
            "status": "pending",
            "instruction_id": jti,
            "created_at": now,
            "updated_at": now,
            "result": None,
        }
        self.store.put_object("rotation", rotation_id, host["host_id"], doc)
        answer = {
            "rotation_id": rotation_id,
            "status": "pending",
            "host_id": host["host_id"],
            "instruction_id": jti,
            "new_fingerprint": new_fingerprint,
        }
        if private_key is not None:
            answer.update(private_key=private_key, public_key=new_key)
        return Response(201, answer)

    def get_rotation(self, principal: Principal, params: dict[str, str], req: Request) -> Response:
        return Response(200, self._object("rotation", params["rotation_id"]))
