"""Parts attached to the daemon at start: the usage-log follower and the instruction applier.

Kept out of service.py so the core loop (scan, watch, outbox, report) does not depend on
them. Each exposes start()/stop() and may contribute scheduled jobs via jobs().
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from agent.daemon.service import Daemon
from agent.daemon.usage import UsageFollower
from agent.daemon.usage_parse import UsageHit
from agent.inventory.model import rfc3339

log = logging.getLogger("sshklm.extensions")

Job = tuple[str, Callable[[], None], float, datetime | None]


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

    def start(self) -> None:
        self.follower.start()
        f = self.follower
        log.info("key usage: source %s %s (%s)", f.mode, f.path or "", f.reason)

    def stop(self) -> None:
        self.follower.stop()

    def jobs(self) -> list[Job]:
        return []


def attach_extensions(daemon: Daemon) -> None:
    config = daemon.config
    if config.usage.enabled and config.usage.source != "none":
        daemon.extensions.append(UsageTracker(daemon))
