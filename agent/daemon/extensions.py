"""Parts of the daemon beyond its core loop: the usage-log follower and the instruction applier.

Each is a `Part` (agent/daemon/parts.py): built by the composition root (agent/commands/run.py),
given the daemon's `Core` at prepare(), started and stopped with the daemon. Neither imports the
daemon nor the server link; the instruction handler talks to the link through `InstructionLink`.
The applier (and with it the instruction pipeline) is imported only when a handler is prepared:
a standalone agent never loads it.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from agent.config import Config, ScheduleConfig, UsageConfig
from agent.daemon.counters import instruction_result
from agent.daemon.parts import Core, Job
from agent.daemon.usage import UsageFollower
from agent.daemon.usage_parse import UsageHit
from agent.inventory.evaluate import Policy
from agent.inventory.model import Event, rfc3339

if TYPE_CHECKING:
    from agent.instructions.apply import Applier

log = logging.getLogger("sshklm.extensions")

JSON = dict[str, Any]


def key_used_event(hit: UsageHit, at: datetime, event_id: str) -> Event:
    """A login with a key, as the contract's `key_used` event (§5.3). Pure."""
    detail: JSON = {"from": hit.address, "at": rfc3339(at), "port": hit.port}
    if hit.cert_id is not None:
        detail.update(
            {"cert_id": hit.cert_id, "cert_serial": hit.cert_serial, "ca_fingerprint": hit.ca_fingerprint}
        )
    if hit.partial:
        detail["partial"] = True
    return Event(
        id=event_id,
        seq=0,  # the outbox assigns it
        at=at,
        type="key_used",
        user=hit.user,
        path=None,
        fingerprint=hit.fingerprint,
        key=None,
        detail=detail,
    )


class UsageTracker:
    """sshd's "Accepted publickey" lines -> `key_used` events and `last_used` per key and user."""

    def __init__(self, usage: UsageConfig, new_id: Callable[[], str] = lambda: str(uuid.uuid4())) -> None:
        source: Any = usage.source
        self.follower = UsageFollower(
            self.on_hit,
            source=source,
            log_file=usage.log_file or None,
            journal_unit=usage.journal_unit or None,
        )
        self._new_id = new_id
        self._core: Core | None = None

    def prepare(self, core: Core) -> None:
        self._core = core

    def on_hit(self, hit: UsageHit, at: datetime) -> None:
        core = self._core
        if core is None:
            raise RuntimeError("usage tracker not prepared")
        core.note_used(hit.fingerprint, hit.user, at)
        core.emit([key_used_event(hit, at, self._new_id())])

    def jobs(self, schedule: ScheduleConfig, first_contact: datetime) -> list[Job]:
        return []

    def start(self) -> None:
        self.follower.start()
        f = self.follower
        # Once per start, at one level: the follower itself does not log its choice.
        if f.mode == "disabled":
            log.warning("key usage: last-used tracking disabled: %s", f.reason)
        else:
            log.info("key usage: source %s %s(%s)", f.mode, f"{f.path} " if f.path else "", f.reason)

    def stop(self) -> None:
        self.follower.stop()


class InstructionLink(Protocol):
    """What the instruction handler needs of the server link."""

    @property
    def ready(self) -> bool: ...

    def post_result(self, jti: str, result: JSON) -> None: ...

    def put_scan_result(self, scan_id: str) -> None: ...


class InstructionHandler:
    """Server-issued rotations, ephemeral grants and scans, through the Applier (docs/rotation.md).

    It is also the Applier's `DaemonHooks` (agent/instructions/ports.py): what the applier asks of
    the daemon (host id, policy, a scan, a one-off job) and tells it (events, managed lines)."""

    def __init__(self, config: Config, link: InstructionLink, *, root: str | None = None) -> None:
        """`root`: the host root the daemon runs on (None: "/"), for the paths sshd sees."""
        self.config = config
        self.link = link
        self.root = root
        self.applier: Applier | None = None
        self._core: Core | None = None

    def prepare(self, core: Core) -> None:
        from agent.host.setup import sshd_version
        from agent.instructions.apply import Applier, ApplierSettings
        from agent.instructions.host_files import SafeHostFiles, backups_dir_for
        from agent.instructions.trust import trust_from

        cfg = self.config
        self._core = core
        settings = ApplierSettings(
            sshd_config=cfg.discovery.sshd_config,
            public_keys=tuple(cfg.instructions.public_keys),
            require_signature=cfg.instructions.require_signature,
            leeway_s=cfg.instructions.leeway_s,
            backups_per_file=cfg.apply.backups_per_file,
            ephemeral_sweep_s=cfg.schedule.ephemeral_sweep_s,
        )
        files = SafeHostFiles(core.fs, backups_dir_for(cfg.state.dir))
        version = functools.cache(lambda: sshd_version(cfg.discovery.sshd_binary))
        trust = trust_from(cfg, core.fs, core.store, root=self.root, sshd_version=version)
        self.applier = Applier(
            settings, files, core.users, core.store, self, clock=lambda: datetime.now(UTC), trust=trust
        )

    def _prepared(self) -> tuple[Applier, Core]:
        if self.applier is None or self._core is None:
            raise RuntimeError("instruction handler not prepared")
        return self.applier, self._core

    # -- DaemonHooks (agent/instructions/ports.py): what the applier asks of the daemon --

    def host_id(self) -> str | None:
        return self._prepared()[1].host_id()

    def policy(self) -> Policy:
        return self._prepared()[1].policy()

    def emit(self, events: Sequence[Event]) -> None:
        core = self._prepared()[1]
        for event in events:
            # Every instruction decided emits exactly one such event (a re-sent instruction
            # answered again from the jti registry emits none): its result is counted here once.
            result = instruction_result(event)
            if result is not None:
                core.counters.instruction(result)
        core.emit([_logged(event) for event in events])

    def note_managed(
        self, fingerprint: str, user: str | None, path: str, managed_by: str, expires_at: datetime | None
    ) -> None:
        self._prepared()[1].note_managed(fingerprint, user, path, managed_by, expires_at)

    def schedule_once(self, job_id: str, fn: Callable[[], None], when: datetime) -> None:
        self._prepared()[1].schedule_once(job_id, fn, when)

    def run_scan(self, scan_id: str) -> None:
        self.link.put_scan_result(scan_id)

    # -- the Part --

    def handle(self, token: str) -> tuple[str | None, JSON]:
        """One instruction token -> (its jti, its result). Given to the server link."""
        return self._prepared()[0].handle(token)

    def jobs(self, schedule: ScheduleConfig, first_contact: datetime) -> list[Job]:
        jobs: list[Job] = self._prepared()[0].jobs()
        return jobs

    def start(self) -> None:
        applier = self._prepared()[0]
        applier.start()
        # Applies a crash interrupted between writing and acknowledging: check, then report.
        for jti, result in applier.reconcile():
            self._prepared()[1].counters.instruction(result.get("status"))  # decided without an event
            if not self.link.ready:
                log.info(
                    "reconciled instruction %s: %s (not reported: not connected)", jti, result.get("status")
                )
                continue
            try:
                self.link.post_result(jti, result)
            except Exception as exc:
                log.warning("reconciled instruction %s: result not delivered (%s)", jti, exc)

    def stop(self) -> None:
        if self.applier is not None:
            self.applier.stop()


def _joined(value: object) -> str:
    return ", ".join(str(v) for v in value) if isinstance(value, list) and value else "none"


def describe_applied(event: Event) -> str | None:
    """One line for the log about what an applied instruction changed: who, which key (by
    fingerprint: never key material), what happened. None for events that are not applies. Pure."""
    if event.type != "instruction_applied":
        return None
    d = event.detail
    if d.get("action") == "ephemeral_expiry":
        return (
            f"ephemeral grant {d.get('grant_id')} expired: key {event.fingerprint} removed for "
            f"{event.user} ({event.path})"
        )
    kind = d.get("kind")
    if kind == "ephemeral":
        what = "added" if d.get("added") else "already in place"
        return (
            f"ephemeral grant {d.get('grant_id')}: key {event.fingerprint} {what} for {event.user} "
            f"until {d.get('expires_at')} ({event.path or _joined(d.get('changed_files'))})"
        )
    if kind == "revoke_ephemeral":
        removed = d.get("removed")
        what = f"key {_joined(removed)} removed" if removed else "nothing left to remove"
        return f"ephemeral grant {d.get('grant_id')} revoked: {what}"
    if kind == "rotation":
        return (
            f"rotation {d.get('rotation_id')} ({d.get('action')}) for {event.user}: "
            f"added {_joined(d.get('added'))}, removed {_joined(d.get('removed'))}"
        )
    if kind == "scan":
        return f"scan {d.get('scan_id')}: full scan done and sent"
    return f"instruction {d.get('jti')} ({kind}) applied"


def _logged(event: Event) -> Event:
    line = describe_applied(event)
    if line is not None:
        log.info("%s", line)
    return event
