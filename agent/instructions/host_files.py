"""The applier's host files over the safe file layer: the one production `HostFiles`.

Users' files go through `HostFS` (the directory opened by descriptor walk, the file read and
atomically replaced inside the held directory); backups go to the agent's private backups
directory with the same atomic write (`write_private_file`). Nothing here decides anything: the
decisions are the applier's, tested over a fake of this class's interface (agent/instructions/ports.py).
"""

from __future__ import annotations

import os

from agent.host.safefs import (
    CreateSpec,
    DirHandle,
    FileInfo,
    HostFS,
    ReadResult,
    read_private_file,
    remove_private_file,
    write_private_file,
)
from agent.host.sshd_files import load_sshd_config
from agent.ssh.sshd_config import ParsedSshdConfig

BACKUPS_SUBDIR = "backups"  # under the state directory
BACKUP_FILE_MODE = 0o600


def backups_dir_for(state_dir: str) -> str:
    """Where the daemon and `sshklm-agent rollback` keep (and find) backups."""
    return os.path.join(state_dir, BACKUPS_SUBDIR)


class SafeKeysDir:
    """A `KeysDir` over a `DirHandle`."""

    def __init__(self, fs: HostFS, dirh: DirHandle) -> None:
        self._fs = fs
        self._dirh = dirh

    @property
    def path(self) -> str:
        return self._dirh.path

    @property
    def home(self) -> str | None:
        return self._dirh.home

    @property
    def user_may_own(self) -> bool:
        return self._dirh.user_may_own

    def read(self, name: str) -> ReadResult | None:
        return self._fs.read_at(self._dirh, name)

    def replace(
        self, name: str, data: bytes, *, uid: int, gid: int, mode: int, expect: FileInfo | None
    ) -> None:
        self._fs.atomic_replace(self._dirh, name, data, uid=uid, gid=gid, mode=mode, expect=expect)

    def remove(self, name: str, *, expect: FileInfo) -> None:
        self._fs.remove_at(self._dirh, name, expect=expect)

    def close(self) -> None:
        self._dirh.close()


class SafeHostFiles:
    """`HostFiles` over `HostFS` (users' files) and the private `backups_dir` (backups)."""

    def __init__(self, fs: HostFS, backups_dir: str) -> None:
        self.fs = fs
        self.backups_dir = backups_dir

    def read(self, path: str, *, confine: str, user_uid: int) -> bytes:
        return self.fs.read(path, confine=confine, user_uid=user_uid).data

    def sshd_config(self, path: str) -> ParsedSshdConfig:
        parsed, _ = load_sshd_config(self.fs, path)
        return parsed

    def open_dir(self, path: str, *, confine: str, user_uid: int, create: CreateSpec | None) -> SafeKeysDir:
        return SafeKeysDir(self.fs, self.fs.open_dir(path, create=create, confine=confine, user_uid=user_uid))

    def write_backup(self, name: str, data: bytes) -> None:
        write_private_file(self.backups_dir, name, data, BACKUP_FILE_MODE)

    def read_backup(self, name: str) -> bytes:
        return read_private_file(self.backups_dir, name)

    def delete_backup(self, name: str) -> None:
        remove_private_file(self.backups_dir, name)
