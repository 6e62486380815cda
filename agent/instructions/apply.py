"""Apply verified instructions to the host: the pipeline, and the Applier that wires its parts.

Order for every instruction (agent-api.md section 6): size check, signature and claims
(`verify`), replay check (jti registry), body validation (`validate`); only then is any file
of a user's opened. A rejection therefore never opens, creates or writes anything.

Replays: a jti recorded as `applied` (or `expired`) is answered again with that status and the
current fingerprints, without touching a file — the server re-sends an instruction whose result
it never received, and answering "rejected" would misreport a change that is in place. Any
other recorded status is answered `rejected` ("replayed jti"). A jti is recorded only once its
signature verified, so a forger cannot burn a legitimate jti.

Where the rest is (docs/rotation.md has the whole story):
  ports.py       the interfaces to the host files and the daemon; host_files.py the real one
  view.py        users and their authorized keys files, read once per unit of work; the lock
  rotation.py    add / remove / replace;  grants.py  ephemeral grants, expiry, the sweep
  edit.py        the file-edit transaction (plan all, backup, journal, atomic writes, retry)
  backups.py     backup files and pruning;  recovery.py  the journal after a crash
  rollback.py    `sshklm-agent rollback`;   results.py  results and events
  trust.py       revoke_keys / unrevoke_keys / trust_ca / untrust_ca (revocation.py, ca_trust.py)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from agent.host.users import UserSource
from agent.instructions.backups import Backups
from agent.instructions.edit import FileEditor, Outcome
from agent.instructions.errors import ApplyFailed, RollbackRefused
from agent.instructions.grants import Grants, expiry_job_id
from agent.instructions.ports import DaemonHooks, HostFiles
from agent.instructions.recovery import Recovery
from agent.instructions.results import Reporter, Result
from agent.instructions.rollback import Rollback
from agent.instructions.rotation import rotate
from agent.instructions.trust import Trust
from agent.instructions.validate import Body, Ephemeral, Revoke, Rotation, Scan, check_root_from, validate
from agent.instructions.validate_trust import TRUST_KINDS, TrustBody, validate_trust
from agent.instructions.verify import (
    MAX_TOKEN_BYTES,
    Instruction,
    Rejected,
    load_public_keys,
    peek_jti,
    verify_instruction,
)
from agent.instructions.view import HostView, UnitsOfWork
from agent.inventory.evaluate import Policy
from agent.store.state import StateStore

__all__ = ["Applier", "ApplierSettings", "ApplyFailed", "RollbackRefused"]

log = logging.getLogger("sshklm.apply")

# (job id, function, interval in seconds or None for a one-off, first run or None for "now + interval")
Job = tuple[str, Callable[[], None], float | None, datetime | None]


@dataclass(frozen=True)
class ApplierSettings:
    """The applier's configuration (`instructions.*`, `apply.*`, `schedule.ephemeral_sweep_s`)."""

    sshd_config: str = "/etc/ssh/sshd_config"
    public_keys: tuple[str, ...] = ()  # pinned Ed25519 keys, OpenSSH or PEM text
    require_signature: bool = True
    leeway_s: float = 30.0
    backups_per_file: int = 10
    ephemeral_sweep_s: float = 60.0


class Applier:
    """Applies instructions. Thread-safe: one lock serialises every change to users' files."""

    def __init__(
        self,
        settings: ApplierSettings,
        files: HostFiles,
        users: UserSource,
        store: StateStore,
        hooks: DaemonHooks,
        *,
        clock: Callable[[], datetime],
        trust: Trust | None = None,
    ) -> None:
        """`trust`: revocation and CA trust (agent/instructions/trust.py); without it those
        instructions fail with NOT_SUPPORTED."""
        self.settings = settings
        self.trust = trust
        self.store = store
        self.hooks = hooks
        self.clock = clock
        self.keys = load_public_keys(settings.public_keys)  # ValueError names a bad key by index
        self.units = UnitsOfWork(files, users, settings.sshd_config, clock)
        self.reporter = Reporter(hooks, clock)
        self.backups = Backups(files, store, clock, settings.backups_per_file)
        self.editor = FileEditor(files, store, self.backups, hooks)
        self.grants = Grants(self.units, self.editor, store, hooks, self.reporter, clock)
        self.recovery = Recovery(self.units, store, clock)
        self._rollback = Rollback(self.units, store, self.backups)
        if not settings.require_signature:
            log.warning(
                "INSTRUCTIONS ARE NOT REQUIRED TO BE SIGNED (instructions.require_signature = false): "
                "anyone who can answer as the control plane can change authorized_keys on this host"
            )

    # -- lifetime / scheduling ---------------------------------------------------------------

    def start(self) -> None:
        """Sweep expired grants left from before the start; bring the trust files in step."""
        self.sweep_ephemeral()
        if self.trust is not None:
            with self.units.exclusive():
                self.trust.start()

    def stop(self) -> None:
        return None

    def jobs(self) -> list[Job]:
        """The periodic sweep plus a one-off removal at each known grant's expiry."""
        out: list[Job] = [("ephemeral-sweep", self._sweep_job, self.settings.ephemeral_sweep_s, None)]
        if self.trust is not None:
            out.append(("trust-check", self._trust_check, self.trust.check_s, None))
        for grant in self.store.all_grants():
            out.append(
                (
                    expiry_job_id(grant.grant_id),
                    self.grants.expiry_job(grant.grant_id),
                    None,
                    grant.expires_at,
                )
            )
        return out

    def _sweep_job(self) -> None:
        self.sweep_ephemeral()

    def _trust_check(self) -> None:
        assert self.trust is not None
        with self.units.exclusive():
            self.trust.maintain()

    def sweep_ephemeral(self) -> int:
        """Remove every grant whose time has come, then prune old backups. Returns how many
        grants were removed."""
        removed = self.grants.sweep()
        with self.units.exclusive():
            self.backups.prune()
        return removed

    def expire_grant(self, grant_id: str) -> None:
        """The one-off job at a grant's expiry (it may have been revoked or swept already)."""
        self.grants.expire(grant_id)

    def reconcile(self) -> list[tuple[str, Result]]:
        """Applies a crash interrupted: compare each file with the journal, record and report."""
        return self.recovery.reconcile()

    def rollback(self, rotation_id: str) -> list[str]:
        """Restore the files `rotation_id` changed, all or nothing (see rollback.py)."""
        return self._rollback.rollback(rotation_id)

    # -- the entry point -----------------------------------------------------------------------

    def handle(self, token: str) -> tuple[str | None, Result]:
        """Verify, validate and apply one instruction. Never raises: every outcome is a result."""
        jti: str | None = None
        try:
            if not isinstance(token, str) or len(token) > MAX_TOKEN_BYTES:
                raise Rejected("token too large")
            jti = peek_jti(token)
            return self._handle(token)
        except Rejected as exc:
            jti = exc.jti or jti
            return jti, self.reporter.not_applied(jti, exc.status, exc.code, exc.reason, None)
        except Exception as exc:  # one bad instruction never stops the others
            log.exception("instruction %s: unexpected error", jti)
            return jti, self.reporter.not_applied(
                jti, "failed", "INTERNAL", f"internal error ({type(exc).__name__})", None
            )

    def _handle(self, token: str) -> tuple[str | None, Result]:
        with self.units.unit() as view:
            host_id = self.hooks.host_id()
            if not host_id:
                raise Rejected("this host has no host id yet", "AUTH_INVALID", peek_jti(token))
            now = self.clock()
            try:
                ins = verify_instruction(
                    token,
                    keys=self.keys,
                    host_id=host_id,
                    now=now.timestamp(),
                    leeway=self.settings.leeway_s,
                    require_signature=self.settings.require_signature,
                )
            except Rejected as exc:
                # Signed but not valid yet: the answer is final (a later re-send is a replay).
                if exc.jti is not None and exc.final_until is not None and not self.store.jti_seen(exc.jti):
                    self.store.record_jti(exc.jti, exc.status, exc.final_until)
                raise
            seen = self.store.jti_seen(ins.jti)
            if seen is not None:
                return ins.jti, self._replayed(view, ins, seen)
            policy = self.hooks.policy()
            body: Body | TrustBody
            try:
                if ins.kind in TRUST_KINDS:
                    body = validate_trust(ins, user_exists=view.user_exists, policy=policy)
                else:
                    body = validate(
                        ins,
                        user_exists=view.user_exists,
                        policy=policy,
                        now=now,
                        max_ttl_s=policy.ephemeral_max_ttl_s,
                        local_tz=view.local_tz,
                    )
                    check_root_from(body, self._uid_of(view, body), policy)
            except Rejected as exc:
                self.store.record_jti(ins.jti, exc.status, ins.exp)
                return ins.jti, self.reporter.not_applied(ins.jti, exc.status, exc.code, exc.reason, ins)
            if isinstance(body, Ephemeral) and body.expires_at <= now:
                self.store.record_jti(ins.jti, "expired", ins.exp)
                return ins.jti, self.reporter.not_applied(
                    ins.jti, "expired", "EXPIRED", "grant already expired", ins
                )
            try:
                outcome = self._act(view, ins, body, policy)
            except ApplyFailed as exc:
                self.store.complete_apply(ins.jti, jti=(ins.jti, "failed", ins.exp))
                return ins.jti, self.reporter.not_applied(ins.jti, "failed", exc.code, exc.message, ins)
            if outcome.unmet:  # written, but read back it is not what was asked: never `applied`
                self.store.complete_apply(ins.jti, jti=(ins.jti, "failed", ins.exp), backups=outcome.backups)
                message = "not in effect after the write: " + "; ".join(outcome.unmet)
                return ins.jti, self.reporter.not_applied(
                    ins.jti, "failed", "KEY_NOT_IN_EFFECT", message, ins
                )
            self.store.complete_apply(ins.jti, jti=(ins.jti, "applied", ins.exp), backups=outcome.backups)
            self.reporter.applied(ins, body, outcome)
            return ins.jti, self.reporter.result("applied", None, outcome.fingerprints_after)

    @staticmethod
    def _uid_of(view: HostView, body: Body) -> int | None:
        user = view.user(body.user) if isinstance(body, Rotation | Ephemeral) else None
        return user.uid if user is not None else None

    def _replayed(self, view: HostView, ins: Instruction, seen: str) -> Result:
        if seen not in ("applied", "expired"):
            return self.reporter.not_applied(ins.jti, "rejected", "REPLAYED", "replayed jti", ins)
        fingerprints: list[str] = []
        user_name = ins.body.get("user")
        user = view.user(user_name) if isinstance(user_name, str) and view.user_exists(user_name) else None
        if user is not None:
            fingerprints = view.fingerprints_of(user)
        return self.reporter.result(seen, None, fingerprints)

    def _act(self, view: HostView, ins: Instruction, body: Body | TrustBody, policy: Policy) -> Outcome:
        if not isinstance(body, Rotation | Ephemeral | Revoke | Scan):
            if self.trust is None:
                raise ApplyFailed("NOT_SUPPORTED", f"{ins.kind} is not enabled on this agent")
            return self.trust.apply(body)
        if isinstance(body, Scan):
            try:
                self.hooks.run_scan(body.scan_id)
            except Exception as exc:
                raise ApplyFailed("SCAN_FAILED", f"scan failed ({type(exc).__name__})") from None
            return Outcome()
        if isinstance(body, Revoke):
            return self.grants.revoke(view, ins, body)
        if isinstance(body, Ephemeral):
            return self.grants.grant(view, ins, body)
        return rotate(self.editor, view, ins, body, policy)
