"""The one safe file-access layer: every read and write of a path under a user's home goes through it.

The agent runs as root while users control their homes, so any path below a home is hostile:
symlinks (to /etc/shadow, into other homes, in loops), hard links, FIFOs that would block a
reader, devices, and files swapped between a check and a use.

How this module stays safe:

* The root (``/`` or a fake root for tests and ``scan --root``) is opened once as a directory
  descriptor. Every path is walked one component at a time with ``openat(O_PATH|O_NOFOLLOW)``
  relative to the descriptor of the previous directory, so no user-controlled path is ever
  handed to a plain ``open``/``stat``/``chown``.
* Reads resolve symlinks *manually*, inside the root (an absolute target restarts at the root,
  ``..`` never climbs above it, at most 40 links, like the kernel's RESOLVE_IN_ROOT). With
  ``confine`` a symlink that lives inside that directory must resolve inside it too.
* Types, owners and sizes are taken from ``fstat`` of the descriptor actually used, never
  from a separate ``stat`` of the name. Non-regular files are refused before they are opened
  for reading (a FIFO must never hang the scanner; a device must never be opened).
* Writes never follow a symlink below the home, check owners and modes on descriptors, and
  replace files atomically (temp file created O_EXCL|O_NOFOLLOW in the held directory, fsync,
  rename within that directory, fsync the directory). Because all of it is relative to the
  held directory descriptor, swapping ``~/.ssh`` mid-write cannot redirect the write.

Exceptions: ``UnsafePath`` for anything refused on safety grounds; ``FileNotFoundError`` when a
component is missing; ``NotADirectoryError`` when a non-final component is not a directory;
other ``OSError`` as raised. No message ever contains file content.

Where things are (this module is the entry point; it re-exports the public names):

* ``safefs_walk.py``: the root descriptor, the mount table, the descriptor walk and symlink
  resolution (``Resolver``), ``UnsafePath``, ``FileInfo``;
* ``safefs_read.py``: the final open of a file (probe first, O_NOFOLLOW|O_NONBLOCK, byte cap),
  directories held open for reading several files (``ReadDir``, ``DirReads``);
* ``safefs_write.py``: THE atomic-write primitive (``replace_file_at``), users' directories
  opened for writing (``open_dir``, ``atomic_replace``), the agent's own private directories
  (``open_private_dir``, ``write_private_file``: credentials, backups);
* here: ``HostFS``, the object the rest of the agent holds, with the read and write API.
"""

from __future__ import annotations

import errno
import fnmatch
import os

from agent.host.mounts import Mount, parse_mountinfo
from agent.host.safefs_read import DirReads, FileReads, ReadDir, ReadResult, read_final
from agent.host.safefs_walk import (
    MAX_SYMLINKS,
    FileInfo,
    MountTable,
    Resolver,
    UnsafePath,
    components,
    failure_reason,
)
from agent.host.safefs_write import (
    CHANGED_SINCE_READ,
    SELINUX_XATTR,
    BeforeRename,
    CreateSpec,
    DirHandle,
    open_private_dir,
    read_private_file,
    remove_private_file,
    replace_file_at,
    write_all,
    write_private_file,
)
from agent.host.safefs_write import atomic_replace as _atomic_replace
from agent.host.safefs_write import open_dir as _open_dir
from agent.host.safefs_write import read_at as _read_at
from agent.host.safefs_write import remove_at as _remove_at

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
    "remove_private_file",
    "replace_file_at",
    "write_all",
    "write_private_file",
]


class HostFS(Resolver):
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

    # -- reading --

    def read(self, path: str, *, confine: str | None = None, max_bytes: int | None = None) -> ReadResult:
        """Read a regular file, following symlinks inside the root (and inside ``confine`` when given).

        ``max_bytes`` overrides the instance cap for this call."""
        limit = self.max_bytes if max_bytes is None else max_bytes
        walk, final = self._resolve(path, follow_final=True, confine=confine)
        with walk:
            if final is None:
                raise UnsafePath("is a directory", path)
            realpath = walk.child(final.name)
            data, info, truncated = read_final(self, walk.fd, final.name, final.st, realpath, path, limit)
            return ReadResult(data, info, realpath, tuple(walk.infos), truncated)

    def stat(self, path: str, *, confine: str | None = None) -> FileInfo | None:
        """lstat semantics on the final component (parents are resolved); None when absent."""
        try:
            walk, final = self._resolve(path, follow_final=False, confine=confine)
        except (FileNotFoundError, NotADirectoryError):
            return None
        with walk:
            if final is None:
                return walk.infos[-1]
            return self._info(walk.child(final.name), final.st)

    def exists(self, path: str, *, confine: str | None = None) -> bool:
        """True when the path resolves (following symlinks) to something. UnsafePath propagates."""
        try:
            walk, _ = self._resolve(path, follow_final=True, confine=confine)
        except (FileNotFoundError, NotADirectoryError):
            return False
        walk.reset()
        return True

    def listdir(self, path: str, *, confine: str | None = None) -> list[str]:
        """Sorted entry names of a directory (symlinks to it followed inside the root)."""
        with self.open_read_dir(path, confine=confine) as directory:
            return directory.listdir()

    def open_read_dir(self, path: str, *, confine: str | None = None) -> ReadDir:
        """Resolve the directory ``path`` once (exactly as ``read`` resolves a file's parent) and
        hold it, to list it and read several names in it without walking again. The caller
        closes the handle. Raises like ``read``; NotADirectoryError when ``path`` is a file."""
        walk, final = self._resolve(path, follow_final=True, confine=confine)
        if final is not None:
            walk.reset()
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        return ReadDir(self, walk, path, confine)

    def glob(self, pattern: str) -> list[str]:
        """Sorted absolute paths matching ``pattern`` (fnmatch per component, like glob(3):
        a leading dot must be matched explicitly). Unreadable or unsafe directories match nothing."""
        candidates = ["/"]
        for comp in components(pattern):
            if not any(ch in comp for ch in "*?["):
                candidates = [os.path.join(base, comp) for base in candidates]
                continue
            matched: list[str] = []
            for base in candidates:
                try:
                    names = self.listdir(base)
                except (UnsafePath, OSError):
                    continue
                for name in names:
                    if fnmatch.fnmatchcase(name, comp) and (comp.startswith(".") or not name.startswith(".")):
                        matched.append(os.path.join(base, name))
            candidates = matched
        found: list[str] = []
        for candidate in candidates:
            try:
                if self.stat(candidate) is not None:
                    found.append(candidate)
            except (UnsafePath, OSError):
                continue
        return sorted(found)

    # -- writing --

    def open_dir(
        self, path: str, *, create: CreateSpec | None = None, confine: str, user_uid: int | None = None
    ) -> DirHandle:
        """Open the directory ``path`` (lexically at or under ``confine``, the home) for writing.

        Components above and including ``confine`` are resolved like reads (root-controlled
        layout such as a /home symlink); every component below it must be a real directory —
        a symlink is refused, never followed. The home and every directory below it must be
        owned by root or the user and not group/other-writable (like StrictModes). The user is
        ``user_uid``, else ``create.uid``, else the owner of ``confine``. With ``create``, a
        missing final directory is created and given that owner and mode (on its descriptor)."""
        return _open_dir(self, path, create=create, confine=confine, user_uid=user_uid)

    def read_at(self, dirh: DirHandle, name: str) -> ReadResult | None:
        """Read ``name`` in a held directory without following links; None when absent.
        Refuses non-regular files and hard-linked files."""
        return _read_at(self, dirh, name)

    def atomic_replace(
        self,
        dirh: DirHandle,
        name: str,
        data: bytes,
        *,
        uid: int,
        gid: int,
        mode: int,
        expect: FileInfo | None,
    ) -> FileInfo:
        """Atomically replace (or create) ``name`` in the held directory with ``data``
        (``replace_file_at``: O_EXCL temp file, owner and mode on its descriptor, fsync, rename,
        fsync of the directory).

        ``expect``: the FileInfo from the read this write is based on; the write is refused
        ("changed since read") when dev/ino/size/mtime differ or the file is gone, checked before
        the temp file is made and again right before the rename. The temp file is owned by
        uid:gid with ``mode`` before any byte is written, the SELinux label of the old file is
        copied, and the temp file is removed on any failure."""
        return _atomic_replace(
            self,
            dirh,
            name,
            data,
            uid=uid,
            gid=gid,
            mode=mode,
            expect=expect,
            before_rename=self._before_rename,
        )

    def remove_at(self, dirh: DirHandle, name: str, *, expect: FileInfo) -> None:
        """Remove ``name`` from the held directory (then fsync it), refused ("changed since read")
        when the file is not the one ``expect`` describes (dev/ino/size/mtime)."""
        _remove_at(dirh, name, expect=expect)
