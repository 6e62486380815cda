"""Ephemeral grants: a key for a user until a time, then removed.

The line is `expiry-time="YYYYMMDDHHMMSSZ" <key> sshklm-ephemeral:<grant_id>`, so sshd stops
honouring it at expiry even if the agent is down. The grant is stored (`add_grant`); its line is
removed at `expires_at` (a one-off job), on `revoke_ephemeral`, and by the sweep (at start and
every `schedule.ephemeral_sweep_s`), which also retries removals that failed. Removal deletes
only lines carrying that grant's tag, so a permanent line of the same key survives.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from agent.instructions.edit import EditRequest, FileEditor, JournalKey, Outcome
from agent.instructions.errors import ApplyFailed
from agent.instructions.plan import KeyChange, plan_remove
from agent.instructions.ports import DaemonHooks
from agent.instructions.results import Reporter
from agent.instructions.rotation import check_in_effect, each_file, key_change_planner
from agent.instructions.validate import EPHEMERAL_TAG, Ephemeral, Revoke
from agent.instructions.verify import Instruction
from agent.instructions.view import HostView, UnitsOfWork
from agent.inventory.model import rfc3339
from agent.store.state import Grant, StateStore

log = logging.getLogger("sshklm.apply")


def ephemeral_tag(grant_id: str) -> str:
    return f"{EPHEMERAL_TAG}:{grant_id}"


def expiry_job_id(grant_id: str) -> str:
    return f"ephemeral-expire:{grant_id}"


class Grants:
    """Adds, revokes, expires and sweeps ephemeral grants."""

    def __init__(
        self,
        units: UnitsOfWork,
        editor: FileEditor,
        store: StateStore,
        hooks: DaemonHooks,
        reporter: Reporter,
        clock: Callable[[], datetime],
    ) -> None:
        self.units = units
        self.editor = editor
        self.store = store
        self.hooks = hooks
        self.reporter = reporter
        self.clock = clock

    def grant(self, view: HostView, ins: Instruction, body: Ephemeral) -> Outcome:
        """Write the grant's line, remember the grant, schedule its removal."""
        user = view.require_user(body.user)
        target = view.first_path(user)
        new = body.new
        assert new.options is not None  # the grant's expiry-time
        change = KeyChange(
            fingerprint=new.key.fingerprint,
            key_text=new.text,
            options_text=new.options_text,
            options=new.options,
            tag=ephemeral_tag(body.grant_id),
            target=target,
        )
        outcome = self.editor.edit(
            EditRequest(
                JournalKey.of(ins, body.grant_id),
                user,
                [target],
                key_change_planner(change, view),
                backup_id=body.grant_id,
                create=True,
                managed=(new.key.fingerprint, f"ephemeral:{body.grant_id}", body.expires_at),
                extra={
                    "grant_id": body.grant_id,
                    "expires_at": rfc3339(body.expires_at),
                    "fingerprint": new.key.fingerprint,
                },
            ),
            view,
        )
        self.store.add_grant(body.grant_id, user.name, target, new.key.fingerprint, body.expires_at, ins.jti)
        try:
            self.hooks.schedule_once(
                expiry_job_id(body.grant_id), self.expiry_job(body.grant_id), body.expires_at
            )
        except Exception:
            log.exception("could not schedule the removal of grant %s (the sweep will do it)", body.grant_id)
        outcome.added = [new.key.fingerprint] if outcome.written else []
        check_in_effect(view, user.name, [target], change, outcome)
        return outcome

    def revoke(self, view: HostView, ins: Instruction, body: Revoke) -> Outcome:
        grant = self._find(body.grant_id)
        if grant is None:
            return Outcome()  # unknown or already removed: nothing to do (idempotent)
        return self._remove(view, ins, grant)

    def _find(self, grant_id: str) -> Grant | None:
        return next((g for g in self.store.all_grants() if g.grant_id == grant_id), None)

    def _remove(self, view: HostView, ins: Instruction | None, grant: Grant) -> Outcome:
        """Remove the grant's line (`ins` None: at expiry) and forget the grant."""
        user = view.user(grant.user)
        if user is None:  # the account is gone, and with it sshd's use of the line
            self.store.remove_grant(grant.grant_id)
            return Outcome()
        tag = ephemeral_tag(grant.grant_id)
        outcome = self.editor.edit(
            EditRequest(
                JournalKey.of(ins, grant.grant_id),
                user,
                [grant.path],
                each_file(lambda data: plan_remove(data, grant.fingerprint, tag=tag)),
                backup_id=grant.grant_id,
                create=False,
                managed=None,
            ),
            view,
        )
        self.store.remove_grant(grant.grant_id)
        outcome.removed = [grant.fingerprint] if outcome.written else []
        return outcome

    # -- expiry ------------------------------------------------------------------------------------

    def expiry_job(self, grant_id: str) -> Callable[[], None]:
        """The one-off job run at a grant's expiry."""

        def expire() -> None:
            self.expire(grant_id)

        return expire

    def expire(self, grant_id: str) -> None:
        """A grant's expiry has come (it may have been revoked or swept already)."""
        grant = self._find(grant_id)
        if grant is not None and grant.expires_at <= self.clock() + timedelta(seconds=1):
            self._expire(grant)

    def sweep(self) -> int:
        """Remove every grant whose time has come (also those whose removal failed before).
        Returns how many were removed."""
        return sum(self._expire(grant) for grant in self.store.due_grants(self.clock()))

    def _expire(self, grant: Grant) -> int:
        with self.units.unit() as view:
            try:
                outcome = self._remove(view, None, grant)
            except ApplyFailed as exc:
                # Kept for the next sweep; sshd ignores the line anyway (expiry-time).
                log.warning("ephemeral grant %s: removal failed: %s", grant.grant_id, exc.message)
                self.reporter.grant_expiry_failed(grant, exc.code, exc.message)
                return 0
            self.reporter.grant_expired(grant, outcome)
            return 1
