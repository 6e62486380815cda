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
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import secrets
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, Protocol

from agent.host.mounts import Mount, parse_mountinfo

MAX_SYMLINKS: Final = 40
SELINUX_XATTR: Final = "security.selinux"

# Descriptor flags. O_PATH descriptors can serve as dir_fd and be fstat'ed without granting
# read access and without the side effects of opening a device or FIFO.
_PROBE: Final = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_PROBE: Final = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
_READ: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_DIR_READ: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_TEMP_CREATE: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
_XATTR_ABSENT: Final = frozenset({errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP})
_XATTR_UNSUPPORTED: Final = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP})


class UnsafePath(Exception):
    """A path refused on safety grounds. ``str()`` is ``"path: reason"``, never file content."""

    def __init__(self, reason: str, path: str) -> None:
        super().__init__(reason, path)
        self.reason = reason
        self.path = path

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class FileInfo:
    """Stat values taken from a descriptor. ``mode`` is the full ``st_mode`` (type and permission bits)."""

    path: str  # real path inside the root
    uid: int
    gid: int
    mode: int
    size: int
    mtime: float
    dev: int
    ino: int
    nlink: int
    fstype: str | None  # e.g. "ext4", "nfs4", "cifs", "fuse.sshfs"; None when unknown


@dataclass(frozen=True)
class ReadResult:
    data: bytes = field(repr=False)  # never in a repr: authorized_keys content must not reach logs
    info: FileInfo
    realpath: str  # resolved path inside the root
    chain: tuple[FileInfo, ...]  # every directory of realpath from "/" down to the file's parent
    truncated: bool  # the file holds more than max_bytes; data is the first max_bytes


@dataclass(frozen=True)
class CreateSpec:
    """Owner and mode of a directory that open_dir may create."""

    uid: int
    gid: int
    mode: int = 0o700


# -- mount table (filesystem type) -------------------------------------------------------------


class _MountTable:
    """Filesystem type lookup: by device number, else by the longest mount-point prefix."""

    def __init__(self, mounts: Iterable[Mount]) -> None:
        self._mounts = sorted(mounts, key=lambda m: len(m.mount_point), reverse=True)
        self._by_dev: dict[int, str] = {}
        for mount in self._mounts:
            self._by_dev.setdefault(mount.dev, mount.fstype)

    def fstype(self, dev: int, host_path: str) -> str | None:
        found = self._by_dev.get(dev)
        if found is not None:
            return found
        return self.fstype_by_path(host_path)

    def fstype_by_dev(self, dev: int) -> str | None:
        return self._by_dev.get(dev)

    def fstype_by_path(self, host_path: str) -> str | None:
        # Btrfs subvolumes and some overlays report anonymous device numbers: fall back to paths.
        for mount in self._mounts:
            mp = mount.mount_point.rstrip("/")
            if host_path == mp or host_path.startswith(mp + "/") or mp == "":
                return mount.fstype
        return None


def _load_mount_table() -> _MountTable:
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            return _MountTable(parse_mountinfo(fh.read()))
    except OSError:
        return _MountTable(())


# -- path helpers ------------------------------------------------------------------------------


def _components(path: str) -> list[str]:
    if not path.startswith("/"):
        raise ValueError("path must be absolute (inside the root)")
    return [c for c in path.split("/") if c not in ("", ".")]


def _join(names: Iterable[str]) -> str:
    return "/" + "/".join(names)


def _check_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ValueError("a single path component is required")


def _kind(mode: int) -> str:
    """Why a file that is not a regular file is refused."""
    if stat.S_ISDIR(mode):
        return "is a directory"
    if stat.S_ISLNK(mode):
        return "is a symlink"
    if stat.S_ISFIFO(mode):
        return "is a FIFO"
    if stat.S_ISSOCK(mode):
        return "is a socket"
    if stat.S_ISCHR(mode):
        return "is a character device"
    if stat.S_ISBLK(mode):
        return "is a block device"
    return "is not a regular file"


def _within(names: list[str], confine: tuple[str, ...]) -> bool:
    return len(names) >= len(confine) and tuple(names[: len(confine)]) == confine


class _Check:
    """Marker queued after a symlink's target: once consumed, the walk must be inside confine."""


_CHECK: Final = _Check()


_new_object = object.__new__
_set_attr = object.__setattr__


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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


# -- the walk ----------------------------------------------------------------------------------


class _Walk:
    """A stack of open O_PATH directory descriptors from the root down to the current directory."""

    def __init__(self, fs: HostFS) -> None:
        self._fs = fs
        self.fds: list[int] = []
        self.names: list[str] = []
        self.infos: list[FileInfo] = [fs._info("/", os.fstat(fs._root_fd))]

    @property
    def fd(self) -> int:
        return self.fds[-1] if self.fds else self._fs._root_fd

    @property
    def path(self) -> str:
        return _join(self.names)

    def child(self, name: str) -> str:
        return _join([*self.names, name])

    def push(self, fd: int, name: str, st: os.stat_result) -> None:
        self.fds.append(fd)
        self.names.append(name)
        self.infos.append(self._fs._info(self.path, st))

    def pop(self) -> None:
        # ".." at the root stays at the root.
        if self.fds:
            os.close(self.fds.pop())
            self.names.pop()
            self.infos.pop()

    def reset(self) -> None:
        while self.fds:
            self.pop()

    def __enter__(self) -> _Walk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.reset()


@dataclass(frozen=True)
class _Final:
    """The last component of a resolved path, not (yet) opened for reading."""

    name: str
    st: os.stat_result


class DirHandle:
    """A directory held open (O_RDONLY descriptor) for reading and atomically replacing files in it."""

    def __init__(self, fd: int, path: str, chain: tuple[FileInfo, ...], owners: frozenset[int]) -> None:
        self.fd = fd
        self.path = path  # real path inside the root
        self.chain = chain  # directories from "/" down to and including this one
        self.owners = owners  # uids allowed to own files written here (root and the user)

    @property
    def info(self) -> FileInfo:
        return self.chain[-1]

    def child(self, name: str) -> str:
        return self.path.rstrip("/") + "/" + name

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> DirHandle:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DirHandle({self.path!r}, fd={self.fd})"


BeforeRename = Callable[[DirHandle, str], None]


class HostFS:
    """Safe access to files under ``root``. Paths are absolute paths inside the root."""

    def __init__(
        self, root: str = "/", *, max_bytes: int = 1 << 20, before_rename: BeforeRename | None = None
    ) -> None:
        """``before_rename`` is a test hook run by atomic_replace between its checks and the rename."""
        self.root = root
        self.max_bytes = max_bytes
        self._before_rename = before_rename
        # The root itself is configuration, not user input: following links to it is fine.
        self._root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._root_real = os.path.realpath(root)
        self._mounts: _MountTable | None = None

    # -- lifetime --

    def close(self) -> None:
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    def __enter__(self) -> HostFS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def refresh_mounts(self) -> None:
        """Forget the cached mount table (call after mounts change)."""
        self._mounts = None

    def _info(self, path: str, st: os.stat_result) -> FileInfo:
        # Called for every directory of every walk: the device lookup almost always answers, so
        # the host path is only built for the fallback, and the frozen dataclass's per-field
        # __setattr__ init is bypassed (same fields, same type).
        if self._mounts is None:
            self._mounts = _load_mount_table()
        fstype = self._mounts.fstype_by_dev(st.st_dev)
        if fstype is None:
            host_path = os.path.join(self._root_real, path.lstrip("/")).rstrip("/") or "/"
            fstype = self._mounts.fstype_by_path(host_path)
        info = _new_object(FileInfo)
        _set_attr(
            info,
            "__dict__",
            {
                "path": path,
                "uid": st.st_uid,
                "gid": st.st_gid,
                "mode": st.st_mode,
                "size": st.st_size,
                "mtime": st.st_mtime,
                "dev": st.st_dev,
                "ino": st.st_ino,
                "nlink": st.st_nlink,
                "fstype": fstype,
            },
        )
        return info

    # -- resolution --

    def _resolve(self, path: str, *, follow_final: bool, confine: str | None) -> tuple[_Walk, _Final | None]:
        """Walk ``path`` inside the root. Returns the walk at the parent and the final component,
        or the walk at the target itself (final None) when the target is a directory.
        The caller owns (and must close) the walk.

        ``confine`` only matters once a symlink is met (a walk without links cannot leave it), so
        it is resolved then, not up front: most reads meet no link and save a whole second walk."""
        pending: list[str | _Check] = list(reversed(_components(path)))
        real_left = len(pending)  # how many path components (not markers) are still queued
        links = 0
        confine_names: tuple[str, ...] | None = None
        walk = _Walk(self)
        try:
            while pending:
                item = pending.pop()
                if isinstance(item, _Check):
                    self._check_confined(walk.names, confine_names, path)
                    continue
                real_left -= 1
                if item == "..":
                    walk.pop()
                    continue
                if item in ("", "."):
                    continue
                last = real_left == 0
                fd = self._open_component(walk, item, path)
                st = os.fstat(fd)
                if stat.S_ISLNK(st.st_mode) and (follow_final or not last):
                    os.close(fd)
                    links += 1
                    if links > MAX_SYMLINKS:
                        raise UnsafePath("too many symlinks", path)
                    target = self._readlink(walk, item, path)
                    if confine is not None and confine_names is None:
                        confine_names = self._confine_names(confine)
                    if confine_names is not None and _within(walk.names, confine_names):
                        pending.append(_CHECK)
                    parts = target.split("/")
                    pending.extend(reversed(parts))
                    real_left += len(parts)
                    if target.startswith("/"):
                        walk.reset()  # an absolute target is re-rooted at the root
                    continue
                if stat.S_ISDIR(st.st_mode):
                    walk.push(fd, item, st)
                    if last:
                        break
                    continue
                if not last:
                    os.close(fd)
                    raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
                os.close(fd)
                if any(isinstance(p, _Check) for p in pending):
                    self._check_confined(walk.names, confine_names, path)
                return walk, _Final(item, st)
            if any(isinstance(p, _Check) for p in pending):
                self._check_confined(walk.names, confine_names, path)
            return walk, None
        except BaseException:
            walk.reset()
            raise

    @staticmethod
    def _check_confined(names: list[str], confine: tuple[str, ...] | None, path: str) -> None:
        if confine is not None and not _within(names, confine):
            raise UnsafePath(f"symlink leaves {_join(confine)}", path)

    @staticmethod
    def _open_component(walk: _Walk, name: str, path: str) -> int:
        try:
            return os.open(name, _PROBE, dir_fd=walk.fd)
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path) from None

    @staticmethod
    def _readlink(walk: _Walk, name: str, path: str) -> str:
        try:
            target = os.readlink(name, dir_fd=walk.fd)
        except OSError as exc:
            # EINVAL: it stopped being a symlink between the open and here.
            raise UnsafePath("changed during the walk", path) from exc
        if not target:
            raise FileNotFoundError(errno.ENOENT, "empty symlink", path)
        return target

    def _confine_names(self, confine: str) -> tuple[str, ...]:
        walk, final = self._resolve(confine, follow_final=True, confine=None)
        with walk:
            if final is not None:
                raise UnsafePath("confine directory is not a directory", confine)
            return tuple(walk.names)

    def _read_final(
        self, dir_fd: int, name: str, probe: os.stat_result, realpath: str, path: str, max_bytes: int
    ) -> tuple[bytes, FileInfo, bool]:
        # The probe came from an O_PATH descriptor: refuse before opening, so a FIFO never blocks
        # and a device is never opened.
        if not stat.S_ISREG(probe.st_mode):
            raise UnsafePath(_kind(probe.st_mode), path)
        try:
            fd = os.open(name, _READ, dir_fd=dir_fd)
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafePath("changed during the walk", path) from None
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise UnsafePath(_kind(st.st_mode), path)
            if (st.st_dev, st.st_ino) != (probe.st_dev, probe.st_ino):
                raise UnsafePath("changed during the walk", path)
            data = _read_fd(fd, max_bytes + 1)
        finally:
            os.close(fd)
        truncated = len(data) > max_bytes
        return data[:max_bytes], self._info(realpath, st), truncated

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
            data, info, truncated = self._read_final(walk.fd, final.name, final.st, realpath, path, limit)
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
        for comp in _components(pattern):
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
        conf_parts = _components(confine)
        parts = _components(path)
        if ".." in parts or ".." in conf_parts:
            raise UnsafePath("'..' is not allowed on the write path", path)
        if parts[: len(conf_parts)] != conf_parts:
            raise UnsafePath(f"outside {confine}", path)
        rest = parts[len(conf_parts) :]
        walk, final = self._resolve(confine, follow_final=True, confine=None)
        with walk:
            if final is not None:
                raise UnsafePath("home is not a directory", confine)
            uid = (
                user_uid if user_uid is not None else create.uid if create is not None else walk.infos[-1].uid
            )
            owners = frozenset({0, uid})
            self._check_dir(walk.infos[-1], owners, confine)
            for index, name in enumerate(rest):
                last = index == len(rest) - 1
                try:
                    fd = os.open(name, _DIR_PROBE, dir_fd=walk.fd)
                except FileNotFoundError:
                    if not (last and create is not None):
                        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path) from None
                    fd = self._make_dir(walk.fd, name, create, path)
                except NotADirectoryError:
                    raise UnsafePath(self._not_dir_reason(walk.fd, name), path) from None
                st = os.fstat(fd)
                walk.push(fd, name, st)
                self._check_dir(walk.infos[-1], owners, path)
            dir_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=walk.fd)
            return DirHandle(dir_fd, walk.path, tuple(walk.infos), owners)

    @staticmethod
    def _not_dir_reason(dir_fd: int, name: str) -> str:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return "changed during the walk"
        if stat.S_ISLNK(st.st_mode):
            return "symlink on the write path"
        return "is not a directory" if stat.S_ISREG(st.st_mode) else _kind(st.st_mode)

    @staticmethod
    def _check_dir(info: FileInfo, owners: frozenset[int], path: str) -> None:
        if info.uid not in owners:
            raise UnsafePath(f"directory {info.path} has a bad owner", path)
        if info.mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise UnsafePath(f"directory {info.path} is group- or other-writable", path)

    @staticmethod
    def _make_dir(parent_fd: int, name: str, create: CreateSpec, path: str) -> int:
        """mkdirat, then set owner and mode on the new directory's own descriptor. Returns an O_PATH fd."""
        try:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            pass  # lost a race: whatever is there now is checked like any existing directory
        else:
            try:
                fd = os.open(name, _DIR_READ, dir_fd=parent_fd)
            except (NotADirectoryError, OSError) as exc:
                raise UnsafePath("created directory was replaced", path) from exc
            try:
                st = os.fstat(fd)
                if (st.st_uid, st.st_gid) != (create.uid, create.gid):
                    os.fchown(fd, create.uid, create.gid)
                os.fchmod(fd, create.mode)
            finally:
                os.close(fd)
        try:
            return os.open(name, _DIR_PROBE, dir_fd=parent_fd)
        except NotADirectoryError:
            raise UnsafePath("created directory was replaced", path) from None

    @staticmethod
    def _probe_target(dirh: DirHandle, name: str) -> os.stat_result | None:
        """lstat of ``name`` in the held directory; refuses anything an atomic write must not touch."""
        path = dirh.child(name)
        try:
            fd = os.open(name, _PROBE, dir_fd=dirh.fd)
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(_kind(st.st_mode), path)
        if st.st_nlink > 1:
            raise UnsafePath(f"has {st.st_nlink} hard links", path)
        return st

    def read_at(self, dirh: DirHandle, name: str) -> ReadResult | None:
        """Read ``name`` in a held directory without following links; None when absent.
        Refuses non-regular files and hard-linked files."""
        _check_name(name)
        probe = self._probe_target(dirh, name)
        if probe is None:
            return None
        realpath = dirh.child(name)
        data, info, truncated = self._read_final(dirh.fd, name, probe, realpath, realpath, self.max_bytes)
        if info.nlink > 1:
            raise UnsafePath(f"has {info.nlink} hard links", realpath)
        return ReadResult(data, info, realpath, dirh.chain, truncated)

    @staticmethod
    def _check_expected(current: os.stat_result | None, expect: FileInfo | None, path: str) -> None:
        if expect is None:
            return
        if current is None or (current.st_dev, current.st_ino, current.st_size, current.st_mtime) != (
            expect.dev,
            expect.ino,
            expect.size,
            expect.mtime,
        ):
            raise UnsafePath("changed since read", path)

    @staticmethod
    def _selinux_label(dirh: DirHandle, name: str, probe: os.stat_result) -> bytes | None:
        # fgetxattr needs a real (not O_PATH) descriptor; the probe already proved a regular file.
        fd = os.open(name, _READ, dir_fd=dirh.fd)
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != (probe.st_dev, probe.st_ino):
                raise UnsafePath("changed during the write", dirh.child(name))
            return os.getxattr(fd, SELINUX_XATTR)
        except OSError as exc:
            if exc.errno in _XATTR_ABSENT:
                return None
            raise
        finally:
            os.close(fd)

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
        selinux: bool = True,
    ) -> FileInfo:
        """Atomically replace (or create) ``name`` in the held directory with ``data``.

        ``expect``: the FileInfo from the read this write is based on; the write is refused
        ("changed since read") when dev/ino/size/mtime differ or the file is gone. The temp file
        is owned by uid:gid with ``mode`` before any byte is written, the SELinux label of the
        old file is copied, and the temp file is removed on any failure."""
        _check_name(name)
        path = dirh.child(name)
        current = self._probe_target(dirh, name)
        self._check_expected(current, expect, path)
        label = self._selinux_label(dirh, name, current) if (selinux and current is not None) else None

        tmp = f".{name}.sshklm-{secrets.token_hex(8)}.tmp"
        tfd = os.open(tmp, _TEMP_CREATE, 0o600, dir_fd=dirh.fd)
        renamed = False
        try:
            st = os.fstat(tfd)
            if (st.st_uid, st.st_gid) != (uid, gid):
                os.fchown(tfd, uid, gid)
            os.fchmod(tfd, mode)
            _write_all(tfd, data)
            os.fsync(tfd)
            if label is not None:
                try:
                    os.setxattr(tfd, SELINUX_XATTR, label)
                except OSError as exc:
                    if exc.errno not in _XATTR_UNSUPPORTED:
                        raise
            if self._before_rename is not None:
                self._before_rename(dirh, name)
            # Re-check right before the rename to keep the window for a swap as small as possible.
            self._check_expected(self._probe_target(dirh, name), expect, path)
            os.rename(tmp, name, src_dir_fd=dirh.fd, dst_dir_fd=dirh.fd)
            renamed = True
            os.fsync(dirh.fd)
            return self._info(path, os.fstat(tfd))
        except BaseException:
            if not renamed:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dirh.fd)
            raise
        finally:
            _close_quietly(tfd)


# -- reading several files of one directory ----------------------------------------------------


class FileReads(Protocol):
    """The read side discovery needs: ``HostFS`` itself, or ``DirReads`` over it."""

    def read(self, path: str, *, confine: str | None = None) -> ReadResult: ...

    def listdir(self, path: str, *, confine: str | None = None) -> list[str]: ...


class ReadDir:
    """A directory held open for reading (see ``HostFS.open_read_dir``).

    ``read(name)`` gives exactly what ``fs.read(path + "/" + name, confine=confine)`` gives: the
    held walk is the one that read would make to the parent; the final name is probed with
    O_PATH|O_NOFOLLOW and fstat, non-regular files are refused before opening, and a final
    symlink is handed to the full ``read`` (so it is resolved and confined the usual way)."""

    def __init__(self, fs: HostFS, walk: _Walk, path: str, confine: str | None) -> None:
        self._fs = fs
        self._walk = walk
        self.path = path  # as asked for
        self.confine = confine
        self.realpath = walk.path  # resolved path inside the root
        self.chain = tuple(walk.infos)  # directories from "/" down to and including this one

    def _lexical(self, name: str) -> str:
        return self.path.rstrip("/") + "/" + name

    def read(self, name: str, *, max_bytes: int | None = None) -> ReadResult:
        _check_name(name)
        path = self._lexical(name)
        try:
            probe_fd = os.open(name, _PROBE, dir_fd=self._walk.fd)
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path) from None
        try:
            probe = os.fstat(probe_fd)
        finally:
            os.close(probe_fd)
        if stat.S_ISLNK(probe.st_mode):
            return self._fs.read(path, confine=self.confine, max_bytes=max_bytes)
        if stat.S_ISDIR(probe.st_mode):
            raise UnsafePath("is a directory", path)
        limit = self._fs.max_bytes if max_bytes is None else max_bytes
        realpath = self._walk.child(name)
        data, info, truncated = self._fs._read_final(self._walk.fd, name, probe, realpath, path, limit)
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

    def __init__(self, fs: HostFS) -> None:
        self._fs = fs
        self._key: tuple[str, str | None] | None = None
        self._dir: ReadDir | None = None
        self._error: OSError | UnsafePath | None = None

    def read(self, path: str, *, confine: str | None = None) -> ReadResult:
        parent, name = _split_simple(path)
        if name is None:
            return self._fs.read(path, confine=confine)
        try:
            directory = self._open(parent, confine)
        except UnsafePath as exc:
            raise UnsafePath(exc.reason, path) from None
        except OSError as exc:  # OSError() picks the subclass (FileNotFoundError, ...) from errno
            raise OSError(exc.errno, exc.strerror, path) from None
        return directory.read(name)

    def listdir(self, path: str, *, confine: str | None = None) -> list[str]:
        return self._open(path, confine).listdir()

    def _open(self, path: str, confine: str | None) -> ReadDir:
        key = (path, confine)
        if self._key == key:
            if self._dir is not None:
                return self._dir
            assert self._error is not None
            raise self._error
        # A confined walk that succeeded is also the unconfined walk (confine only adds checks).
        if confine is None and self._dir is not None and self._dir.path == path:
            return self._dir
        self.close()
        self._key = key
        try:
            self._dir = self._fs.open_read_dir(path, confine=confine)
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
