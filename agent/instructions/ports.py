"""What the applier needs from the world around it, as three small interfaces (ports).

The applier's logic (planning, idempotency, the journal, crash recovery, rollback decisions) touches
the host only through `HostFiles` and the `KeysDir`s it opens, and the daemon only through
`DaemonHooks`. Production has exactly one implementation of each: `host_files.SafeHostFiles` over
the safe file layer (`agent/host/safefs.py`: dirfd walks, O_NOFOLLOW, owner checks, the atomic
write) and the daemon's hooks (`agent/daemon/extensions.py`). The unit tests drive the same logic
over in-memory fakes (`tests/unit/applier_fakes.py`), without root; the real-filesystem tests
(tests/integration/test_apply*.py, test_e2e_sshd.py) run it over `SafeHostFiles` as root.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

from agent.host.safefs import CreateSpec, FileInfo, ReadResult
from agent.inventory.evaluate import Policy
from agent.inventory.model import Event
from agent.ssh.sshd_config import ParsedSshdConfig


class KeysDir(Protocol):
    """The directory of an authorized keys file, held open while one edit reads and writes it:
    every operation is relative to the directory that was checked when it was opened, so swapping
    a path component afterwards cannot redirect a write."""

    @property
    def path(self) -> str: ...

    @property
    def home(self) -> str | None:
        """The real path of the user's home when this directory is at or below it, else None."""
        ...

    @property
    def user_may_own(self) -> bool:
        """May a new file here be the user's? Only in a directory of the user's inside the user's
        own home; elsewhere (a central directory, root's ~/.ssh) a new file is root's."""
        ...

    def read(self, name: str) -> ReadResult | None:
        """The file's bytes and stat, None when absent. Symlinks, hard links and anything but a
        regular file are refused (UnsafePath)."""
        ...

    def replace(
        self, name: str, data: bytes, *, uid: int, gid: int, mode: int, expect: FileInfo | None
    ) -> None:
        """Atomically replace (or create) the file, owned uid:gid with `mode`. Refused with
        UnsafePath("changed since read") when the file is not the one `expect` describes."""
        ...

    def remove(self, name: str, *, expect: FileInfo) -> None:
        """Remove the file; refused like `replace` when it changed since `expect` was read."""
        ...

    def close(self) -> None: ...


class HostFiles(Protocol):
    """Every host-file operation the applier makes. Errors: UnsafePath (refused on safety grounds),
    FileNotFoundError / NotADirectoryError (absent), other OSError."""

    def read(self, path: str, *, confine: str, user_uid: int) -> bytes:
        """An authorized keys file's bytes, read-only: the file of the account `user_uid` whose
        home is `confine` (symlinks followed by the safe file layer's trust rules)."""
        ...

    def sshd_config(self, path: str) -> ParsedSshdConfig:
        """sshd_config and its Includes, parsed (unreadable parts are left out)."""
        ...

    def open_dir(self, path: str, *, confine: str, user_uid: int, create: CreateSpec | None) -> KeysDir:
        """Open the directory `path` for an edit of the account `user_uid` whose home is `confine`
        (`HostFS.open_dir`: only root's links outside the home, none inside it; every directory
        from `/` owned by root or the user and not group/other-writable; a home that is not the
        user's own refused). With `create`, a missing final directory is created: `create`'s
        owner and mode inside the user's home, root's (0755) elsewhere."""
        ...

    def write_backup(self, name: str, data: bytes) -> None:
        """Store a backup file (the agent's private backups directory: root-owned, 0600)."""
        ...

    def read_backup(self, name: str) -> bytes: ...

    def delete_backup(self, name: str) -> None: ...


class DaemonHooks(Protocol):
    """What the applier asks of, and tells, the agent it runs in."""

    def host_id(self) -> str | None:
        """This host's id (the `aud` instructions must carry); None before enrollment."""
        ...

    def policy(self) -> Policy:
        """The policy in force (the server's, else the configured one)."""
        ...

    def emit(self, events: Sequence[Event]) -> None:
        """Queue events for the control plane (durably, in order)."""
        ...

    def note_managed(
        self, fingerprint: str, user: str | None, path: str, managed_by: str, expires_at: datetime | None
    ) -> None:
        """A line the applier is about to write: the watcher's events for it carry `managed_by`."""
        ...

    def schedule_once(self, job_id: str, fn: Callable[[], None], when: datetime) -> None:
        """Run `fn` once at `when` (an ephemeral grant's expiry)."""
        ...

    def run_scan(self, scan_id: str) -> None:
        """A full scan whose result is reported under `scan_id`."""
        ...
