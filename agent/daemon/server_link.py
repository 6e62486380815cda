"""The daemon's conversation with the control plane (enrolled mode).

Owns the one ApiClient. It is the sender's destination (events, full inventories) and runs
the scheduled server jobs: heartbeat + instruction poll, full report, token refresh, policy.
Credentials come from `server.api_key_file` + `server.host_id`, else from what `enroll`
stored; without either the link waits (events stay in the outbox) and says so in status.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from agent import __version__
from agent.config import Config
from agent.control.backoff import BackoffPolicy
from agent.control.client import ApiClient, Timeouts
from agent.control.enroll import load_credentials, read_api_key
from agent.control.errors import TRANSPORT_ERROR, ApiError
from agent.daemon.memory import release_free_memory
from agent.inventory.evaluate import Policy
from agent.inventory.model import rfc3339
from agent.log import register_secret

if TYPE_CHECKING:
    from agent.daemon.service import Daemon

log = logging.getLogger("sshklm.link")

JSON = dict[str, Any]


def plain_http_allowed(url: str, allow_loopback: bool) -> bool:
    parts = urlsplit(url)
    if parts.scheme == "https":
        return True
    if not allow_loopback or parts.scheme != "http":
        return False
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServerLink:
    def __init__(self, daemon: Daemon, config: Config) -> None:
        self.daemon = daemon
        self.config = config
        self.host_id: str | None = None
        self.client: ApiClient | None = None
        self.last_report_at: datetime | None = None
        self.last_heartbeat_at: datetime | None = None
        self.problem: str | None = None
        self.poll_interval: float = config.schedule.heartbeat_s
        self._policy_version: int | None = None
        self._policy_etag: str | None = None
        self._lock = threading.Lock()
        # Set when the agent stops: a call waiting to retry gives up at once instead of sleeping
        # on (backoff waits reach minutes) and then using a closed client.
        self._stopping = threading.Event()
        self.instruction_handler: Callable[[str], tuple[str | None, JSON]] | None = None
        if not plain_http_allowed(config.server.url, config.server.allow_plain_http_loopback):
            self.problem = (
                "server.url must be https (plain http only to loopback with allow_plain_http_loopback)"
            )
            log.error("%s", self.problem)
            return
        self._connect()

    # -- credentials -----------------------------------------------------------------------

    def _connect(self) -> bool:
        cfg = self.config.server
        api_key: str | None = None
        host_id: str | None = None
        try:
            if cfg.api_key_file and cfg.host_id:
                api_key, host_id = read_api_key(cfg.api_key_file), cfg.host_id
            else:
                stored = load_credentials(self.config.state.dir)
                if stored is not None:
                    api_key, host_id = stored.api_key, stored.host_id
        except (OSError, ValueError) as exc:
            self.problem = f"credentials unreadable: {type(exc).__name__}"
            return False
        if not api_key or not host_id:
            self.problem = "not enrolled: run `sshklm-agent enroll --server URL --token-file FILE`"
            return False
        register_secret(api_key)
        key_id = api_key_id(api_key)
        store = self.daemon.store
        self.client = api_client(
            self.config,
            cfg.url,
            api_key,
            sleep=self._pause,
            on_auth_invalid=lambda until: store.save_auth_hold(key_id, until),
        )
        # A key refused before a restart stays paused: restarting must not retry it at once.
        held = store.auth_hold(key_id)
        if held is not None:
            self.client.hold_authentication(held)
        self.host_id = host_id
        self.problem = None
        return True

    @property
    def ready(self) -> bool:
        with self._lock:
            if self.client is None and not self._connect():
                return False
        return self.client is not None and self.client.auth_state != "auth_invalid"

    def _pause(self, seconds: float) -> None:
        if self._stopping.wait(seconds):
            raise ApiError(TRANSPORT_ERROR, "agent stopping: call abandoned")

    def begin_stop(self) -> None:
        """Abandon retries in progress (the agent is stopping); close() follows."""
        self._stopping.set()

    def close(self) -> None:
        self._stopping.set()
        if self.client is not None:
            self.client.close()

    def _require(self) -> tuple[ApiClient, str]:
        if not self.ready or self.client is None or self.host_id is None:
            raise ApiError("AUTH_INVALID", self.problem or "not connected")
        return self.client, self.host_id

    # -- sender destination ----------------------------------------------------------------

    def deliver(self, events: Sequence[JSON]) -> list[str]:
        client, host_id = self._require()
        result = client.post_events(host_id, events)
        return list(result["accepted_ids"]) + [str(d["id"]) for d in result["dropped"]]

    def send_full_inventory(self) -> None:
        self.report(force=True)

    # -- jobs ------------------------------------------------------------------------------

    def heartbeat_interval(self, configured: float) -> float:
        return max(configured, self.poll_interval)

    def heartbeat(self) -> None:
        client, host_id = self._require()
        daemon = self.daemon
        inventory = daemon.discovery.inventory
        body = {
            "agent_version": __version__,
            "status": "ok" if daemon.healthy()[0] else "degraded",
            "uptime_s": int((datetime.now(UTC) - daemon.started_at).total_seconds()),
            "last_scan_at": rfc3339(daemon.last_scan_at),
            "keys": len(inventory.keys) if inventory else 0,
            "outbox": daemon.outbox.depth(),
        }
        try:
            answer = client.heartbeat(host_id, body)
        except ApiError as exc:
            if exc.code == "NOT_FOUND":
                self.problem = "host unknown to the server: enroll again"
            raise
        self.last_heartbeat_at = datetime.now(UTC)
        poll = answer.get("poll_interval")
        if isinstance(poll, int | float) and not isinstance(poll, bool) and poll > 0:
            wanted = max(self.config.schedule.heartbeat_s, float(poll))
            if wanted != self.poll_interval:
                self.poll_interval = wanted
                daemon.reschedule("heartbeat", wanted)
        version = answer.get("policy_version")
        if isinstance(version, int) and version != self._policy_version:
            self.fetch_policy()
        self.poll_instructions()

    def fetch_policy(self) -> None:
        client, host_id = self._require()
        policy, etag = client.get_policy(host_id, self._policy_etag)
        self._policy_etag = etag
        if policy is None:
            return
        try:
            self.daemon.policy = policy_from_json(policy, self.daemon.policy)
        except (TypeError, ValueError):
            log.warning("policy from the server is malformed; keeping the current one")
            return
        self._policy_version = self.daemon.policy.version
        log.info("policy version %s in force", self._policy_version)

    def poll_instructions(self) -> None:
        client, host_id = self._require()
        tokens, _ = client.get_instructions(host_id)
        for token in tokens:
            if self.instruction_handler is None:
                log.warning("instruction received but applying is disabled (apply.enabled = false)")
                break
            try:
                jti, result = self.instruction_handler(token)
            except Exception:
                log.exception("instruction handling failed")
                continue
            if jti is None:
                # Not even a jti could be read: there is no instruction id to answer for.
                log.warning("unreadable instruction dropped (%s)", result.get("error"))
                continue
            self.post_result(jti, result)

    def post_result(self, jti: str, result: JSON) -> None:
        client, _ = self._require()
        try:
            client.post_instruction_result(
                jti, result, idempotency_key=str(uuid.uuid5(uuid.NAMESPACE_URL, jti))
            )
        except ApiError as exc:
            if exc.code != "NOT_FOUND":  # unknown instruction: drop its result (contract table)
                raise

    def report_if_changed(self) -> None:
        if self.daemon.changed_since_report:
            self.report(force=True)

    def report(self, *, force: bool) -> None:
        client, host_id = self._require()
        inventory = self.daemon.discovery.inventory
        if inventory is None:
            return
        self.daemon.changed_since_report = False
        text = inventory.to_json_text(host_id=host_id)
        try:
            client.put_inventory(host_id, text)
        except Exception:
            self.daemon.changed_since_report = True
            raise
        finally:
            del text
            release_free_memory()  # the JSON text and its request: ~15 MB at 10,000 keys
        self.last_report_at = datetime.now(UTC)

    def put_scan_result(self, scan_id: str) -> None:
        client, host_id = self._require()
        self.daemon.rescan()
        inventory = self.daemon.discovery.inventory
        if inventory is not None:
            client.put_scan_result(scan_id, inventory.to_json_text(host_id=host_id))

    def refresh_token(self) -> None:
        """Keep the access token fresh ahead of expiry even when nothing else calls."""
        if self.ready and self.client is not None:
            self.client.ensure_token()

    def status(self) -> JSON:
        client = self.client
        expires = client.token_expires_at if client is not None else None
        return {
            "host_id": self.host_id,
            "server": self.config.server.url,
            "auth_state": client.auth_state if client is not None else "not_connected",
            "token_expires_at": rfc3339(expires) if expires else None,
            "last_report_at": rfc3339(self.last_report_at),
            "last_heartbeat_at": rfc3339(self.last_heartbeat_at),
            "link_problem": self.problem,
            "policy_version": self._policy_version,
        }


def api_key_id(api_key: str) -> str:
    """Names a key in the state store without storing it: a truncated SHA-256 (the key is a
    high-entropy secret; 64 bits of its digest reveal nothing usable)."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()[:16]


def api_client(
    config: Config,
    url: str,
    api_key: str | None = None,
    *,
    sleep: Callable[[float], None] = time.sleep,
    on_auth_invalid: Callable[[float], None] | None = None,
) -> ApiClient:
    """The one way the agent builds its HTTP client from configuration (daemon and `enroll`).
    `sleep` waits between retries (the daemon's can be interrupted when it stops);
    `on_auth_invalid(until)` hears when the server refuses the API key."""
    s = config.server
    return ApiClient(
        url,
        api_key=api_key,
        backoff=BackoffPolicy(max_attempts=s.max_attempts),
        sleep=sleep,
        on_auth_invalid=on_auth_invalid,
        timeouts=Timeouts(
            connect=s.connect_timeout_s,
            read=s.read_timeout_s,
            write=s.read_timeout_s,
            pool=s.connect_timeout_s,
        ),
        ca_file=s.ca_file or None,
        max_connections=s.max_connections,
    )


def policy_from_json(data: JSON, current: Policy) -> Policy:
    def num(name: str, default: int) -> int:
        value = data.get(name, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(name)
        return value

    types = data.get("allowed_types", sorted(current.allowed_types))
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise ValueError("allowed_types")
    return Policy(
        version=num("version", current.version),
        min_rsa_bits=num("min_rsa_bits", current.min_rsa_bits),
        allowed_types=frozenset(types),
        max_key_age_days=num("max_key_age_days", current.max_key_age_days),
        require_from_for_root=bool(data.get("require_from_for_root", current.require_from_for_root)),
        ephemeral_max_ttl_s=num("ephemeral_max_ttl_s", current.ephemeral_max_ttl_s),
    )
