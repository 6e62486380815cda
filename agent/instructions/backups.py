"""Backups of authorized keys files, taken before each change (for `sshklm-agent rollback`).

A backup is one file in the agent's private backups directory (root, 0600, directory 0700):
one JSON line of metadata (path, owner account, whether the file existed), then the file's bytes
exactly. It is indexed in the state store under the rotation or grant id once the change is
complete; the newest `apply.backups_per_file` per file are kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
from collections.abc import Callable
from datetime import datetime
from typing import Any

from agent.instructions.errors import RollbackRefused
from agent.instructions.ports import HostFiles
from agent.store.state import StateStore

JSON = dict[str, Any]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def backup_name(now: datetime, path: str, token: str) -> str:
    """`<unix time>-<path hash>-<random>.bak`: sorts by time, says which file, never collides."""
    return f"{int(now.timestamp())}-{sha256_hex(path.encode())[:12]}-{token}.bak"


def encode_backup(path: str, user: str, before: bytes | None) -> bytes:
    meta = {"path": path, "user": user, "existed": before is not None}
    return json.dumps(meta, separators=(",", ":")).encode() + b"\n" + (before or b"")


def decode_backup(name: str, raw: bytes) -> tuple[bytes, JSON]:
    """(file bytes, metadata) of a backup file's contents."""
    head, sep, data = raw.partition(b"\n")
    try:
        meta = json.loads(head)
    except ValueError:
        meta = None
    if not sep or not isinstance(meta, dict):
        raise RollbackRefused(f"backup {name} is unreadable")
    return data, meta


class Backups:
    """Saves, reads, deletes and prunes backups through `HostFiles`, indexed in the store."""

    def __init__(
        self,
        files: HostFiles,
        store: StateStore,
        clock: Callable[[], datetime],
        keep_per_file: int,
        token: Callable[[], str] = lambda: secrets.token_hex(4),
    ) -> None:
        self.files = files
        self.store = store
        self.clock = clock
        self.keep_per_file = keep_per_file
        self._token = token

    def save(self, path: str, user: str, before: bytes | None) -> str:
        """Save the file as it is now (`before` None: it does not exist). Returns the backup's name."""
        name = backup_name(self.clock(), path, self._token())
        self.files.write_backup(name, encode_backup(path, user, before))
        return name

    def delete(self, name: str) -> None:
        with contextlib.suppress(OSError):
            self.files.delete_backup(name)

    def prune(self) -> None:
        """Keep the newest `keep_per_file` backups per file. Run by the sweep, not on the write
        path: the query spans the whole index (tens of ms with 10,000 backups)."""
        for dropped in self.store.prune_backups(self.keep_per_file):
            self.delete(dropped.backup_file)

    def read(self, name: str) -> tuple[bytes, JSON]:
        """(file bytes, metadata) of a backup named in the index."""
        if "/" in name or name.startswith("."):
            raise RollbackRefused("malformed backup name in the index")
        return decode_backup(name, self.files.read_backup(name))
