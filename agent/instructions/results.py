"""What the applier reports: the result posted for an instruction, and its events.

Result (agent-api.md section 6): `{"status", "at", "error": {"code", "message"} | null,
"fingerprints_after": [...]}`. Events (section 5.3) are `inventory.model.Event`s:
`instruction_applied` (detail: jti, kind, ids, `managed_by`, added/removed fingerprints, changed
files) or `instruction_failed` (jti, status, code, message); a grant's expiry reports the same two
types with `action: ephemeral_expiry`. Messages carry reasons and paths, never key material.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from agent.instructions.edit import Outcome
from agent.instructions.ports import DaemonHooks
from agent.instructions.validate import Body, Ephemeral, Revoke, Rotation, Scan
from agent.instructions.validate_trust import Revocation, TrustBody, TrustCa, UntrustCa
from agent.instructions.verify import Instruction
from agent.inventory.model import Event, EventType, rfc3339
from agent.store.state import Grant

log = logging.getLogger("sshklm.apply")

JSON = dict[str, Any]
Result = JSON


def result(status: str, error: JSON | None, fingerprints: Sequence[str], at: datetime) -> Result:
    return {
        "status": status,
        "at": rfc3339(at),
        "error": error,
        "fingerprints_after": list(dict.fromkeys(fingerprints)),
    }


def applied_detail(
    ins: Instruction, body: Body | TrustBody, outcome: Outcome
) -> tuple[JSON, str | None, str | None]:
    """(detail, user, fingerprint) of an applied instruction's event. Pure."""
    detail: JSON = {
        "jti": ins.jti,
        "kind": ins.kind,
        "added": outcome.added,
        "removed": outcome.removed,
        "changed_files": outcome.written,
    }
    user = None
    fingerprint = None
    if isinstance(body, Rotation):
        detail.update(
            rotation_id=body.rotation_id, action=body.action, managed_by=f"rotation:{body.rotation_id}"
        )
        user = body.user
        fingerprint = body.new.key.fingerprint if body.new else body.old_fingerprint
    elif isinstance(body, Ephemeral):
        detail.update(
            grant_id=body.grant_id,
            managed_by=f"ephemeral:{body.grant_id}",
            expires_at=rfc3339(body.expires_at),
        )
        user, fingerprint = body.user, body.new.key.fingerprint
    elif isinstance(body, Revoke):
        detail.update(grant_id=body.grant_id)
    elif isinstance(body, Scan):
        detail.update(scan_id=body.scan_id)
    elif isinstance(body, Revocation):
        detail.update(revocation_id=body.revocation_id, managed_by=f"revocation:{body.revocation_id}")
    elif isinstance(body, TrustCa | UntrustCa):
        detail.update(ca_id=body.ca_id, managed_by=f"ca:{body.ca_id}")
    return detail, user, fingerprint


class Reporter:
    """Builds results and emits events through the daemon hooks (reporting never stops an apply)."""

    def __init__(
        self,
        hooks: DaemonHooks,
        clock: Callable[[], datetime],
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self.hooks = hooks
        self.clock = clock
        self.new_id = new_id

    def result(self, status: str, error: JSON | None, fingerprints: Sequence[str]) -> Result:
        return result(status, error, fingerprints, self.clock())

    def event(
        self, kind: EventType, user: str | None, path: str | None, fingerprint: str | None, detail: JSON
    ) -> Event:
        # seq 0: a placeholder, the outbox assigns the real one.
        return Event(self.new_id(), 0, self.clock(), kind, user, path, fingerprint, None, detail)

    def emit(self, *events: Event) -> None:
        try:
            self.hooks.emit(events)
        except Exception:  # reporting must never undo or stop an apply
            log.exception("could not queue instruction events")

    def not_applied(
        self, jti: str | None, status: str, code: str, message: str, ins: Instruction | None
    ) -> Result:
        """Log and report an instruction that was not applied; its result."""
        log.warning("instruction %s %s: %s", jti or "(no jti)", status, message)
        detail: JSON = {"jti": jti, "status": status, "code": code, "message": message}
        user = None
        if ins is not None:
            detail["kind"] = ins.kind
            maybe_user = ins.body.get("user")
            user = maybe_user if isinstance(maybe_user, str) and len(maybe_user) <= 64 else None
        self.emit(self.event("instruction_failed", user, None, None, detail))
        return self.result(status, {"code": code, "message": message}, [])

    def applied(self, ins: Instruction, body: Body | TrustBody, outcome: Outcome) -> None:
        detail, user, fingerprint = applied_detail(ins, body, outcome)
        path = outcome.written[0] if len(outcome.written) == 1 else None
        self.emit(self.event("instruction_applied", user, path, fingerprint, detail))

    def grant_expired(self, grant: Grant, outcome: Outcome) -> None:
        detail: JSON = {
            "action": "ephemeral_expiry",
            "grant_id": grant.grant_id,
            "jti": grant.jti,
            "managed_by": f"ephemeral:{grant.grant_id}",
            "removed": outcome.removed,
            "changed_files": outcome.written,
        }
        self.emit(self.event("instruction_applied", grant.user, grant.path, grant.fingerprint, detail))

    def grant_expiry_failed(self, grant: Grant, code: str, message: str) -> None:
        detail: JSON = {
            "action": "ephemeral_expiry",
            "grant_id": grant.grant_id,
            "jti": grant.jti,
            "code": code,
            "message": message,
        }
        self.emit(self.event("instruction_failed", grant.user, grant.path, grant.fingerprint, detail))
