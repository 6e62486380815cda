"""The one safe file-access layer: every read and write of a path under a user's home goes through it.

The agent runs as root while users control their homes, so any path below a home is hostile:
symlinks (to /etc/shadow, into other homes, in loops), hard links, FIFOs that would block a
reader, devices, and files swapped between a check and a use.

How this module stays safe:

* The root (``/`` or a fake root for tests and ``scan --root``) is opened once as a directory
  descriptor. Every path is walked one component at a time with ``openat(O_PATH|O_NOFOLLOW)``
  relative to the descriptor of the previous directory, so no user-controlled path is ever
  handed to a plain ``open``/``stat``/``chown``.
* Symlinks are resolved *manually*, inside the root (an absolute target restarts at the root,
  ``..`` never climbs above it, at most 40 links and 40 directories deep, like the kernel's
  RESOLVE_IN_ROOT), and only where the trust rules allow (``safefs_walk``; docs/rotation.md,
  "Trust rules"): a link is followed outside the account's home only when root controls the
  directory holding it, inside the home only back into the home (and never for a write). Every
  call names whose file it is: ``confine`` (the account's home; None for root's own files) and
  ``user_uid`` (the account; None: the home's owner).
* Types, owners and sizes are taken from ``fstat`` of the descriptor actually used, never
  from a separate ``stat`` of the name. Non-regular files are refused before they are opened
  for reading (a FIFO must never hang the scanner; a device must never be opened).
* Writes never follow a symlink below the home nor one the user controls above it, check the
  owner and mode of every directory from the root down on descriptors, never create anything of
  the user's outside the user's own home, and replace files atomically (temp file created
  O_EXCL|O_NOFOLLOW in the held directory, fsync, rename within that directory, fsync the
  directory). Because all of it is relative to the held directory descriptor, swapping
  ``~/.ssh`` (or the home, or a directory above it) mid-write cannot redirect the write.

Exceptions: ``UnsafePath`` for anything refused on safety grounds; ``FileNotFoundError`` when a
component is missing; ``NotADirectoryError`` when a non-final component is not a directory;
other ``OSError`` as raised. No message ever contains file content.

Where things are (this module is the entry point; it re-exports the public names):

* ``safefs_walk.py``: the root descriptor, the mount table, the descriptor walk and symlink
  resolution (``Resolver``), ``UnsafePath``, ``FileInfo``;
* ``safefs_read.py``: the final open of a file (probe first, O_NOFOLLOW|O_NONBLOCK, byte cap),
  directories held open for reading several files (``ReadDir``, ``DirReads``);
* ``safefs_atomic.py``: THE atomic-write primitive (``replace_file_at``);
* ``safefs_write.py``: users' directories opened for writing by the trust rules (``open_dir``,
  ``atomic_replace``, ``remove_at``);
* ``safefs_private.py``: the agent's own private directories (``open_private_dir``,
  ``write_private_file``: credentials, backups), and files it writes for others to read in a
  directory only it may write in (``write_readable_file``: the metrics text file);
* here: ``HostFS``, the object the rest of the agent holds, with the read and write API.

Using it (every call says whose file it is):

* a user's file: ``fs.read(path, confine=user.home, user_uid=user.uid)``; to change it,
  ``fs.open_dir(dirname, confine=user.home, user_uid=user.uid, create=CreateSpec(...))``, then
  ``fs.read_at(dirh, name)`` and ``fs.atomic_replace(dirh, name, data, uid=, gid=, mode=,
  expect=<the read's info>)``. ``DirHandle.user_may_own`` says whether a new file there may be
  the user's (inside her home, in her directory); elsewhere create it root's (0644: sshd reads it
  with the user's privileges);
* root's own file outside any home (sshd_config, a KRL or CA list under /etc/ssh):
  ``fs.read(path)``; to write, ``fs.open_dir(dirname, confine=dirname, user_uid=0)`` and
  ``atomic_replace(..., uid=0, gid=0, mode=0o644)`` — every directory from ``/`` must be root's;
* the agent's private files (state, credentials, backups): ``write_private_file`` /
  ``read_private_file`` / ``remove_private_file`` (plain paths: configuration, not user input);
* a file of the agent that others read (the metrics for node_exporter): ``write_readable_file``
  (0644, in an existing directory of root's that no one else can write in).
"""

from __future__ import annotations

from agent.host.mounts import Mount, parse_mountinfo
from agent.host.safefs_atomic import SELINUX_XATTR, replace_file_at, write_all
from agent.host.safefs_private import (
    open_private_dir,
    read_private_file,
    readable_dir_problem,
    remove_private_file,
    write_private_file,
    write_readable_file,
)
from agent.host.safefs_read import DirReads, FileReads, ReadDir, ReadResult, Reads
from agent.host.safefs_walk import (
    MAX_SYMLINKS,
    FileInfo,
    MountTable,
    UnsafePath,
    failure_reason,
)
from agent.host.safefs_write import CHANGED_SINCE_READ, BeforeRename, CreateSpec, DirHandle, Writes

__all__ = [
    "CHANGED_SINCE_READ",
    "MAX_SYMLINKS",
    "SELINUX_XATTR",
    "BeforeRename",
    "CreateSpec",
    "DirHandle",
    "DirReads",
    "FileInfo",
    "FileReads",
    "HostFS",
    "Mount",
    "MountTable",
    "ReadDir",
    "ReadResult",
    "UnsafePath",
    "failure_reason",
    "open_private_dir",
    "parse_mountinfo",
    "read_private_file",
    "readable_dir_problem",
    "remove_private_file",
    "replace_file_at",
    "write_all",
    "write_private_file",
    "write_readable_file",
]


class HostFS(Reads, Writes):
    """Safe access to files under ``root``. Paths are absolute paths inside the root."""

    def __init__(
        self, root: str = "/", *, max_bytes: int = 1 << 20, before_rename: BeforeRename | None = None
    ) -> None:
        """``before_rename`` is a test hook run by atomic_replace between its checks and the rename."""
        super().__init__(root)
        self.max_bytes = max_bytes
        self._before_rename = before_rename

    def __enter__(self) -> HostFS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
