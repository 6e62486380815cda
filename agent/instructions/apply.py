"""Apply verified instructions to the host (the imperative shell around verify/validate/plan).

Order for every instruction (agent-api.md section 6): size check, signature and claims
(`verify`), replay check (jti registry), body validation (`validate`); only then is any file
of a user's opened. A rejection therefore never opens, creates or writes anything.

Writing goes through `HostFS` only: the directory is walked with descriptors (no symlink
followed below the home, owners and modes checked like StrictModes), the file is read through
the held directory (hard links, FIFOs, directories and symlinks refused), the new bytes are
planned by the pure `plan` module and written with `atomic_replace` (temp file O_EXCL|O_NOFOLLOW
owned by the file's owner, fsync, rename, fsync of the directory) guarded by the stat of the
read it is based on. Per instruction: the new contents are planned for every file first, then
the journal entry is written (`begin_apply`), then backups and files, then the jti is recorded
and the journal entry removed. `reconcile()` finishes whatever a crash interrupted.

Replays: a jti recorded as `applied` (or `expired`) is answered again with that status and the
current fingerprints, without touching a file — the server re-sends an instruction whose result
it never received, and answering "rejected" would misreport a change that is in place. Any
other recorded status is answered `rejected` ("replayed jti"). A jti is recorded only once its
signature verified, so a forger cannot burn a legitimate jti.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import posixpath
import secrets
import stat
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.host.safefs import CreateSpec, DirHandle, FileInfo, HostFS, ReadResult, UnsafePath
from agent.host.scan import authorized_keys_confine, authorized_keys_paths, load_sshd_config
from agent.host.users import User, UserSource
from agent.instructions.plan import EditPlan, NewLineBuilder, PlanError, plan_add, plan_remove, plan_replace
from agent.instructions.validate import EPHEMERAL_TAG, Ephemeral, NewKey, Revoke, Rotation, Scan, validate
from agent.instructions.verify import (
    MAX_TOKEN_BYTES,
    Instruction,
    Rejected,
    load_public_keys,
    peek_jti,
    verify_instruction,
)
from agent.inventory.evaluate import Policy
from agent.inventory.model import parse_rfc3339
from agent.ssh.authorized_keys import parse_authorized_keys
from agent.ssh.certificate import rfc3339
from agent.ssh.sshd_config import MatchContext, resolve
from agent.store.state import Grant, StateStore

log = logging.getLogger("sshklm.apply")

JSON = dict[str, Any]
Result = JSON
NoteManaged = Callable[[str, str | None, str, str, datetime | None], None]
ScheduleOnce = Callable[[str, Callable[[], None], datetime], None]
# (job id, function, interval in seconds or None for a one-off, first run or None for "now + interval")
Job = tuple[str, Callable[[], None], float | None, datetime | None]

BACKUPS_SUBDIR = "backups"  # under the state directory
NEW_FILE_MODE = 0o600
SSH_DIR_MODE = 0o700
SWEEP_INTERVAL_S = 60.0
_ATTEMPTS = 3  # re-plan when a file changed between our read and our write


class ApplyFailed(Exception):
    """The instruction was valid but could not be carried out. Message: paths and reasons only."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Retry(Exception):
    """A file changed between read and write before anything was written: plan again."""


class RollbackRefused(Exception):
    pass


def backups_dir_for(state_dir: str) -> str:
    """Where the daemon and `sshklm-agent rollback` keep (and find) backups."""
    return os.path.join(state_dir, BACKUPS_SUBDIR)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ephemeral_tag(grant_id: str) -> str:
    return f"{EPHEMERAL_TAG}:{grant_id}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UnsafePath):
        return str(exc)  # "path: reason"
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if isinstance(exc.filename, str) else ""
        return where + (exc.strerror or type(exc).__name__)
    return type(exc).__name__


def keep_or_default_ownership(current: FileInfo | None, user: User) -> tuple[int, int, int]:
    """Keep the file's owner and mode when sshd's StrictModes accepts them (owner root or the
    user, no group/other write); otherwise (and for a new file) the user, its group, 0600.
    Set-id and sticky bits are never carried over."""
    if (
        current is not None
        and current.uid in (0, user.uid)
        and not current.mode & (stat.S_IWGRP | stat.S_IWOTH)
    ):
        return current.uid, current.gid, stat.S_IMODE(current.mode) & 0o755
    return user.uid, user.gid, NEW_FILE_MODE


@dataclass
class _FilePlan:
    """One authorized keys file: where it is, what it holds, what it will hold."""

    path: str
    name: str
    dirh: DirHandle
    current: ReadResult | None
    plan: EditPlan

    @property
    def before(self) -> bytes | None:
        return None if self.current is None else self.current.data


@dataclass
class _Outcome:
    written: list[str] = field(default_factory=list)
    fingerprints_after: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    # (rotation_id, path, backup_file, sha256_after) of files written: indexed on completion.
    backups: list[tuple[str, str, str, str]] = field(default_factory=list)


class Applier:
    """Applies instructions. Thread-safe: one lock serialises every change to users' files."""

    def __init__(
        self,
        fs: HostFS,
        users: UserSource,
        store: StateStore,
        *,
        sshd_config_path: str,
        public_keys: Sequence[Ed25519PublicKey | str],
        require_signature: bool,
        leeway_s: float,
        host_id: Callable[[], str | None],
        policy: Callable[[], Policy | None],
        max_ttl_s: Callable[[], int],
        backups_dir: str,
        backups_per_file: int,
        clock: Callable[[], datetime],
        on_event: Callable[[list[JSON]], None],
        run_scan: Callable[[str], None] | None,
        note_managed: NoteManaged | None = None,
        schedule_once: ScheduleOnce | None = None,
    ) -> None:
        self.fs = fs
        self.users = users
        self.store = store
        self.sshd_config_path = sshd_config_path
        texts = [k for k in public_keys if isinstance(k, str)]
        self.keys = [k for k in public_keys if isinstance(k, Ed25519PublicKey)] + load_public_keys(texts)
        self.require_signature = require_signature
        self.leeway_s = leeway_s
        self.host_id = host_id
        self.policy = policy
        self.max_ttl_s = max_ttl_s
        self.backups_dir = backups_dir
        self.backups_per_file = backups_per_file
        self.clock = clock
        self.on_event = on_event
        self.run_scan = run_scan
        self.note_managed = note_managed
        self.schedule_once = schedule_once
        self._lock = threading.RLock()
        # Per unit of work (one instruction, one grant expiry): the user database and
        # sshd_config are read once, not once per question asked of them.
        self._users_memo: dict[str, User | None] = {}
        self._config_memo: dict[str, Any] = {}
        if not require_signature:
            log.warning(
                "INSTRUCTIONS ARE NOT REQUIRED TO BE SIGNED (instructions.require_signature = false): "
                "anyone who can answer as the control plane can change authorized_keys on this host"
            )

    # -- lifetime / scheduling ---------------------------------------------------------------

    def start(self) -> None:
        """Sweep expired grants left from before the start."""
        self.sweep_ephemeral()

    def stop(self) -> None:
        return None

    def jobs(self) -> list[Job]:
        """The periodic sweep plus a one-off removal at each known grant's expiry."""
        out: list[Job] = [("ephemeral-sweep", self._sweep_job, SWEEP_INTERVAL_S, None)]
        for grant in self.store.all_grants():
            out.append(
                (
                    f"ephemeral-expire:{grant.grant_id}",
                    self._expire_callback(grant.grant_id),
                    None,
                    grant.expires_at,
                )
            )
        return out

    def _sweep_job(self) -> None:
        self.sweep_ephemeral()

    def _expire_callback(self, grant_id: str) -> Callable[[], None]:
        def expire() -> None:
            self.expire_grant(grant_id)

        return expire

    # -- the entry point -----------------------------------------------------------------------

    def handle(self, token: str) -> tuple[str | None, Result]:
        """Verify, validate and apply one instruction. Never raises: every outcome is a result."""
        jti: str | None = None
        try:
            if not isinstance(token, str) or len(token) > MAX_TOKEN_BYTES:
                raise Rejected("token too large")
            jti = peek_jti(token)
            with self._lock:
                self._fresh_lookups()
                return self._handle(token)
        except Rejected as exc:
            jti = exc.jti or jti
            return jti, self._not_applied(jti, exc.status, exc.code, exc.reason, None)
        except Exception as exc:  # one bad instruction never stops the others
            log.exception("instruction %s: unexpected error", jti)
            return jti, self._not_applied(
                jti, "failed", "INTERNAL", f"internal error ({type(exc).__name__})", None
            )

    def _handle(self, token: str) -> tuple[str | None, Result]:
        host_id = self.host_id()
        if not host_id:
            raise Rejected("this host has no host id yet", "AUTH_INVALID", peek_jti(token))
        now = self.clock()
        ins = verify_instruction(
            token,
            keys=self.keys,
            host_id=host_id,
            now=now.timestamp(),
            leeway=self.leeway_s,
            require_signature=self.require_signature,
        )
        seen = self.store.jti_seen(ins.jti)
        if seen is not None:
            return ins.jti, self._replayed(ins, seen)
        try:
            body = validate(
                ins, user_exists=self._user_exists, policy=self.policy(), now=now, max_ttl_s=self.max_ttl_s()
            )
            self._check_root_policy(body)
        except Rejected as exc:
            self.store.record_jti(ins.jti, exc.status, ins.exp)
            return ins.jti, self._not_applied(ins.jti, exc.status, exc.code, exc.reason, ins)
        if isinstance(body, Ephemeral) and body.expires_at <= now:
            self.store.record_jti(ins.jti, "expired", ins.exp)
            return ins.jti, self._not_applied(ins.jti, "expired", "EXPIRED", "grant already expired", ins)
        try:
            outcome = self._act(ins, body)
        except ApplyFailed as exc:
            self.store.complete_apply(ins.jti, jti=(ins.jti, "failed", ins.exp))
            return ins.jti, self._not_applied(ins.jti, "failed", exc.code, exc.message, ins)
        self.store.complete_apply(ins.jti, jti=(ins.jti, "applied", ins.exp), backups=outcome.backups)
        self._emit_applied(ins, body, outcome)
        return ins.jti, self._result("applied", None, outcome.fingerprints_after)

    # -- results and events ----------------------------------------------------------------------

    def _result(self, status: str, error: JSON | None, fingerprints: Sequence[str]) -> Result:
        return {
            "status": status,
            "at": rfc3339(self.clock()),
            "error": error,
            "fingerprints_after": list(dict.fromkeys(fingerprints)),
        }

    def _not_applied(
        self, jti: str | None, status: str, code: str, message: str, ins: Instruction | None
    ) -> Result:
        log.warning("instruction %s %s: %s", jti or "(no jti)", status, message)
        detail: JSON = {"jti": jti, "status": status, "code": code, "message": message}
        user = None
        if ins is not None:
            detail["kind"] = ins.kind
            maybe_user = ins.body.get("user")
            user = maybe_user if isinstance(maybe_user, str) and len(maybe_user) <= 64 else None
        self._emit([self._event("instruction_failed", user, None, None, detail)])
        return self._result(status, {"code": code, "message": message}, [])

    def _event(
        self, kind: str, user: str | None, path: str | None, fingerprint: str | None, detail: JSON
    ) -> JSON:
        return {
            "id": str(uuid.uuid4()),
            "at": rfc3339(self.clock()),
            "type": kind,
            "user": user,
            "path": path,
            "fingerprint": fingerprint,
            "key": None,
            "detail": detail,
        }

    def _emit(self, events: list[JSON]) -> None:
        try:
            self.on_event(events)
        except Exception:  # reporting must never undo or stop an apply
            log.exception("could not queue instruction events")

    def _emit_applied(self, ins: Instruction, body: object, outcome: _Outcome) -> None:
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
        path = outcome.written[0] if len(outcome.written) == 1 else None
        self._emit([self._event("instruction_applied", user, path, fingerprint, detail)])

    def _replayed(self, ins: Instruction, seen: str) -> Result:
        if seen not in ("applied", "expired"):
            return self._not_applied(ins.jti, "rejected", "REPLAYED", "replayed jti", ins)
        fingerprints: list[str] = []
        user_name = ins.body.get("user")
        user = self._user(user_name) if isinstance(user_name, str) and self._user_exists(user_name) else None
        if user is not None:
            fingerprints = self._fingerprints_of(user)
        return self._result(seen, None, fingerprints)

    # -- validation helpers ------------------------------------------------------------------------

    def _fresh_lookups(self) -> None:
        self._users_memo = {}
        self._config_memo = {}

    def _user(self, name: str) -> User | None:
        if name not in self._users_memo:
            self._users_memo[name] = self.users.get(name)
        return self._users_memo[name]

    def _user_exists(self, name: str) -> bool:
        try:
            return self._user(name) is not None
        except (OSError, UnsafePath):
            return False

    def _check_root_policy(self, body: object) -> None:
        """require_from_for_root: a key installed for uid 0 must carry from= (given or kept)."""
        policy = self.policy()
        if policy is None or not policy.require_from_for_root:
            return
        installs_new_line = isinstance(body, Rotation) and (body.action == "add" or body.options_given)
        new: NewKey | None = None
        if isinstance(body, Ephemeral | Rotation) and (isinstance(body, Ephemeral) or installs_new_line):
            new = body.new
        if new is None:
            return
        user = self._user(body.user) if isinstance(body, Rotation | Ephemeral) else None
        if user is not None and user.uid == 0 and (new.options is None or new.options.from_ is None):
            raise Rejected("policy require_from_for_root: a key for root needs from=")

    def _check_root_policy_kept(self, user: User, plan: EditPlan, fingerprint: str) -> None:
        """require_from_for_root for a replacement that keeps the old line's options: only the
        planned file shows whether those carry from= (checked before anything is written)."""
        policy = self.policy()
        if policy is None or not policy.require_from_for_root or user.uid != 0 or plan.new_data is None:
            return
        for ln in parse_authorized_keys(plan.new_data):
            is_new = ln.kind == "key" and ln.key is not None and ln.key.fingerprint == fingerprint
            if is_new and (ln.options is None or ln.options.from_ is None):
                raise Rejected("policy require_from_for_root: the old line's kept options have no from=")

    def _require_user(self, name: str) -> User:
        user = self._user(name)
        if user is None:
            raise ApplyFailed("NOT_FOUND", "no such user")
        return user

    def _paths(self, user: User, *, conditional: bool = True) -> list[str]:
        parsed = self._config_memo.get("parsed")
        if parsed is None:
            parsed, _ = load_sshd_config(self.fs, self.sshd_config_path)
            self._config_memo["parsed"] = parsed
        eff = resolve(parsed, MatchContext(user.name, user.groups))
        return authorized_keys_paths(user, eff, conditional=conditional)

    def _fingerprints_of(self, user: User) -> list[str]:
        """Every key fingerprint in the user's authorized keys files (read-only, best effort)."""
        out: list[str] = []
        try:
            paths = self._paths(user)
        except (OSError, UnsafePath):
            return out
        for path in paths:
            try:
                data = self.fs.read(path, confine=authorized_keys_confine(path, user.home)).data
            except (OSError, UnsafePath):
                continue
            out += [ln.key.fingerprint for ln in parse_authorized_keys(data) if ln.kind == "key" and ln.key]
        return list(dict.fromkeys(out))

    # -- acting -----------------------------------------------------------------------------------

    def _act(self, ins: Instruction, body: object) -> _Outcome:
        if isinstance(body, Scan):
            if self.run_scan is None:
                raise ApplyFailed("UNSUPPORTED", "scan is not available in this agent")
            try:
                self.run_scan(body.scan_id)
            except Exception as exc:
                raise ApplyFailed("SCAN_FAILED", f"scan failed ({type(exc).__name__})") from None
            return _Outcome()
        if isinstance(body, Revoke):
            return self._revoke(ins, body)
        if isinstance(body, Ephemeral):
            return self._ephemeral(ins, body)
        assert isinstance(body, Rotation)
        return self._rotation(ins, body)

    def _rotation(self, ins: Instruction, body: Rotation) -> _Outcome:
        user = self._require_user(body.user)
        managed_by = f"rotation:{body.rotation_id}"
        if body.action == "add":
            assert body.new is not None
            new = body.new
            target = self._first_path(user)
            outcome = self._edit(
                ins,
                user,
                [target],
                lambda _path, data: plan_add(data, new.line(), new.key.fingerprint),
                backup_id=body.rotation_id,
                create=True,
                managed=(new.key.fingerprint, managed_by, None),
            )
            outcome.added = [new.key.fingerprint] if outcome.written else []
            return outcome
        old = body.old_fingerprint
        assert old is not None
        paths = self._paths(user)
        if body.action == "remove":
            outcome = self._edit(
                ins,
                user,
                paths,
                lambda _path, data: plan_remove(data, old),
                backup_id=body.rotation_id,
                create=False,
                managed=None,
            )
            outcome.removed = [old] if outcome.written else []
            return outcome
        assert body.new is not None
        new = body.new
        builder = NewLineBuilder(new.text, new.options_text, keep_old_options=not body.options_given)
        present = self._present(user, paths, old, new.key.fingerprint)
        if not present["old"] and not present["new"]:
            raise ApplyFailed("KEY_NOT_FOUND", "old key not found in the user's authorized keys files")

        def edit(_path: str, data: bytes) -> EditPlan:
            try:
                plan = plan_replace(data, old, builder, new.key.fingerprint)
            except PlanError:  # the old key is not in this file: leave it alone
                return EditPlan(None, ())
            if not body.options_given:
                self._check_root_policy_kept(user, plan, new.key.fingerprint)
            return plan

        outcome = self._edit(
            ins,
            user,
            paths,
            edit,
            backup_id=body.rotation_id,
            create=False,
            managed=(new.key.fingerprint, managed_by, None),
        )
        if outcome.written:
            outcome.added, outcome.removed = [new.key.fingerprint], [old]
        return outcome

    def _present(self, user: User, paths: list[str], old: str, new: str) -> dict[str, bool]:
        found = {"old": False, "new": False}
        for path in paths:
            try:
                data = self.fs.read(path, confine=authorized_keys_confine(path, user.home)).data
            except (OSError, UnsafePath):
                continue
            for ln in parse_authorized_keys(data):
                if ln.kind == "key" and ln.key is not None:
                    found["old"] |= ln.key.fingerprint == old
                    found["new"] |= ln.key.fingerprint == new
        return found

    def _first_path(self, user: User) -> str:
        paths = self._paths(user, conditional=False) or self._paths(user)
        if not paths:
            raise ApplyFailed("NO_AUTHORIZED_KEYS_FILE", "sshd reads no authorized keys file for this user")
        return paths[0]

    def _ephemeral(self, ins: Instruction, body: Ephemeral) -> _Outcome:
        user = self._require_user(body.user)
        target = self._first_path(user)
        tag = ephemeral_tag(body.grant_id)
        new = body.new
        outcome = self._edit(
            ins,
            user,
            [target],
            lambda _path, data: plan_add(data, new.line(), new.key.fingerprint, tag=tag),
            backup_id=body.grant_id,
            create=True,
            managed=(new.key.fingerprint, f"ephemeral:{body.grant_id}", body.expires_at),
            extra={
                "grant_id": body.grant_id,
                "expires_at": rfc3339(body.expires_at),
                "fingerprint": new.key.fingerprint,
            },
        )
        self.store.add_grant(body.grant_id, user.name, target, new.key.fingerprint, body.expires_at, ins.jti)
        if self.schedule_once is not None:
            try:
                self.schedule_once(
                    f"ephemeral-expire:{body.grant_id}", self._expire_callback(body.grant_id), body.expires_at
                )
            except Exception:
                log.exception(
                    "could not schedule the removal of grant %s (the sweep will do it)", body.grant_id
                )
        outcome.added = [new.key.fingerprint] if outcome.written else []
        return outcome

    def _revoke(self, ins: Instruction | None, body: Revoke) -> _Outcome:
        grant = next((g for g in self.store.all_grants() if g.grant_id == body.grant_id), None)
        if grant is None:
            return _Outcome()  # unknown or already removed: nothing to do (idempotent)
        return self._remove_grant(ins, grant)

    def _remove_grant(self, ins: Instruction | None, grant: Grant) -> _Outcome:
        user = self._user(grant.user)
        if user is None:  # the account is gone, and with it sshd's use of the line
            self.store.remove_grant(grant.grant_id)
            return _Outcome()
        tag = ephemeral_tag(grant.grant_id)
        outcome = self._edit(
            ins,
            user,
            [grant.path],
            lambda _path, data: plan_remove(data, grant.fingerprint, tag=tag),
            backup_id=grant.grant_id,
            create=False,
            managed=None,
        )
        self.store.remove_grant(grant.grant_id)
        outcome.removed = [grant.fingerprint] if outcome.written else []
        return outcome

    # -- the write path ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _open_plans(
        self, user: User, paths: Sequence[str], edit: Callable[[str, bytes], EditPlan], *, create: bool
    ) -> Iterator[list[_FilePlan]]:
        """Open each file's directory safely, read it, plan it. Handles stay open for the write."""
        plans: list[_FilePlan] = []
        try:
            for path in dict.fromkeys(paths):
                confine = authorized_keys_confine(path, user.home)
                directory, name = posixpath.split(path)
                spec = (
                    CreateSpec(user.uid, user.gid, SSH_DIR_MODE) if create and directory != confine else None
                )
                try:
                    dirh = self.fs.open_dir(directory, create=spec, confine=confine, user_uid=user.uid)
                except (FileNotFoundError, NotADirectoryError):
                    if create:
                        raise
                    continue  # no such directory: nothing of this user's there
                try:
                    current = self.fs.read_at(dirh, name)
                    if current is not None and current.truncated:
                        raise UnsafePath("file too large to rewrite safely", path)
                    data = current.data if current is not None else b""
                    plan = edit(path, data)
                    if plan.new_data is not None and current is None and not create:
                        plan = EditPlan(None, plan.fingerprints_after)
                except BaseException:
                    dirh.close()
                    raise
                plans.append(_FilePlan(path, name, dirh, current, plan))
            yield plans
        finally:
            for fp in plans:
                fp.dirh.close()

    def _edit(
        self,
        ins: Instruction | None,
        user: User,
        paths: Sequence[str],
        edit: Callable[[str, bytes], EditPlan],
        *,
        backup_id: str,
        create: bool,
        managed: tuple[str, str, datetime | None] | None,
        extra: JSON | None = None,
    ) -> _Outcome:
        for attempt in range(_ATTEMPTS):
            try:
                return self._edit_once(
                    ins,
                    user,
                    paths,
                    edit,
                    backup_id=backup_id,
                    create=create,
                    managed=managed,
                    extra=extra or {},
                )
            except _Retry:
                if attempt == _ATTEMPTS - 1:
                    raise ApplyFailed("CONFLICT", "the file kept changing while being updated") from None
            except (UnsafePath, OSError) as exc:
                raise ApplyFailed(
                    "UNSAFE_PATH" if isinstance(exc, UnsafePath) else "IO_ERROR", _reason(exc)
                ) from None
        raise AssertionError("unreachable")

    def _edit_once(
        self,
        ins: Instruction | None,
        user: User,
        paths: Sequence[str],
        edit: Callable[[str, bytes], EditPlan],
        *,
        backup_id: str,
        create: bool,
        managed: tuple[str, str, datetime | None] | None,
        extra: JSON,
    ) -> _Outcome:
        outcome = _Outcome()
        with self._open_plans(user, paths, edit, create=create) as plans:
            changes = [p for p in plans if p.plan.new_data is not None]
            if not changes:
                outcome.fingerprints_after = self._fingerprints_of(user)
                return outcome
            backups = {p.path: self._write_backup(p, user) for p in changes}
            journal_id = ins.jti if ins is not None else f"sweep:{backup_id}"
            self.store.begin_apply(
                journal_id,
                {
                    "kind": ins.kind if ins is not None else "ephemeral_expiry",
                    "exp": ins.exp if ins is not None else None,
                    "user": user.name,
                    "backup_id": backup_id,
                    **extra,
                    "files": [
                        {
                            "path": p.path,
                            "backup": backups[p.path],
                            "sha_before": None if p.before is None else sha256_hex(p.before),
                            "sha_after": sha256_hex(p.plan.new_data or b""),
                        }
                        for p in changes
                    ],
                },
            )
            try:
                for p in changes:
                    assert p.plan.new_data is not None
                    uid, gid, mode = keep_or_default_ownership(p.current.info if p.current else None, user)
                    if managed is not None and self.note_managed is not None:
                        fingerprint, managed_by, expires_at = managed
                        self.note_managed(fingerprint, user.name, p.path, managed_by, expires_at)
                    try:
                        self.fs.atomic_replace(
                            p.dirh,
                            p.name,
                            p.plan.new_data,
                            uid=uid,
                            gid=gid,
                            mode=mode,
                            expect=p.current.info if p.current else None,
                        )
                    except UnsafePath as exc:
                        if exc.reason == "changed since read" and not outcome.written:
                            raise _Retry() from None
                        raise
                    if p.current is None and self.fs.read_at(p.dirh, p.name) is None:
                        raise UnsafePath("file vanished after the write", p.path)
                    outcome.written.append(p.path)
                    # Indexed when the apply completes (one transaction); reconcile re-indexes after a crash.
                    outcome.backups.append((backup_id, p.path, backups[p.path], sha256_hex(p.plan.new_data)))
            except BaseException:
                if not outcome.written:
                    self.store.finish_apply(journal_id)  # nothing changed: nothing to reconcile
                    for name in backups.values():
                        self._delete_backup(name)
                raise
            if ins is None:
                self.store.complete_apply(journal_id, backups=outcome.backups)
        outcome.fingerprints_after = self._fingerprints_of(user)
        return outcome

    # -- backups ---------------------------------------------------------------------------------------

    def _backups_fd(self) -> int:
        os.makedirs(self.backups_dir, mode=0o700, exist_ok=True)
        fd = os.open(self.backups_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            os.close(fd)
            raise UnsafePath("backups directory is not private to the agent", self.backups_dir)
        return fd

    def _write_backup(self, plan: _FilePlan, user: User) -> str:
        """Save the file as it is now: root-owned, 0600, in the agent's private backups directory.

        Format: one JSON line of metadata (path, owner account, whether the file existed), then
        the file's bytes exactly. One file, one fsync."""
        stamp = int(self.clock().timestamp())
        name = f"{stamp}-{sha256_hex(plan.path.encode())[:12]}-{secrets.token_hex(4)}.bak"
        meta = {"path": plan.path, "user": user.name, "existed": plan.current is not None}
        data = json.dumps(meta, separators=(",", ":")).encode() + b"\n" + (plan.before or b"")
        fd = self._backups_fd()
        try:
            out = os.open(
                name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=fd
            )
            try:
                _write_all(out, data)
                os.fsync(out)
            finally:
                os.close(out)
            os.fsync(fd)
        finally:
            os.close(fd)
        return name

    def _delete_backup(self, name: str) -> None:
        with contextlib.suppress(OSError):
            fd = self._backups_fd()
            try:
                os.unlink(name, dir_fd=fd)
            finally:
                os.close(fd)

    def prune_backups(self) -> None:
        """Keep the newest `backups_per_file` backups per file. Run by the minute sweep, not on
        the write path: the query spans the whole index (tens of ms with 10,000 backups)."""
        for dropped in self.store.prune_backups(self.backups_per_file):
            self._delete_backup(dropped.backup_file)

    def read_backup(self, name: str) -> tuple[bytes, JSON]:
        """(file bytes, metadata) of a backup named in the index."""
        if "/" in name or name.startswith("."):
            raise RollbackRefused("malformed backup name in the index")
        fd = self._backups_fd()
        try:
            f = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            with os.fdopen(f, "rb") as fh:
                raw = fh.read()
        finally:
            os.close(fd)
        head, sep, data = raw.partition(b"\n")
        try:
            meta = json.loads(head)
        except ValueError:
            meta = None
        if not sep or not isinstance(meta, dict):
            raise RollbackRefused(f"backup {name} is unreadable")
        return data, meta

    # -- ephemeral expiry ----------------------------------------------------------------------------

    def sweep_ephemeral(self) -> int:
        """Remove every grant whose time has come. Returns how many were removed."""
        removed = 0
        for grant in self.store.due_grants(self.clock()):
            removed += self._expire(grant)
        with self._lock:
            self.prune_backups()
        return removed

    def expire_grant(self, grant_id: str) -> None:
        """The one-off job at a grant's expiry (it may have been revoked or swept already)."""
        grant = next((g for g in self.store.all_grants() if g.grant_id == grant_id), None)
        if grant is not None and grant.expires_at <= self.clock() + timedelta(seconds=1):
            self._expire(grant)

    def _expire(self, grant: Grant) -> int:
        with self._lock:
            self._fresh_lookups()
            try:
                outcome = self._remove_grant(None, grant)
            except ApplyFailed as exc:
                # Kept for the next sweep; sshd ignores the line anyway (expiry-time).
                log.warning("ephemeral grant %s: removal failed: %s", grant.grant_id, exc.message)
                self._emit(
                    [
                        self._event(
                            "instruction_failed",
                            grant.user,
                            grant.path,
                            grant.fingerprint,
                            {
                                "action": "ephemeral_expiry",
                                "grant_id": grant.grant_id,
                                "jti": grant.jti,
                                "code": exc.code,
                                "message": exc.message,
                            },
                        )
                    ]
                )
                return 0
            self._emit(
                [
                    self._event(
                        "instruction_applied",
                        grant.user,
                        grant.path,
                        grant.fingerprint,
                        {
                            "action": "ephemeral_expiry",
                            "grant_id": grant.grant_id,
                            "jti": grant.jti,
                            "managed_by": f"ephemeral:{grant.grant_id}",
                            "removed": outcome.removed,
                            "changed_files": outcome.written,
                        },
                    )
                ]
            )
            return 1

    # -- crash recovery ------------------------------------------------------------------------------

    def reconcile(self) -> list[tuple[str, Result]]:
        """Applies a crash interrupted: compare each file with the journal, record and report."""
        out: list[tuple[str, Result]] = []
        with self._lock:
            for pending in self.store.unfinished_applies():
                self._fresh_lookups()
                try:
                    result = self._reconcile_one(pending.jti, pending.record)
                except Exception as exc:
                    log.exception("reconcile %s failed", pending.jti)
                    result = self._result("failed", {"code": "INTERNAL", "message": type(exc).__name__}, [])
                self.store.finish_apply(pending.jti)
                if pending.jti.startswith("sweep:"):
                    continue  # a sweep: the grant is still stored, the next sweep finishes it
                exp = pending.record.get("exp")
                self.store.record_jti(
                    pending.jti,
                    str(result["status"]),
                    float(exp) if exp else self.clock().timestamp() + 86400,
                )
                out.append((pending.jti, result))
        return out

    def _reconcile_one(self, jti: str, record: JSON) -> Result:
        user = self._user(str(record.get("user")))
        files = record.get("files") or []
        if user is None:
            return self._result(
                "failed", {"code": "NOT_FOUND", "message": "user gone after an interrupted apply"}, []
            )
        states: list[str] = []
        for entry in files:
            path = str(entry["path"])
            try:
                data = self.fs.read(path, confine=authorized_keys_confine(path, user.home)).data
                digest: str | None = sha256_hex(data)
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
        fingerprints = self._fingerprints_of(user)
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

    # -- rollback --------------------------------------------------------------------------------------

    def rollback(self, rotation_id: str) -> list[str]:
        """Restore the files `rotation_id` changed, all or nothing: each must still hold exactly
        what the rotation wrote (sha256), else RollbackRefused names the file that changed."""
        with self._lock:
            self._fresh_lookups()
            backups = self.store.backups_for(rotation_id)
            if not backups:
                raise RollbackRefused(f"no backups recorded for {rotation_id}")
            first: dict[str, Any] = {}
            for b in backups:
                first.setdefault(b.path, b)  # the oldest: the file before the rotation
            work = []
            for path, backup in first.items():
                data, meta = self.read_backup(backup.backup_file)
                user = self._user(str(meta.get("user")))
                if user is None or meta.get("path") != path:
                    raise RollbackRefused(f"{path}: owner account or backup metadata does not match")
                work.append((path, backup, data, bool(meta.get("existed")), user))
            with contextlib.ExitStack() as stack:
                staged = []
                for path, backup, data, existed, user in work:
                    directory, name = posixpath.split(path)
                    dirh = stack.enter_context(
                        self.fs.open_dir(
                            directory, confine=authorized_keys_confine(path, user.home), user_uid=user.uid
                        )
                    )
                    current = self.fs.read_at(dirh, name)
                    digest = sha256_hex(current.data) if current is not None else None
                    if digest != backup.sha256_after:
                        raise RollbackRefused(f"{path}: changed since rotation {rotation_id}; not restored")
                    staged.append((path, name, dirh, current, data, existed, user))
                restored = []
                for path, name, dirh, current, data, existed, user in staged:
                    if existed or current is None:
                        uid, gid, mode = keep_or_default_ownership(current.info if current else None, user)
                        self.fs.atomic_replace(
                            dirh,
                            name,
                            data,
                            uid=uid,
                            gid=gid,
                            mode=mode,
                            expect=current.info if current else None,
                        )
                    else:
                        os.unlink(name, dir_fd=dirh.fd)  # the rotation created it: remove it again
                        os.fsync(dirh.fd)
                    restored.append(path)
            return restored


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
