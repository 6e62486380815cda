"""Parts attached to the daemon: the usage-log follower and the instruction applier.

Kept out of service.py so the core loop (scan, watch, outbox, report) does not depend on them.
Each has prepare() (the daemon's store, host and link exist), start()/stop() and jobs().
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agent.daemon.service import Daemon
from agent.daemon.usage import UsageFollower
from agent.daemon.usage_parse import UsageHit
from agent.inventory.evaluate import Policy
from agent.inventory.model import Event, rfc3339

if TYPE_CHECKING:
    from agent.instructions.apply import Applier

log = logging.getLogger("sshklm.extensions")

Job = tuple[str, Callable[[], None], float | None, datetime | None]


class UsageTracker:
    """sshd's "Accepted publickey" lines -> `key_used` events and `last_used` per key and user."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        usage = daemon.config.usage
        source: Any = usage.source
        self.follower = UsageFollower(
            self.on_hit,
            source=source,
            log_file=usage.log_file or None,
            journal_unit=usage.journal_unit or None,
        )

    def on_hit(self, hit: UsageHit, at: datetime) -> None:
        self.daemon.note_used(hit.fingerprint, hit.user, at)
        detail: dict[str, Any] = {"from": hit.address, "at": rfc3339(at), "port": hit.port}
        if hit.cert_id is not None:
            detail.update({"cert_id": hit.cert_id, "ca_fingerprint": hit.ca_fingerprint})
        if hit.partial:
            detail["partial"] = True
        event = {
            "id": str(uuid.uuid4()),
            "at": rfc3339(at),
            "type": "key_used",
            "user": hit.user,
            "path": None,
            "fingerprint": hit.fingerprint,
            "key": None,
            "detail": detail,
        }
        self.daemon.emit_events([event])

    def prepare(self) -> None:
        return None

    def start(self) -> None:
        self.follower.start()
        f = self.follower
        log.info("key usage: source %s %s (%s)", f.mode, f.path or "", f.reason)

    def stop(self) -> None:
        self.follower.stop()

    def jobs(self) -> list[Job]:
        return []


class InstructionHandler:
    """Server-issued rotations, ephemeral grants and scans, through the Applier (docs/rotation.md).

    It is also the Applier's `DaemonHooks` (agent/instructions/ports.py): what the applier asks of
    the daemon (host id, policy, a scan, a one-off job) and tells it (events, managed lines)."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.applier: Applier | None = None

    def prepare(self) -> None:
        from agent.instructions.apply import Applier, ApplierSettings
        from agent.instructions.host_files import SafeHostFiles, backups_dir_for

        d = self.daemon
        cfg = d.config
        settings = ApplierSettings(
            sshd_config=cfg.discovery.sshd_config,
            public_keys=tuple(cfg.instructions.public_keys),
            require_signature=cfg.instructions.require_signature,
            leeway_s=cfg.instructions.leeway_s,
            backups_per_file=cfg.apply.backups_per_file,
            ephemeral_sweep_s=cfg.schedule.ephemeral_sweep_s,
        )
        files = SafeHostFiles(d.fs, backups_dir_for(cfg.state.dir))
        self.applier = Applier(settings, files, d.users, d.store, self, clock=lambda: datetime.now(UTC))
        if d.link is not None:
            d.link.instruction_handler = self.applier.handle

    # -- DaemonHooks --

    def host_id(self) -> str | None:
        return self.daemon.host_id

    def policy(self) -> Policy:
        return self.daemon.policy

    def emit(self, events: Sequence[Event]) -> None:
        self.daemon.emit_events([event.to_json() for event in events])

    def note_managed(
        self, fingerprint: str, user: str | None, path: str, managed_by: str, expires_at: datetime | None
    ) -> None:
        self.daemon.note_managed(fingerprint, user, path, managed_by, expires_at)

    def schedule_once(self, job_id: str, fn: Callable[[], None], when: datetime) -> None:
        self.daemon.schedule_once(job_id, fn, when)

    def run_scan(self, scan_id: str) -> None:
        link = self.daemon.link
        if link is not None:
            link.put_scan_result(scan_id)
        else:
            self.daemon.rescan()

    def start(self) -> None:
        assert self.applier is not None, "prepare() first"
        self.applier.start()
        # Applies a crash interrupted between writing and acknowledging: check, then report.
        for jti, result in self.applier.reconcile():
            link = self.daemon.link
            if link is None or not link.ready:
                log.info(
                    "reconciled instruction %s: %s (not reported: not connected)", jti, result.get("status")
                )
                continue
            try:
                link.post_result(jti, result)
            except Exception as exc:
                log.warning("reconciled instruction %s: result not delivered (%s)", jti, exc)

    def stop(self) -> None:
        if self.applier is not None:
            self.applier.stop()

    def jobs(self) -> list[Job]:
        return self.applier.jobs() if self.applier is not None else []


def attach_extensions(daemon: Daemon) -> None:
    config = daemon.config
    if config.usage.enabled and config.usage.source != "none":
        daemon.extensions.append(UsageTracker(daemon))
    # Instructions only ever come from the control plane: a standalone agent has none to apply.
    if config.apply.enabled and config.server.url:
        daemon.extensions.append(InstructionHandler(daemon))
