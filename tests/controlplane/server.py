"""The imperative shell: ThreadingHTTPServer on loopback, fault injection, the ControlPlane handle."""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import sys
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .app import App, EventValidator
from .errors import ApiError, error_body
from .faults import Faults
from .hostile import HostileAnswer, write_answer
from .messages import Request, Response
from .ratelimit import SlidingWindowLimiter
from .signing import InstructionSigner, hmac_secret
from .store import Store
from .tokens import TokenIssuer
from .values import secret_hash

log = logging.getLogger("tests.controlplane")
MAX_BODY = 16 << 20


class RequestRecord(NamedTuple):
    method: str
    path: str  # with the query string, as sent
    status: int  # 0 when the connection was dropped without an answer
    at: float  # time.monotonic() when the request arrived
    headers: dict[str, str]  # lower-cased names; Authorization keeps only its scheme


def _redacted(headers: Mapping[str, str]) -> dict[str, str]:
    out = dict(headers)
    if "authorization" in out:
        out["authorization"] = out["authorization"].partition(" ")[0] + " <redacted>"
    return out


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    control_plane: ControlPlane

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that refuses our certificate (or hangs up mid-handshake) is an expected event in
        # TLS tests, not a server fault: one debug line instead of a traceback on stderr.
        exc = sys.exc_info()[1]
        if isinstance(exc, ssl.SSLError):
            log.debug("TLS handshake with %s failed: %s", client_address[0], exc)
            return
        if isinstance(exc, ConnectionResetError | BrokenPipeError):
            # A client that went away (an agent stopped while its long-poll waited): not a fault.
            log.debug("client %s went away: %s", client_address[0], exc)
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects
    server_version = "sshklm-reference-cp/1"
    timeout = 60  # idle keep-alive connections close on their own
    disable_nagle_algorithm = True  # headers and body go out in two writes: avoid the 40 ms delayed-ACK stall
    server: _Server

    def setup(self) -> None:
        super().setup()  # sets the socket timeout, which then bounds the handshake too
        if isinstance(self.connection, ssl.SSLSocket):
            # The listening socket defers handshakes (do_handshake_on_connect=False) to here, this
            # connection's own thread: done in accept() they would run on the serving thread, where
            # one silent client would stall every other. A failure raises before the connection is
            # tracked, so finish() has nothing to forget; the server's handle_error logs it.
            self.connection.do_handshake()
        self.server.control_plane._connections.add(self.connection)

    def finish(self) -> None:
        self.server.control_plane._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        # Request lines and status only; never headers or bodies.
        log.debug("%s " + format, self.client_address[0], *args)

    def _serve(self) -> None:
        arrived = time.monotonic()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self._send(Response(400, error_body("VALIDATION_ERROR", "bad Content-Length", {})))
            return
        body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        request = Request(
            method=self.command,
            path=split.path,
            query={k: v[0] for k, v in parse_qs(split.query).items()},
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        response = self.server.control_plane._dispatch(request, self.path, arrived)
        if response is None:
            self._drop()
        elif isinstance(response, Response):
            self._send(response)
        else:
            self.close_connection = True
            write_answer(response, self.wfile, self.server.control_plane._stopping)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

    def _send(self, response: Response) -> None:
        payload = response.encoded()
        try:
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            if response.body is not None:
                self.send_header("Content-Type", "application/json")
            if response.status != 304:
                self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()
        except OSError:
            # The client gave up (timeout); the request was already applied and recorded.
            self.close_connection = True

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


class ControlPlane:
    """A running reference control plane. Start with ControlPlane.start(); stop() or use `with`."""

    def __init__(self, app: App, server: _Server, faults: Faults, *, scheme: str = "http") -> None:
        self._app = app
        self._server = server
        self.faults = faults
        self.requests: list[RequestRecord] = []
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()  # ends hostile answers that would go on for ever
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="controlplane", daemon=True
        )
        host, port = server.server_address[:2]
        self.url = f"{scheme}://{host if isinstance(host, str) else host.decode()}:{port}"
        self.bootstrap_token = app.bootstrap_token
        self.admin_api_key = app.admin_api_key
        self.signing_public_key_openssh = app.signer.public_key_openssh
        self.signing_public_key_pem = app.signer.public_key_pem
        self.signing_kid = app.signer.kid

    def __repr__(self) -> str:  # no secrets
        return f"ControlPlane(url={self.url!r})"

    @classmethod
    def start(
        cls,
        host: str = "127.0.0.1",
        port: int = 0,
        db: str = ":memory:",
        access_ttl: int = 900,
        refresh_ttl: int = 604800,
        limits: dict[str, int] | None = None,
        *,
        signing_key: Ed25519PrivateKey | None = None,
        poll_interval: int = 60,
        tls: ssl.SSLContext | None = None,
    ) -> ControlPlane:
        """With ``tls`` (a PROTOCOL_TLS_SERVER context holding the certificate chain; see tests/tlsca.py)
        the server speaks HTTPS and ``url`` starts with https://; without it, plain HTTP as always."""
        app = App(
            Store(db),
            TokenIssuer(hmac_secret(), access_ttl=access_ttl, refresh_ttl=refresh_ttl),
            InstructionSigner(signing_key or Ed25519PrivateKey.generate()),
            SlidingWindowLimiter(limits),
            time.time,
            poll_interval=poll_interval,
        )
        server = _Server((host, port), _Handler)
        if tls is not None:
            server.socket = tls.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        cp = cls(app, server, Faults(), scheme="http" if tls is None else "https")
        server.control_plane = cp
        cp._thread.start()
        return cp

    def stop(self) -> None:
        self._stopping.set()
        self._app.waiters.close()  # held requests end unanswered, as a restarting server drops them
        self._server.shutdown()
        self._server.server_close()
        for conn in list(self._connections):  # keep-alive connections would otherwise outlive the server
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)
        self._app.store.close()

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- request path --------------------------------------------------------------------------------------
    def _dispatch(self, request: Request, target: str, arrived: float) -> Response | HostileAnswer | None:
        if request.path.startswith("/_test/"):
            from .testroutes import handle_test_request

            return handle_test_request(self, request)
        plan = self.faults.take(request.path)
        if plan.delay:
            time.sleep(plan.delay)
        if plan.hostile is not None:
            self.requests.append(
                RequestRecord(
                    request.method, target, plan.hostile.status, arrived, _redacted(request.headers)
                )
            )
            return plan.hostile
        response: Response | None
        if plan.drop is not None and not plan.drop.after_processing:
            response = None
        elif plan.fail is not None:
            rule = plan.fail
            details: dict[str, Any] = {"injected": True}
            headers: dict[str, str] = {}
            if rule.retry_after is not None:
                details["retry_after"] = rule.retry_after
                headers["Retry-After"] = str(rule.retry_after)
            response = ApiError(
                rule.status, "injected fault", details, code=rule.code, headers=headers
            ).response()
        else:
            response = self._app.handle(request)
            if response.hold is not None:
                response = self._held(response)
            if plan.drop is not None:
                response = None
        status = 0 if response is None else response.status
        self.requests.append(
            RequestRecord(request.method, target, status, arrived, _redacted(request.headers))
        )
        return response

    def _held(self, response: Response) -> Response | None:
        """§6.1: hold the request until an instruction is issued for its host or its wait passes; None
        (no answer, the connection closes) when the server stops or the idle-cut knob cuts it."""
        hold = response.hold
        assert hold is not None
        if self._app.waiters.wait(hold, cut_after=self.faults.cut_idle_s) is None:
            return None
        with self._app.store.lock:
            answer = self._app.instructions_answer(hold.host_id, waited=True)
        answer.headers.update(response.headers)
        return answer

    # -- test helpers (thread-safe: the store lock serialises them with requests) ----------------------------
    @property
    def long_poll(self) -> bool:
        """§6.1 served (True, the default); False: an older server that ignores `wait`."""
        return self._app.long_poll

    @long_poll.setter
    def long_poll(self, enabled: bool) -> None:
        self._app.long_poll = enabled

    @property
    def max_held(self) -> int:
        """Requests held at once (§6.1) before further ones are answered 503 with Retry-After."""
        return self._app.waiters.max_held

    @max_held.setter
    def max_held(self, count: int) -> None:
        self._app.waiters.max_held = count

    @property
    def poll_interval(self) -> int:
        return self._app.poll_interval

    @poll_interval.setter
    def poll_interval(self, seconds: int) -> None:
        self._app.poll_interval = seconds

    def expire_access_tokens(self) -> int:
        """Every access token issued so far is refused as expired from now on."""
        with self._app.store.lock:
            return self._app.store.revoke_tokens_of_type("access", "expired")

    def expire_refresh_tokens(self) -> int:
        with self._app.store.lock:
            return self._app.store.revoke_tokens_of_type("refresh", "expired")

    def revoke_api_key(self, api_key_or_host_id: str) -> int:
        """Revoke one API key, or every key of a host (given its host_id); their tokens stop working too."""
        store = self._app.store
        with store.lock:
            if api_key_or_host_id.startswith("sk_"):
                return store.revoke_api_keys(key_hash=secret_hash(api_key_or_host_id))
            return store.revoke_api_keys(subject=api_key_or_host_id)

    def forget_host(self, host_id: str) -> bool:
        """Delete a host record but keep its API key valid: its calls then get 404 NOT_FOUND."""
        with self._app.store.lock:
            return self._app.store.delete_host(host_id)

    def host_id(self, hostname: str) -> str:
        with self._app.store.lock:
            matches = self._app.store.hosts(hostname=hostname)
        if len(matches) != 1:
            raise KeyError(hostname)
        return str(matches[0]["host_id"])

    def events(self, host_id: str) -> list[dict[str, Any]]:
        with self._app.store.lock:
            return self._app.store.events(host_id)

    def duplicate_count(self, host_id: str) -> int:
        with self._app.store.lock:
            return self._app.store.duplicate_count(host_id)

    def inventory(self, host_id: str) -> dict[str, Any] | None:
        with self._app.store.lock:
            host = self._app.store.host(host_id)
        return None if host is None else host["inventory"]

    def instruction_results(self) -> list[dict[str, Any]]:
        """Posted results in arrival order: {"jti", "host_id", "kind", "status", "result": posted body}."""
        with self._app.store.lock:
            rows = self._app.store.instruction_results()
        return [
            {
                "jti": r["jti"],
                "host_id": r["host_id"],
                "kind": r["kind"],
                "status": r["status"],
                "result": r["result"],
            }
            for r in rows
        ]

    def issue_instruction(
        self,
        host_id: str,
        kind: str,
        body: dict[str, Any],
        exp_s: int = 3600,
        sign: bool = True,
        alg: str = "EdDSA",
        aud: str | None = None,
        key: object | None = None,
        claims: dict[str, Any] | None = None,
    ) -> str:
        """Queue an instruction (maybe forged: unsigned, other alg/aud/key, odd `claims` such as
        `nbf` or `exp=10**400`); returns its compact JWS."""
        store = self._app.store
        with store.lock, store.transaction():
            if store.host(host_id) is None:
                raise KeyError(host_id)
            _, jws = self._app.issue_instruction(
                host_id, kind, body, exp_s=exp_s, sign=sign, alg=alg, aud=aud, key=key, claims=claims
            )
        return jws

    def set_event_validator(self, fn: EventValidator | None) -> None:
        """fn(event) -> None/True (valid), False or a reason string (invalid), or raises ValueError."""
        with self._app.store.lock:
            self._app.event_validator = fn

    def admin_token(self) -> str:
        """An administrator access token (same as POST /v1/auth/token with the admin API key)."""
        app = self._app
        with app.store.lock, app.store.transaction():
            answer = app._token_pair(app.principal_from_api_key(self.admin_api_key))
        return str(answer.body["access_token"])
