"""The daemon's conversation with the control plane (enrolled mode): the shell around link_schedule.

Owns the one ApiClient. It is the sender's destination (events, full inventories) and a part of the
daemon (agent/daemon/parts.py). Every timing decision is agent/daemon/link_schedule.py's; this
module carries them out:

- the duties (heartbeat, full report, policy, token refresh) run as one-off scheduler jobs, each
  re-armed when it ends at the time the schedule gives for its outcome: one failing call never keeps
  another from running, and each is retried on its own schedule;
- the instruction channel runs on its own thread (a long-poll holds it up to a minute, which the
  scheduler's two workers must not pay for): one request outstanding, instructions applied and their
  results posted, then the next.

It sees the daemon only as the `Core` it is given at prepare(): it reads the inventory and vitals
there and hands back a new policy through it. Credentials come from `server.api_key_file` +
`server.host_id`, else from what `enroll` stored; without either the link waits (events stay in the
outbox) and says so in status.

(Over 500 lines: one class whose parts - connection, duties, instruction channel, the sender's
destination - share one client, one set of credentials and one schedule under one lock.)
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
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
from agent.control.errors import AUTH_FORBIDDEN, NOT_FOUND, TRANSPORT_ERROR, ApiError
from agent.daemon.link_schedule import DUTIES, Duty, Failure, LinkSchedule, LinkTiming
from agent.daemon.memory import release_free_memory
from agent.daemon.parts import Core, Job
from agent.inventory.evaluate import Policy
from agent.inventory.model import rfc3339
from agent.log import register_secret

log = logging.getLogger("sshklm.link")

JSON = dict[str, Any]
# A verified, validated and applied instruction -> (its jti or None when unreadable, its result).
HandleInstruction = Callable[[str], tuple[str | None, JSON]]

# Duties and the instruction channel make one attempt per call: what follows a failure is the
# schedule's decision (the backoff), not a retry loop holding a scheduler worker.
ONE_ATTEMPT = 1


def channel_failure(exc: ApiError) -> Failure:
    """How an instruction request failed, as the channel's schedule tells failures apart. As in
    CallRetry (agent/control/retry.py), a 4xx is a refusal and every other status that did not
    deliver is transient: a 5xx, a 3xx (never followed), a status no call expects, an answer that is
    not a JSON object or was refused unread (too large: ANSWER_TOO_LARGE carries the 2xx status)."""
    if exc.status == 429:
        return "rate_limited"
    if exc.status is not None:
        return "refused" if 400 <= exc.status < 500 else "transient"
    transport = exc.details.get("transport")
    if transport == "dropped":
        return "dropped"
    if transport is not None:
        return "transient"
    return "not_ready"  # raised before anything was sent: not connected, or the key is paused


def _retry_after(exc: ApiError) -> float | None:
    value = exc.details.get("retry_after") if exc.status == 429 else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class ServerLink:
    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.host_id: str | None = None
        self.client: ApiClient | None = None
        self.last_report_at: datetime | None = None
        self.last_heartbeat_at: datetime | None = None
        self.problem: str | None = None
        self.channel_error: str | None = None
        self._clock = clock
        self._rng = rng or random.Random()
        self._timing = LinkTiming.from_config(config.schedule)
        self._schedule = LinkSchedule(self._timing, clock(), self._rng)
        self._policy_version: int | None = None
        self._policy_etag: str | None = None
        # The daemon's change count at the last inventory the server accepted (None: none yet,
        # so the first report always goes).
        self._reported_changes: int | None = None
        self._core: Core | None = None
        self._handle_instruction: HandleInstruction | None = None
        self._lock = threading.Lock()  # credentials and the connection
        self._timing_lock = threading.Lock()  # the schedule (duties and the channel thread)
        self._armed: dict[Duty, float | None] = {}
        self._channel: threading.Thread | None = None
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
        """The duties as one-off jobs at first contact (each re-arms itself when it ends); asked again
        after a reload, with the new settings."""
        first = first_contact.timestamp()
        with self._timing_lock:
            self._timing = LinkTiming.from_config(schedule)
            if self._channel is None:
                self._schedule = LinkSchedule(self._timing, first, self._rng)
            else:
                self._schedule.retime(self._timing)
                for duty in ("heartbeat", "full_report", "token_refresh"):
                    self._schedule.duties[duty].due = first
            dues = dict(self._schedule.dues())
        self._armed = dues
        return [
            (duty, self._duty_runner(duty), None, datetime.fromtimestamp(due, UTC))
            for duty, due in dues.items()
            if due is not None
        ]

    def start(self) -> None:
        """The instruction channel's thread (a standalone or refused link has none)."""
        if not self._url_allowed or self._channel is not None:
            return
        self._channel = threading.Thread(target=self._channel_loop, name="sshklm-instructions", daemon=True)
        self._channel.start()

    def stop(self) -> None:
        """Abandon retries in progress (the agent is stopping); close() follows."""
        self._stopping.set()

    def close(self) -> None:
        self._stopping.set()
        if self.client is not None:
            self.client.close()
        if self._channel is not None:
            # A long-poll in flight ends with the connection or the server's answer; the thread is a
            # daemon thread and nothing waits for it past this.
            self._channel.join(1.0)

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
            on_attempt=self._core.counters.attempt,
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

    # -- duties ----------------------------------------------------------------------------

    def _duty_runner(self, duty: Duty) -> Callable[[], None]:
        def run() -> None:
            self.run_duty(duty)

        run.__name__ = duty
        return run

    def run_duty(self, duty: Duty) -> None:
        """Run one duty now and re-arm every duty whose time changed. An ApiError still reaches the
        caller (the scheduler's guard logs it and notes it as the daemon's last error)."""
        try:
            self._perform(duty)
        except ApiError as exc:
            with self._timing_lock:
                self._schedule.failed(duty, self._clock(), retry_after=_retry_after(exc))
            raise
        except Exception:
            with self._timing_lock:
                self._schedule.failed(duty, self._clock())
            raise
        else:
            stale_at = self.client.token_stale_at if self.client is not None else None
            with self._timing_lock:
                self._schedule.succeeded(duty, self._clock(), token_stale_at=stale_at)
        finally:
            self._arm()

    def _perform(self, duty: Duty) -> None:
        if duty == "heartbeat":
            self.heartbeat()
        elif duty == "full_report":
            self.report_if_changed()
        elif duty == "policy":
            self.fetch_policy()
        else:
            self.refresh_token()

    def _arm(self) -> None:
        """Hand the scheduler every duty whose due time moved (none once the agent stops)."""
        if self._stopping.is_set() or self._core is None:
            return
        with self._timing_lock:
            dues = dict(self._schedule.dues())
        for duty in DUTIES:
            due = dues[duty]
            if due is not None and due != self._armed.get(duty):
                self._core.schedule_once(duty, self._duty_runner(duty), datetime.fromtimestamp(due, UTC))
            self._armed[duty] = due

    def heartbeat_interval(self) -> float:
        with self._timing_lock:
            return self._schedule.heartbeat_interval()

    def heartbeat(self) -> None:
        client, host_id = self._require()
        vitals = self._view().vitals()
        body = {
            "agent_version": __version__,
            "status": "ok" if vitals.healthy else "degraded",
            "uptime_s": vitals.uptime_s,
            "last_scan_at": rfc3339(vitals.last_scan_at),
            "keys": vitals.keys,
            "outbox": vitals.outbox,
        }
        try:
            with self._view().health.call("heartbeat"):
                answer = client.heartbeat(host_id, body, attempts=ONE_ATTEMPT)
        except ApiError as exc:
            if exc.code == NOT_FOUND:
                self.problem = "host unknown to the server: enroll again"
            raise
        self.last_heartbeat_at = datetime.now(UTC)
        poll = answer.get("poll_interval")
        version = answer.get("policy_version")
        with self._timing_lock:
            self._schedule.heartbeat_answered(
                self._clock(),
                poll_interval=float(poll)
                if isinstance(poll, int | float) and not isinstance(poll, bool)
                else None,
                policy_version=version
                if isinstance(version, int) and not isinstance(version, bool)
                else None,
            )

    def fetch_policy(self) -> None:
        """The server's policy for this host (contract §7). None for this host (404) keeps the local
        policy and is not an error (§2); a refusal (403) is not retried until the version changes."""
        client, host_id = self._require()
        core = self._view()
        try:
            document, etag = client.get_policy(host_id, self._policy_etag, attempts=ONE_ATTEMPT)
        except ApiError as exc:
            if exc.code == NOT_FOUND:
                core.health.succeeded("policy", http_status=404)  # an answer: the server has none
            else:
                core.health.failed("policy", exc)
            if exc.code not in (NOT_FOUND, AUTH_FORBIDDEN):
                raise
            with self._timing_lock:
                self._schedule.policy_settled_at(None)
            if exc.code == NOT_FOUND:
                log.info("the server has no policy for this host; the local policy stays in force")
            else:
                log.warning(
                    "the server refuses this host its policy (%s); the local policy stays in force", exc
                )
            return
        core.health.succeeded("policy")
        self._policy_etag = etag
        if document is None:
            with self._timing_lock:
                self._schedule.policy_settled_at(self._policy_version)
            return
        try:
            policy = policy_from_json(document, core.policy())
        except (TypeError, ValueError):
            log.warning("policy from the server is malformed; keeping the current one")
            with self._timing_lock:
                self._schedule.policy_settled_at(None)
            return
        core.adopt_policy(policy)
        self._policy_version = policy.version
        with self._timing_lock:
            self._schedule.policy_settled_at(policy.version)
        log.info("policy version %s in force", self._policy_version)

    def report_if_changed(self) -> None:
        if self._view().changes() != self._reported_changes:
            self.report(attempts=ONE_ATTEMPT)

    def report(self, *, attempts: int | None = None) -> None:
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
                client.put_inventory(host_id, text, attempts=attempts)
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

    # -- the instruction channel -----------------------------------------------------------

    def _channel_loop(self) -> None:
        while not self._stopping.is_set():
            with self._timing_lock:
                request = self._schedule.channel.next_request(self._clock())
            delay = request.at - self._clock()
            if delay > 0 and self._stopping.wait(delay):
                return
            try:
                self.exchange_instructions(request.wait_s)
            except Exception:  # the channel must outlive anything one exchange can raise
                log.exception("instruction request failed unexpectedly")
                with self._timing_lock:
                    self._schedule.channel.failed(
                        self._clock(), held_s=0.0, asked_wait=request.wait_s, failure="transient"
                    )

    def exchange_instructions(self, wait_s: int | None) -> None:
        """One instruction request (a long-poll with `wait_s`, else a plain poll), what it brought
        applied and answered, and the channel told how it went. LinkHealth records the request
        ("instructions"), except when nothing was sent (not connected) and a planned idle cut."""
        started = self._clock()
        sent = self._view().health.stamp()  # a long-poll held since before an outage ends none
        try:
            client, host_id = self._require()
            batch = client.get_instructions(host_id, wait_s=wait_s, attempts=ONE_ATTEMPT)
        except ApiError as exc:
            failure = channel_failure(exc)
            held = self._clock() - started
            with self._timing_lock:
                channel = self._schedule.channel
                cuts_before = channel.failures
                next_at = channel.failed(
                    self._clock(),
                    held_s=held,
                    asked_wait=wait_s,
                    failure=failure,
                    retry_after=_retry_after(exc),
                )
            if self._stopping.is_set() or failure == "not_ready":
                return
            # A cut after a hold that the channel takes as a proxy's idle timeout (one quick retry,
            # or a lower wait) is the path's habit, not a failed call: not recorded, said at info.
            planned_cut = failure == "dropped" and channel.failures == cuts_before
            if not planned_cut:
                self.channel_error = f"{rfc3339(datetime.now(UTC))} {exc}"
                self._view().health.failed("instructions", exc)
            (log.info if planned_cut else log.debug)(
                "instructions request: %s; next in %.1f s", exc, max(0.0, next_at - self._clock())
            )
            return
        self._view().health.succeeded("instructions", begun=sent)
        if self._stopping.is_set():
            return  # what it brought stays pending at the server: the next start applies it
        settled = self._apply(batch.tokens)
        with self._timing_lock:
            self._schedule.channel.answered(
                self._clock(),
                held_s=self._clock() - started,
                asked_wait=wait_s,
                wait_supported=batch.wait_supported,
                brought=len(batch.tokens),
                settled=settled,
                poll_interval=float(batch.poll_interval) if batch.poll_interval is not None else None,
            )
        self.channel_error = None

    def _apply(self, tokens: Sequence[str]) -> bool:
        """Apply each instruction and post its result. True when every one was answered (a result
        posted, or nothing to answer for); False leaves some pending at the server."""
        settled = True
        for token in tokens:
            if self._handle_instruction is None:
                log.warning("instruction received but applying is disabled (apply.enabled = false)")
                return False
            try:
                jti, result = self._handle_instruction(token)
            except Exception:
                log.exception("instruction handling failed")
                settled = False
                continue
            if jti is None:
                # Not even a jti could be read: there is no instruction id to answer for.
                log.warning("unreadable instruction dropped (%s)", result.get("error"))
                continue
            try:
                self.post_result(jti, result)
            except ApiError as exc:
                log.warning("result of instruction %s not delivered (%s); asked again later", jti, exc)
                settled = False
        return settled

    def post_result(self, jti: str, result: JSON) -> None:
        client, _ = self._require()
        try:
            with self._view().health.call("results"):
                client.post_instruction_result(
                    jti, result, idempotency_key=str(uuid.uuid5(uuid.NAMESPACE_URL, jti))
                )
        except ApiError as exc:
            if exc.code != NOT_FOUND:  # unknown instruction: drop its result (contract table)
                raise

    # -- status ----------------------------------------------------------------------------

    def status(self) -> JSON:
        client = self.client
        expires = client.token_expires_at if client is not None else None
        with self._timing_lock:
            channel = self._schedule.channel
            instructions = {
                "mode": channel.mode,
                "long_polling": channel.long_polling,
                "wait_s": channel.wait_s if channel.mode == "long_poll" else None,
                "failures": channel.failures,
                "last_error": self.channel_error,
                # While failing, when the channel's backoff sends the next request (as the
                # sender's reporting.next_retry_at).
                "next_retry_at": rfc3339(datetime.fromtimestamp(channel.next_at, UTC))
                if channel.failures
                else None,
            }
        return {
            "host_id": self.host_id,
            "server": self.config.server.url,
            "auth_state": client.auth_state if client is not None else "not_connected",
            "token_expires_at": rfc3339(expires) if expires else None,
            "last_report_at": rfc3339(self.last_report_at),
            "last_heartbeat_at": rfc3339(self.last_heartbeat_at),
            "link_problem": self.problem,
            "policy_version": self._policy_version,
            "instructions": instructions,
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
