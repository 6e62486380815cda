"""The daemon's conversation with the control plane (enrolled mode).

Owns the one ApiClient. It is the sender's destination (events, full inventories) and a part of
the daemon (agent/daemon/parts.py) whose jobs are the server conversation: heartbeat +
instruction poll, full report, token refresh, policy. It sees the daemon only as the `Core` it
is given at prepare(): it reads the inventory and vitals there, and hands back a new policy or a
job's new interval through it. Credentials come from `server.api_key_file` + `server.host_id`,
else from what `enroll` stored; without either the link waits (events stay in the outbox) and
says so in status.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from agent import __version__
from agent.config import Config, ScheduleConfig
from agent.control.client import ApiClient
from agent.control.connect import (
    NOT_ENROLLED,
    PLAIN_HTTP_REFUSED,
    api_client,
    api_key_id,
    host_credentials,
    plain_http_allowed,
)
from agent.control.enroll import EnrollmentError
from agent.control.errors import TRANSPORT_ERROR, ApiError
from agent.daemon.memory import release_free_memory
from agent.daemon.parts import Core, Job
from agent.inventory.evaluate import Policy
from agent.inventory.model import rfc3339
from agent.log import register_secret

log = logging.getLogger("sshklm.link")

JSON = dict[str, Any]
# A verified, validated and applied instruction -> (its jti or None when unreadable, its result).
HandleInstruction = Callable[[str], tuple[str | None, JSON]]

TOKEN_REFRESH_EVERY_S = 60.0


class ServerLink:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.host_id: str | None = None
        self.client: ApiClient | None = None
        self.last_report_at: datetime | None = None
        self.last_heartbeat_at: datetime | None = None
        self.problem: str | None = None
        self.poll_interval: float = config.schedule.heartbeat_s
        self._policy_version: int | None = None
        self._policy_etag: str | None = None
        # The daemon's change count at the last inventory the server accepted (None: none yet,
        # so the first report always goes).
        self._reported_changes: int | None = None
        self._core: Core | None = None
        self._handle_instruction: HandleInstruction | None = None
        self._lock = threading.Lock()
        # Set when the agent stops: a call waiting to retry gives up at once instead of sleeping
        # on (backoff waits reach minutes) and then using a closed client.
        self._stopping = threading.Event()
        self._url_allowed = plain_http_allowed(config.server.url, config.server.allow_plain_http_loopback)
        if not self._url_allowed:
            self.problem = PLAIN_HTTP_REFUSED
            log.error("%s", self.problem)

    def handle_instructions_with(self, handle: HandleInstruction) -> None:
        """Wired by the composition root when applying is enabled; else instructions are refused."""
        self._handle_instruction = handle

    # -- the daemon's part -----------------------------------------------------------------

    def prepare(self, core: Core) -> None:
        self._core = core
        with self._lock:
            self._connect()

    def jobs(self, schedule: ScheduleConfig, first_contact: datetime) -> list[Job]:
        return [
            ("heartbeat", self.heartbeat, self.heartbeat_interval(schedule.heartbeat_s), first_contact),
            (
                "full_report",
                self.report_if_changed,
                schedule.full_report_s,
                first_contact + timedelta(seconds=1),
            ),
            (
                "token_refresh",
                self.refresh_token,
                TOKEN_REFRESH_EVERY_S,
                first_contact + timedelta(seconds=2),
            ),
        ]

    def start(self) -> None:
        return None

    def stop(self) -> None:
        """Abandon retries in progress (the agent is stopping); close() follows."""
        self._stopping.set()

    def close(self) -> None:
        self._stopping.set()
        if self.client is not None:
            self.client.close()

    def _view(self) -> Core:
        if self._core is None:
            raise RuntimeError("server link used before prepare()")
        return self._core

    # -- credentials -----------------------------------------------------------------------

    def _connect(self) -> bool:
        """With the lock held. Never for a URL the configuration refuses (no credential goes there)."""
        if not self._url_allowed or self._core is None:
            return False
        try:
            credentials = host_credentials(self.config)
        except EnrollmentError as exc:  # its messages name files and modes, never a secret
            self.problem = f"credentials unreadable: {exc}"
            return False
        except (OSError, ValueError) as exc:
            self.problem = f"credentials unreadable: {type(exc).__name__}"
            return False
        if credentials is None:
            self.problem = NOT_ENROLLED
            return False
        register_secret(credentials.api_key)
        key_id = api_key_id(credentials.api_key)
        store = self._core.store
        self.client = api_client(
            self.config,
            self.config.server.url,
            credentials.api_key,
            sleep=self._pause,
            on_auth_invalid=lambda until: store.save_auth_hold(key_id, until),
        )
        # A key refused before a restart stays paused: restarting must not retry it at once.
        held = store.auth_hold(key_id)
        if held is not None:
            self.client.hold_authentication(held)
        self.host_id = credentials.host_id
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

    def _require(self) -> tuple[ApiClient, str]:
        if not self.ready or self.client is None or self.host_id is None:
            raise ApiError("AUTH_INVALID", self.problem or "not connected")
        return self.client, self.host_id

    # -- sender destination ----------------------------------------------------------------

    def deliver(self, events: Sequence[JSON]) -> list[str]:
        client, host_id = self._require()
        with self._view().health.call("events") as delivered:
            result = client.post_events(host_id, events)
            delivered.count = len(result["accepted_ids"])
        return list(result["accepted_ids"]) + [str(d["id"]) for d in result["dropped"]]

    def send_full_inventory(self) -> None:
        self.report()

    # -- jobs ------------------------------------------------------------------------------

    def heartbeat_interval(self, configured: float) -> float:
        return max(configured, self.poll_interval)

    def heartbeat(self) -> None:
        client, host_id = self._require()
        core = self._view()
        vitals = core.vitals()
        body = {
            "agent_version": __version__,
            "status": "ok" if vitals.healthy else "degraded",
            "uptime_s": vitals.uptime_s,
            "last_scan_at": rfc3339(vitals.last_scan_at),
            "keys": vitals.keys,
            "outbox": vitals.outbox,
        }
        try:
            with core.health.call("heartbeat"):
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
                core.reschedule("heartbeat", wanted)
        version = answer.get("policy_version")
        if isinstance(version, int) and version != self._policy_version:
            self.fetch_policy()
        self.poll_instructions()

    def fetch_policy(self) -> None:
        client, host_id = self._require()
        core = self._view()
        with core.health.call("policy"):
            document, etag = client.get_policy(host_id, self._policy_etag)
        self._policy_etag = etag
        if document is None:
            return
        try:
            policy = policy_from_json(document, core.policy())
        except (TypeError, ValueError):
            log.warning("policy from the server is malformed; keeping the current one")
            return
        core.adopt_policy(policy)
        self._policy_version = policy.version
        log.info("policy version %s in force", self._policy_version)

    def poll_instructions(self) -> None:
        client, host_id = self._require()
        with self._view().health.call("instructions"):
            tokens, _ = client.get_instructions(host_id)
        for token in tokens:
            if self._handle_instruction is None:
                log.warning("instruction received but applying is disabled (apply.enabled = false)")
                break
            try:
                jti, result = self._handle_instruction(token)
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
            with self._view().health.call("results"):
                client.post_instruction_result(
                    jti, result, idempotency_key=str(uuid.uuid5(uuid.NAMESPACE_URL, jti))
                )
        except ApiError as exc:
            if exc.code != "NOT_FOUND":  # unknown instruction: drop its result (contract table)
                raise

    def report_if_changed(self) -> None:
        if self._view().changes() != self._reported_changes:
            self.report()

    def report(self) -> None:
        """The full inventory now; on success, what it covers counts as reported."""
        client, host_id = self._require()
        core = self._view()
        changes = core.changes()  # before reading the inventory: a change after it is reported again
        inventory = core.inventory()
        if inventory is None:
            return
        text = inventory.to_json_text(host_id=host_id)
        try:
            with core.health.call("inventory"):
                client.put_inventory(host_id, text)
        finally:
            del text
            release_free_memory()  # the JSON text and its request: ~15 MB at 10,000 keys
        self._reported_changes = changes
        self.last_report_at = datetime.now(UTC)

    def put_scan_result(self, scan_id: str) -> None:
        client, host_id = self._require()
        inventory = self._view().rescan()
        if inventory is not None:
            with self._view().health.call("scan_result"):
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
