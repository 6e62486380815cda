"""Rollback: restore the files a rotation changed, from its backups, all or nothing.

Every file the rotation wrote must still hold exactly the bytes it wrote (the sha256 indexed with
the backup); otherwise nothing is restored and the changed file is named. Each file gets the bytes
it had before the rotation (the oldest backup of it under that rotation id); a file the rotation
created is removed again. Used by `sshklm-agent rollback` (agent/commands/rollback.py).
"""

from __future__ import annotations

import contextlib
import posixpath
from dataclasses import dataclass

from agent.host.safefs import ReadResult
from agent.host.users import User
from agent.instructions.backups import Backups, sha256_hex
from agent.instructions.edit import keep_or_default_ownership
from agent.instructions.errors import RollbackRefused
from agent.instructions.ports import KeysDir
from agent.instructions.view import UnitsOfWork
from agent.store.state import Backup, StateStore


@dataclass
class _Restore:
    path: str
    backup: Backup
    data: bytes  # the file before the rotation
    existed: bool
    user: User


class Rollback:
    def __init__(self, units: UnitsOfWork, store: StateStore, backups: Backups) -> None:
        self.units = units
        self.files = units.files
        self.store = store
        self.backups = backups

    def rollback(self, rotation_id: str) -> list[str]:
        """Restore the files `rotation_id` changed; the restored paths. RollbackRefused when a
        file changed since (nothing is restored then)."""
        with self.units.unit() as view:
            backups = self.store.backups_for(rotation_id)
            if not backups:
                raise RollbackRefused(f"no backups recorded for {rotation_id}")
            first: dict[str, Backup] = {}
            for b in backups:
                first.setdefault(b.path, b)  # the oldest: the file before the rotation
            work = []
            for path, backup in first.items():
                data, meta = self.backups.read(backup.backup_file)
                user = view.user(str(meta.get("user")))
                if user is None or meta.get("path") != path:
                    raise RollbackRefused(f"{path}: owner account or backup metadata does not match")
                work.append(_Restore(path, backup, data, bool(meta.get("existed")), user))
            with contextlib.ExitStack() as stack:
                # Every file is checked before any is restored.
                staged: list[tuple[_Restore, str, KeysDir, ReadResult | None]] = []
                for item in work:
                    directory, name = posixpath.split(item.path)
                    held = self.files.open_dir(
                        directory,
                        confine=item.user.home,
                        user_uid=item.user.uid,
                        create=None,
                    )
                    stack.callback(held.close)
                    current = held.read(name)
                    digest = sha256_hex(current.data) if current is not None else None
                    if digest != item.backup.sha256_after:
                        raise RollbackRefused(
                            f"{item.path}: changed since rotation {rotation_id}; not restored"
                        )
                    staged.append((item, name, held, current))
                restored = []
                for item, name, held, current in staged:
                    if item.existed or current is None:
                        uid, gid, mode = keep_or_default_ownership(
                            current.info if current else None, item.user, user_may_own=held.user_may_own
                        )
                        held.replace(
                            name,
                            item.data,
                            uid=uid,
                            gid=gid,
                            mode=mode,
                            expect=current.info if current else None,
                        )
                    else:
                        held.remove(name, expect=current.info)  # the rotation created it: remove it again
                    restored.append(item.path)
                return restored
