"""Crash recovery: finish the applies a crash interrupted, from the journal.

An edit journals (`begin_apply`) the user, every file with its sha256 before and after, and the
backup names before it writes anything, and removes the entry when it completes. At start,
`reconcile()` takes each entry left behind, hashes each file and decides:

* every file holds what the edit wrote: `applied` (backups re-indexed; an ephemeral grant is
  remembered again so that it is still removed at expiry);
* every file is as it was: `failed` `INTERRUPTED` ("not applied");
* anything else (someone changed a file since): `failed` `INTERRUPTED`.

The jti is recorded with that status (so a re-sent instruction is answered, not re-applied) and
the result returned for the daemon to post. An interrupted grant expiry (`sweep:<grant id>`) is
not reported: its grant is still stored and the next sweep finishes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from agent.host.safefs import UnsafePath
from agent.host.users import User
from agent.instructions.backups import sha256_hex
from agent.instructions.results import Result, result
from agent.instructions.view import HostView, UnitsOfWork
from agent.inventory.model import parse_rfc3339
from agent.store.state import PendingApply, StateStore

log = logging.getLogger("sshklm.apply")

JSON = dict[str, Any]
UNKNOWN_EXP_S = 86400  # how long to remember a jti whose journal entry has no exp


class Recovery:
    def __init__(self, units: UnitsOfWork, store: StateStore, clock: Callable[[], datetime]) -> None:
        self.units = units
        self.store = store
        self.clock = clock

    def reconcile(self) -> list[tuple[str, Result]]:
        """Applies a crash interrupted: compare each file with the journal, record and report."""
        out: list[tuple[str, Result]] = []
        with self.units.exclusive():  # no apply may begin (and journal) while the journal is read
            for pending in self.store.unfinished_applies():
                out += self._reconcile_entry(pending)
        return out

    def _reconcile_entry(self, pending: PendingApply) -> list[tuple[str, Result]]:
        with self.units.unit() as view:
            try:
                outcome = self._reconcile_one(view, pending.jti, pending.record)
            except Exception as exc:
                log.exception("reconcile %s failed", pending.jti)
                outcome = self._result("failed", {"code": "INTERNAL", "message": type(exc).__name__}, [])
        self.store.finish_apply(pending.jti)
        if pending.jti.startswith("sweep:"):
            return []  # a sweep: the grant is still stored, the next sweep finishes it
        exp = pending.record.get("exp")
        self.store.record_jti(
            pending.jti,
            str(outcome["status"]),
            float(exp) if exp else self.clock().timestamp() + UNKNOWN_EXP_S,
        )
        return [(pending.jti, outcome)]

    def _result(self, status: str, error: JSON | None, fingerprints: list[str]) -> Result:
        return result(status, error, fingerprints, self.clock())

    def _reconcile_one(self, view: HostView, jti: str, record: JSON) -> Result:
        user = view.user(str(record.get("user")))
        files = record.get("files") or []
        if user is None:
            return self._result(
                "failed", {"code": "NOT_FOUND", "message": "user gone after an interrupted apply"}, []
            )
        states: list[str] = []
        for entry in files:
            path = str(entry["path"])
            try:
                digest: str | None = sha256_hex(view.read_keys(user, path))
            except FileNotFoundError:
                digest = None
            except (OSError, UnsafePath):
                digest = "unreadable"
            if digest is not None and digest == entry.get("sha_after"):
                states.append("after")
                known = {b.path for b in self.store.backups_for(str(record.get("backup_id")))}
                if path not in known:
                    self.store.add_backup(str(record.get("backup_id")), path, str(entry["backup"]), digest)
            elif digest == entry.get("sha_before"):
                states.append("before")
            else:
                states.append("changed")
        fingerprints = view.fingerprints_of(user)
        if states and all(s == "after" for s in states):
            if record.get("kind") == "ephemeral":
                self._restore_grant(record, user, jti)
            return self._result("applied", None, fingerprints)
        if states and all(s == "before" for s in states):
            return self._result(
                "failed",
                {"code": "INTERRUPTED", "message": "interrupted before the file was written; not applied"},
                fingerprints,
            )
        return self._result(
            "failed",
            {"code": "INTERRUPTED", "message": "interrupted apply; the file differs from what it wrote"},
            fingerprints,
        )

    def _restore_grant(self, record: JSON, user: User, jti: str) -> None:
        """The crash came after the ephemeral line was written: remember the grant to remove it."""
        files = record.get("files") or []
        fingerprint = record.get("fingerprint")
        if not files or not isinstance(fingerprint, str) or not record.get("grant_id"):
            return
        path = str(files[0]["path"])
        self.store.add_grant(
            str(record["grant_id"]),
            user.name,
            path,
            fingerprint,
            parse_rfc3339(str(record["expires_at"])),
            jti,
        )
