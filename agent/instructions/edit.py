"""The file-edit transaction: one change to one user's authorized keys files, all or nothing.

For an edit (the files to touch and a pure planner from old bytes to new bytes):

1. each file's directory is opened through `HostFiles` (held for the whole edit) and the file
   read; then all files are planned together (`plan.py`: whether one must change can depend on
   the others). Every file is planned before any is written, so one unsafe file fails the edit
   with nothing changed. A file that already says what the edit wants is not rewritten
   (idempotency: same inode).
2. a backup of every file to change is saved, then the journal entry is written (`begin_apply`:
   user, files, sha256 before and after, backup names) — what `recovery.py` reads after a crash;
3. each file is replaced atomically, guarded by the stat of the read its plan is based on. A file
   changed between our read and our write, before anything was written, means: plan again
   (up to 3 times), else `CONFLICT`. On a failure before the first write the journal entry and
   the backups are dropped: nothing changed, nothing to reconcile.
4. completion (jti recorded, backups indexed, journal entry removed: one store transaction) is
   the caller's for an instruction (it records the jti with it), the edit's own for a grant expiry.
"""

from __future__ import annotations

import contextlib
import posixpath
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agent.host.safefs import CHANGED_SINCE_READ, CreateSpec, FileInfo, ReadResult, UnsafePath
from agent.host.sshd_files import normalize_path
from agent.host.users import User
from agent.instructions.backups import Backups, sha256_hex
from agent.instructions.errors import ApplyFailed
from agent.instructions.plan import EditPlan
from agent.instructions.ports import DaemonHooks, HostFiles, KeysDir
from agent.instructions.verify import Instruction
from agent.instructions.view import HostView
from agent.store.state import StateStore

JSON = dict[str, Any]
# [(path, current bytes)] of every file of the edit, in order -> one plan per file, in that order.
# All files at once: whether a file must change can depend on the others (docs/rotation.md).
Planner = Callable[[Sequence[tuple[str, bytes]]], Sequence[EditPlan]]
# (fingerprint, managed_by, expires_at) of the line an edit writes, for note_managed.
Managed = tuple[str, str, datetime | None]

NEW_FILE_MODE = 0o600
# A file that is root's (a central AuthorizedKeysFile, or any file outside the user's own
# directories): readable by everybody, because sshd opens authorized keys files with the user's
# privileges (temporarily_use_uid in auth2-pubkey.c): a root-owned 0600 file is never read.
ROOT_FILE_MODE = 0o644
SSH_DIR_MODE = 0o700
ATTEMPTS = 3  # re-plan when a file changed between our read and our write


def keep_or_default_ownership(
    current: FileInfo | None, user: User, *, user_may_own: bool = True
) -> tuple[int, int, int]:
    """Keep the file's owner and mode when sshd's StrictModes accepts them (owner root or the
    user, no group/other write); otherwise (and for a new file) the directory's convention:
    the user, its group, 0600 where the user may own the file (``KeysDir.user_may_own``: a
    directory of the user's inside the user's home), else root, 0644. Set-id and sticky bits
    are never carried over."""
    if (
        current is not None
        and current.uid in (0, user.uid)
        and not current.mode & (stat.S_IWGRP | stat.S_IWOTH)
    ):
        return current.uid, current.gid, stat.S_IMODE(current.mode) & 0o755
    if user_may_own:
        return user.uid, user.gid, NEW_FILE_MODE
    return 0, 0, ROOT_FILE_MODE


def refuse_shared_home(view: HostView, user: User, real_home: str, path: str) -> None:
    """A file inside a home that another account (another uid) has too, by its passwd entry or
    because this user's home resolves to it, would give that account's login to the key: refused."""
    others = view.accounts_with_home({normalize_path(user.home), real_home}, except_uid=user.uid)
    if others:
        raise UnsafePath(f"home {real_home} is also the home of {', '.join(sorted(others))}", path)


def io_reason(exc: BaseException) -> str:
    """A failure's reason for a result: "path: reason", never content."""
    if isinstance(exc, UnsafePath):
        return str(exc)
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if isinstance(exc.filename, str) else ""
        return where + (exc.strerror or type(exc).__name__)
    return type(exc).__name__


@dataclass(frozen=True)
class JournalKey:
    """Whose journal entry an edit writes: an instruction's (completed by the caller with its
    jti) or a grant expiry's (`sweep:<grant id>`, completed by the edit itself)."""

    id: str
    kind: str
    exp: int | None
    completes_itself: bool

    @classmethod
    def of(cls, ins: Instruction | None, backup_id: str) -> JournalKey:
        if ins is None:
            return cls(f"sweep:{backup_id}", "ephemeral_expiry", None, True)
        return cls(ins.jti, ins.kind, ins.exp, False)


@dataclass(frozen=True)
class EditRequest:
    journal: JournalKey
    user: User
    paths: Sequence[str]
    planner: Planner
    backup_id: str  # the rotation or grant id the backups are indexed under
    create: bool  # may create the first path's directory (~/.ssh) and file (add, ephemeral grant)
    managed: Managed | None
    extra: JSON = field(default_factory=dict)  # more journal fields (an ephemeral grant's)


@dataclass
class FilePlan:
    """One authorized keys file: where it is, what it holds, what it will hold."""

    path: str
    name: str
    directory: KeysDir
    current: ReadResult | None
    plan: EditPlan

    @property
    def before(self) -> bytes | None:
        return None if self.current is None else self.current.data


@dataclass
class Outcome:
    written: list[str] = field(default_factory=list)
    fingerprints_after: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    # (rotation_id, path, backup_file, sha256_after) of files written: indexed on completion.
    backups: list[tuple[str, str, str, str]] = field(default_factory=list)
    # What the files, read back after the edit, lack of what was asked (empty: in effect).
    unmet: list[str] = field(default_factory=list)


class _Retry(Exception):
    """A file changed between read and write before anything was written: plan again."""


class FileEditor:
    """Runs `EditRequest`s (see the module docstring)."""

    def __init__(self, files: HostFiles, store: StateStore, backups: Backups, hooks: DaemonHooks) -> None:
        self.files = files
        self.store = store
        self.backups = backups
        self.hooks = hooks

    def edit(self, req: EditRequest, view: HostView) -> Outcome:
        for attempt in range(ATTEMPTS):
            try:
                return self._edit_once(req, view)
            except _Retry:
                if attempt == ATTEMPTS - 1:
                    raise ApplyFailed("CONFLICT", "the file kept changing while being updated") from None
            except (UnsafePath, OSError) as exc:
                code = "UNSAFE_PATH" if isinstance(exc, UnsafePath) else "IO_ERROR"
                raise ApplyFailed(code, io_reason(exc)) from None
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def _open_plans(self, req: EditRequest, view: HostView) -> Iterator[list[FilePlan]]:
        """Open each file's directory safely, read every file, then plan them together.
        Directories stay open for the write."""
        user = req.user
        reads: list[tuple[str, str, KeysDir, ReadResult | None]] = []
        paths = list(dict.fromkeys(req.paths))
        try:
            for path in paths:
                creating = req.create and path == paths[0]
                directory, name = posixpath.split(path)
                # Who owns what is created is the safe file layer's rule (the user's own only
                # inside her own home, root's everywhere else): docs/rotation.md, trust rules.
                spec = CreateSpec(user.uid, user.gid, SSH_DIR_MODE) if creating else None
                try:
                    held = self.files.open_dir(directory, create=spec, confine=user.home, user_uid=user.uid)
                except (FileNotFoundError, NotADirectoryError):
                    if creating:
                        raise
                    continue  # no such directory: nothing of this user's there
                try:
                    if held.home is not None:
                        refuse_shared_home(view, user, held.home, path)
                    current = held.read(name)
                    if current is not None and current.truncated:
                        raise UnsafePath("file too large to rewrite safely", path)
                except BaseException:
                    held.close()
                    raise
                reads.append((path, name, held, current))
            planned = req.planner([(path, c.data if c is not None else b"") for path, _, _, c in reads])
            plans: list[FilePlan] = []
            for (path, name, held, current), plan in zip(reads, planned, strict=True):
                if plan.new_data is not None and current is None and not (req.create and path == paths[0]):
                    plan = EditPlan(None, plan.fingerprints_after)
                plans.append(FilePlan(path, name, held, current, plan))
            yield plans
        finally:
            for _, _, held, _ in reads:
                held.close()

    def _journal_record(self, req: EditRequest, changes: list[FilePlan], backups: dict[str, str]) -> JSON:
        return {
            "kind": req.journal.kind,
            "exp": req.journal.exp,
            "user": req.user.name,
            "backup_id": req.backup_id,
            **req.extra,
            "files": [
                {
                    "path": p.path,
                    "backup": backups[p.path],
                    "sha_before": None if p.before is None else sha256_hex(p.before),
                    "sha_after": sha256_hex(p.plan.new_data or b""),
                }
                for p in changes
            ],
        }

    def _edit_once(self, req: EditRequest, view: HostView) -> Outcome:
        user = req.user
        outcome = Outcome()
        with self._open_plans(req, view) as plans:
            changes = [p for p in plans if p.plan.new_data is not None]
            if not changes:
                outcome.fingerprints_after = view.fingerprints_of(user)
                return outcome
            backups = {p.path: self.backups.save(p.path, user.name, p.before) for p in changes}
            journal_id = req.journal.id
            self.store.begin_apply(journal_id, self._journal_record(req, changes, backups))
            try:
                for p in changes:
                    self._write(req, p, outcome)
                    assert p.plan.new_data is not None
                    # Indexed when the apply completes (one transaction); reconcile re-indexes after a crash.
                    outcome.backups.append(
                        (req.backup_id, p.path, backups[p.path], sha256_hex(p.plan.new_data))
                    )
            except BaseException:
                if not outcome.written:
                    self.store.finish_apply(journal_id)  # nothing changed: nothing to reconcile
                    for name in backups.values():
                        self.backups.delete(name)
                raise
            if req.journal.completes_itself:
                self.store.complete_apply(journal_id, backups=outcome.backups)
        outcome.fingerprints_after = view.fingerprints_of(user)
        return outcome

    def _write(self, req: EditRequest, p: FilePlan, outcome: Outcome) -> None:
        assert p.plan.new_data is not None
        uid, gid, mode = keep_or_default_ownership(
            p.current.info if p.current else None, req.user, user_may_own=p.directory.user_may_own
        )
        if req.managed is not None:
            fingerprint, managed_by, expires_at = req.managed
            self.hooks.note_managed(fingerprint, req.user.name, p.path, managed_by, expires_at)
        try:
            p.directory.replace(
                p.name,
                p.plan.new_data,
                uid=uid,
                gid=gid,
                mode=mode,
                expect=p.current.info if p.current else None,
            )
        except UnsafePath as exc:
            if exc.reason == CHANGED_SINCE_READ and not outcome.written:
                raise _Retry() from None
            raise
        if p.current is None and p.directory.read(p.name) is None:
            raise UnsafePath("file vanished after the write", p.path)
        outcome.written.append(p.path)
