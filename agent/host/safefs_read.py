"""The safe file layer's reads: the final open of a file, and directories held open for reading.

Part of the safe file layer (see ``agent/host/safefs.py``). A file is probed with an O_PATH
descriptor first and refused unless it is a regular file, so a FIFO never blocks a reader and a
device is never opened; the real open is O_NOFOLLOW|O_NONBLOCK and must land on the probed inode.
Reads are capped (``max_bytes``); a longer file is reported truncated, never read whole.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
from dataclasses import dataclass, field
from typing import Final, Protocol

from agent.host.safefs_walk import (
    PROBE,
    FileInfo,
    Resolver,
    Scope,
    UnsafePath,
    Walk,
    check_name,
    components,
    kind,
)

READ: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


@dataclass(frozen=True)
class ReadResult:
    data: bytes = field(repr=False)  # never in a repr: authorized_keys content must not reach logs
    info: FileInfo
    realpath: str  # resolved path inside the root
    chain: tuple[FileInfo, ...]  # every directory of realpath from "/" down to the file's parent
    truncated: bool  # the file holds more than max_bytes; data is the first max_bytes

    def text(self) -> str:
        """The bytes as text (UTF-8, undecodable bytes replaced)."""
        return self.data.decode("utf-8", "replace")


def _read_fd(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    remaining = limit
    while remaining > 0:
        chunk = os.read(fd, min(remaining, 1 << 16))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_final(
    fs: Resolver, dir_fd: int, name: str, probe: os.stat_result, realpath: str, path: str, max_bytes: int
) -> tuple[bytes, FileInfo, bool]:
    """Open ``name`` in ``dir_fd`` (already probed) and read at most ``max_bytes`` of it.
    Returns (data, info, truncated)."""
    # The probe came from an O_PATH descriptor: refuse before opening, so a FIFO never blocks
    # and a device is never opened.
    if not stat.S_ISREG(probe.st_mode):
        raise UnsafePath(kind(probe.st_mode), path)
    try:
        fd = os.open(name, READ, dir_fd=dir_fd)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath("changed during the walk", path) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(kind(st.st_mode), path)
        if (st.st_dev, st.st_ino) != (probe.st_dev, probe.st_ino):
            raise UnsafePath("changed during the walk", path)
        data = _read_fd(fd, max_bytes + 1)
    finally:
        os.close(fd)
    truncated = len(data) > max_bytes
    return data[:max_bytes], fs._info(realpath, st), truncated


def check_foreign_link(fs: Resolver, scope: Scope, directory: FileInfo, info: FileInfo, path: str) -> None:
    """A hard link in a directory the user controls, to a file the user does not own, is
    somebody else's file put in the user's way (where protected_hardlinks is off): refused, so
    its keys are never reported as the user's. Root's directories and plain files pass."""
    if scope.home is None or info.nlink <= 1 or scope.is_roots(directory):
        return
    user = scope.uid
    if user is None:
        home = scope.resolved_home(fs)
        user = home.uid if home is not None else None
    if info.uid != user:
        raise UnsafePath(f"has {info.nlink} hard links and is owned by uid {info.uid}, not by the user", path)


class Reads(Resolver):
    """The read API of ``HostFS``."""

    max_bytes: int  # the default cap of a read

    def read(
        self,
        path: str,
        *,
        confine: str | None = None,
        user_uid: int | None = None,
        max_bytes: int | None = None,
    ) -> ReadResult:
        """Read a regular file of the account ``user_uid`` whose home is ``confine`` (None, None:
        one of root's own files), following symlinks inside the root as the trust rules allow
        (``safefs_walk``). ``user_uid`` None with a ``confine``: the home's owner is the account.

        ``max_bytes`` overrides the instance cap for this call."""
        return self.read_scoped(path, self.scope(confine, user_uid), max_bytes=max_bytes)

    def read_scoped(self, path: str, scope: Scope, *, max_bytes: int | None = None) -> ReadResult:
        limit = self.max_bytes if max_bytes is None else max_bytes
        walk, final = self._resolve(path, follow_final=True, scope=scope)
        with walk:
            if final is None:
                raise UnsafePath("is a directory", path)
            realpath = walk.child(final.name)
            data, info, truncated = read_final(self, walk.fd, final.name, final.st, realpath, path, limit)
            check_foreign_link(self, scope, walk.infos[-1], info, path)
            return ReadResult(data, info, realpath, tuple(walk.infos), truncated)

    def stat(self, path: str, *, confine: str | None = None, user_uid: int | None = None) -> FileInfo | None:
        """lstat semantics on the final component (parents are resolved); None when absent."""
        try:
            walk, final = self._resolve(path, follow_final=False, scope=self.scope(confine, user_uid))
        except (FileNotFoundError, NotADirectoryError):
            return None
        with walk:
            if final is None:
                return walk.infos[-1]
            return self._info(walk.child(final.name), final.st)

    def exists(self, path: str, *, confine: str | None = None, user_uid: int | None = None) -> bool:
        """True when the path resolves (following symlinks) to something. UnsafePath propagates."""
        try:
            walk, _ = self._resolve(path, follow_final=True, scope=self.scope(confine, user_uid))
        except (FileNotFoundError, NotADirectoryError):
            return False
        walk.reset()
        return True

    def listdir(self, path: str, *, confine: str | None = None, user_uid: int | None = None) -> list[str]:
        """Sorted entry names of a directory (symlinks to it followed as ``read`` follows them)."""
        with self.open_read_dir(path, confine=confine, user_uid=user_uid) as directory:
            return directory.listdir()

    def open_read_dir(self, path: str, *, confine: str | None = None, user_uid: int | None = None) -> ReadDir:
        """Resolve the directory ``path`` once (exactly as ``read`` resolves a file's parent) and
        hold it, to list it and read several names in it without walking again. The caller
        closes the handle. Raises like ``read``; NotADirectoryError when ``path`` is a file."""
        scope = self.scope(confine, user_uid)
        walk, final = self._resolve(path, follow_final=True, scope=scope)
        if final is not None:
            walk.reset()
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        return ReadDir(self, walk, path, scope)

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


# -- reading several files of one directory ----------------------------------------------------


class FileReads(Protocol):
    """The read side discovery needs: ``HostFS`` itself, or ``DirReads`` over it."""

    def read(
        self,
        path: str,
        *,
        confine: str | None = None,
        user_uid: int | None = None,
        max_bytes: int | None = None,
    ) -> ReadResult: ...

    def listdir(self, path: str, *, confine: str | None = None, user_uid: int | None = None) -> list[str]: ...


class ReadDir:
    """A directory held open for reading (see ``HostFS.open_read_dir``).

    ``read(name)`` gives exactly what ``fs.read(path + "/" + name, ...)`` gives with the same
    scope: the held walk is the one that read would make to the parent; the final name is probed
    with O_PATH|O_NOFOLLOW and fstat, non-regular files are refused before opening, and a final
    symlink is handed to the full read (so it is resolved and confined the usual way)."""

    def __init__(self, fs: Reads, walk: Walk, path: str, scope: Scope) -> None:
        self._fs = fs
        self._walk = walk
        self.path = path  # as asked for
        self.scope = scope
        self.realpath = walk.path  # resolved path inside the root
        self.chain = tuple(walk.infos)  # directories from "/" down to and including this one

    def _lexical(self, name: str) -> str:
        return self.path.rstrip("/") + "/" + name

    def read(self, name: str, *, max_bytes: int | None = None) -> ReadResult:
        check_name(name)
        path = self._lexical(name)
        try:
            probe_fd = os.open(name, PROBE, dir_fd=self._walk.fd)
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path) from None
        try:
            probe = os.fstat(probe_fd)
        finally:
            os.close(probe_fd)
        if stat.S_ISLNK(probe.st_mode):
            return self._fs.read_scoped(path, self.scope, max_bytes=max_bytes)
        if stat.S_ISDIR(probe.st_mode):
            raise UnsafePath("is a directory", path)
        limit = self._fs.max_bytes if max_bytes is None else max_bytes
        realpath = self._walk.child(name)
        data, info, truncated = read_final(self._fs, self._walk.fd, name, probe, realpath, path, limit)
        check_foreign_link(self._fs, self.scope, self.chain[-1], info, path)
        return ReadResult(data, info, realpath, self.chain, truncated)

    def listdir(self) -> list[str]:
        """Sorted entry names."""
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self._walk.fd)
        try:
            return sorted(os.listdir(fd))
        finally:
            os.close(fd)

    def close(self) -> None:
        self._walk.reset()

    def __enter__(self) -> ReadDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DirReads:
    """``read``/``listdir`` like HostFS's, for a caller that reads several files of one directory
    in a row (discovery: a user's authorized_keys, authorized_keys2 and ~/.ssh listing).

    The last directory asked for stays open, and so does the last failure to open one (a user
    without ~/.ssh costs one walk, not three). Nothing is kept longer than the next directory:
    call ``close`` (or use ``with``) when done."""

    def __init__(self, fs: Reads) -> None:
        self._fs = fs
        self._key: tuple[str, str | None, int | None] | None = None
        self._dir: ReadDir | None = None
        self._error: OSError | UnsafePath | None = None

    def read(
        self,
        path: str,
        *,
        confine: str | None = None,
        user_uid: int | None = None,
        max_bytes: int | None = None,
    ) -> ReadResult:
        parent, name = _split_simple(path)
        if name is None:
            return self._fs.read(path, confine=confine, user_uid=user_uid, max_bytes=max_bytes)
        try:
            directory = self._open(parent, confine, user_uid)
        except UnsafePath as exc:
            raise UnsafePath(exc.reason, path) from None
        except OSError as exc:  # OSError() picks the subclass (FileNotFoundError, ...) from errno
            raise OSError(exc.errno, exc.strerror, path) from None
        return directory.read(name, max_bytes=max_bytes)

    def listdir(self, path: str, *, confine: str | None = None, user_uid: int | None = None) -> list[str]:
        return self._open(path, confine, user_uid).listdir()

    def _open(self, path: str, confine: str | None, user_uid: int | None) -> ReadDir:
        key = (path, confine, user_uid)
        if self._key == key:
            if self._dir is not None:
                return self._dir
            assert self._error is not None
            raise self._error
        self.close()
        self._key = key
        try:
            self._dir = self._fs.open_read_dir(path, confine=confine, user_uid=user_uid)
        except (OSError, UnsafePath) as exc:
            self._error = exc
            raise
        return self._dir

    def close(self) -> None:
        if self._dir is not None:
            self._dir.close()
        self._key, self._dir, self._error = None, None, None

    def __enter__(self) -> DirReads:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _split_simple(path: str) -> tuple[str, str | None]:
    """(parent, last name) of a plain absolute path; name None when the path has a "." or ".."
    component or is the root (those go through the full walk)."""
    parent, _, name = path.rpartition("/")
    if not path.startswith("/") or name in ("", ".", "..") or "/./" in path or "/../" in path:
        return path, None
    if parent.endswith("/..") or parent.endswith("/.") or parent in (".", ".."):
        return path, None
    return parent or "/", name
