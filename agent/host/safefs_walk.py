"""The safe file layer's walk: resolving a path inside the root one descriptor at a time.

Part of the safe file layer (see ``agent/host/safefs.py`` for the whole design). Every read and
every write starts here: the root is opened once as a directory descriptor and a path is walked
one component at a time with ``openat(O_PATH|O_NOFOLLOW)`` relative to the previous directory.
Types, owners and sizes come from ``fstat`` of the descriptor actually used, and every decision
about a component is taken on the descriptor of the directory that holds it, so swapping a
component after it was checked cannot redirect the walk.

Symlinks are resolved by hand inside the root (an absolute target restarts at the root, ``..``
never climbs above it, at most ``MAX_SYMLINKS`` links, at most ``MAX_DEPTH`` directories held),
and only where the trust rules allow. Whoever controls a directory controls where its entries
lead: a directory is **root's** when it is owned by root (or by the uid the agent runs as) and
not writable by group or others; any other directory is controlled by its owner (and by
everyone, when group- or other-writable). The rules (docs/rotation.md, "Trust rules"):

* Outside the account's home a symlink is followed only when it sits in a directory of root's
  (root's layout: ``/home -> /data/home``, ``/home/alice -> /data/alice``). A link in a directory
  the user (or anybody else but root) controls is refused: the user steers nothing above her home.
* Inside the home (its real path), a link must resolve inside the home again, and sit in a
  directory of root's or of the account itself (when the account owns its home). Writes follow
  no link inside the home at all.
* Without an account (``confine`` None: sshd_config, the user database, host keys) only root's
  links are followed.

The home itself is resolved by the same rules, lazily (only when a link is met, or for a
write), so a home reached through a link the user controls is no home at all.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from agent.host.mounts import Mount, parse_mountinfo

MAX_SYMLINKS: Final = 40  # links followed in one resolution (the kernel's MAXSYMLINKS)
# Directories held open by one walk (one descriptor each): a hostile 1,500-deep tree must not
# exhaust the process's descriptors. Real paths are a handful deep (/home/alice/.ssh: 3).
MAX_DEPTH: Final = 40
GROUP_OTHER_WRITE: Final = stat.S_IWGRP | stat.S_IWOTH

# O_PATH descriptors can serve as dir_fd and be fstat'ed without granting read access and
# without the side effects of opening a device or FIFO.
PROBE: Final = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
DIR_PROBE: Final = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC


class UnsafePath(Exception):
    """A path refused on safety grounds. ``str()`` is ``"path: reason"``, never file content."""

    def __init__(self, reason: str, path: str) -> None:
        super().__init__(reason, path)
        self.reason = reason
        self.path = path

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def failure_reason(exc: BaseException) -> str:
    """Why a read failed, for a report that names the path separately: UnsafePath's reason, the
    OS error's text, else the exception's type. Never file content."""
    if isinstance(exc, UnsafePath):
        return exc.reason
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


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


# -- mount table (filesystem type) -------------------------------------------------------------


class MountTable:
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


def load_mount_table() -> MountTable:
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            return MountTable(parse_mountinfo(fh.read()))
    except OSError:
        return MountTable(())


# -- path helpers ------------------------------------------------------------------------------


def components(path: str) -> list[str]:
    if not path.startswith("/"):
        raise ValueError("path must be absolute (inside the root)")
    return [c for c in path.split("/") if c not in ("", ".")]


def join(names: Iterable[str]) -> str:
    return "/" + "/".join(names)


def check_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ValueError("a single path component is required")


def kind(mode: int) -> str:
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


def within(names: list[str] | tuple[str, ...], confine: tuple[str, ...]) -> bool:
    return len(names) >= len(confine) and tuple(names[: len(confine)]) == confine


class _Check:
    """Marker queued after a symlink's target: once consumed, the walk must be inside confine."""


_CHECK: Final = _Check()


def group_or_other_writable(info: FileInfo) -> bool:
    return bool(info.mode & GROUP_OTHER_WRITE)


def controller(info: FileInfo) -> str:
    """Who controls the entries of a directory, for a refusal's reason (never content)."""
    if info.mode & stat.S_IWOTH:
        return "writable by others"
    if info.mode & stat.S_IWGRP:
        return "writable by its group"
    return f"owned by uid {info.uid}"


@dataclass(frozen=True, slots=True)
class Home:
    """An account's home as a walk resolved it: its real path (names) and owner."""

    names: tuple[str, ...]
    uid: int


class Scope:
    """Whose path one resolution walks, and for what.

    ``home``: the account's home (``confine``; None for root's own files: only root's links are
    followed); ``uid``: the account (None: whoever owns the home, for homes without an account);
    ``writing``: the walk leads to a write (no link inside the home is followed at all).
    The resolved home is computed at most once per scope, on first need."""

    __slots__ = ("_home", "_resolved", "home", "trusted", "uid", "writing")

    def __init__(self, home: str | None, uid: int | None, trusted: frozenset[int], *, writing: bool) -> None:
        self.home = home
        self.uid = uid
        self.writing = writing
        # The account's own uid is never root's, even when the agent runs as that uid (tests).
        self.trusted = trusted - {uid} if uid not in (None, 0) else trusted
        self._resolved = False
        self._home: Home | None = None

    def is_roots(self, info: FileInfo) -> bool:
        """Is this directory root's (its entries say where root wants them to lead)?"""
        return info.uid in self.trusted and not info.mode & GROUP_OTHER_WRITE

    def resolved_home(self, fs: Resolver) -> Home | None:
        """The home's real path and owner; None when there is no home, it is missing, or it cannot
        be reached by the rules (then nothing is inside it)."""
        if not self._resolved:
            self._resolved = True
            if self.home is not None:
                self._home = fs.resolve_home(self.home, self.uid)
        return self._home

    def user_owns(self, home: Home) -> bool:
        return self.uid is None or home.uid == self.uid


_new_object = object.__new__
_set_attr = object.__setattr__


# -- the walk ----------------------------------------------------------------------------------


class Walk:
    """A stack of open O_PATH directory descriptors from the root down to the current directory."""

    def __init__(self, fs: Resolver) -> None:
        self._fs = fs
        self.fds: list[int] = []
        self.names: list[str] = []
        self.infos: list[FileInfo] = [fs._info("/", os.fstat(fs._root_fd))]

    @property
    def fd(self) -> int:
        return self.fds[-1] if self.fds else self._fs._root_fd

    @property
    def path(self) -> str:
        return join(self.names)

    def child(self, name: str) -> str:
        return join([*self.names, name])

    def push(self, fd: int, name: str, st: os.stat_result) -> None:
        if len(self.fds) >= MAX_DEPTH:
            os.close(fd)
            raise UnsafePath(f"deeper than {MAX_DEPTH} directories", join([*self.names, name]))
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

    def __enter__(self) -> Walk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.reset()


@dataclass(frozen=True)
class FinalName:
    """The last component of a resolved path, not (yet) opened for reading."""

    name: str
    st: os.stat_result


class Resolver:
    """The root held open, the mount table, and the walk. ``HostFS`` builds reading and writing on it."""

    def __init__(self, root: str) -> None:
        self.root = root
        # The root itself is configuration, not user input: following links to it is fine.
        self._root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._root_real = os.path.realpath(root)
        self._mounts: MountTable | None = None
        # Owners whose directories are root's: root, and the uid the agent runs as (an
        # unprivileged `scan --root` of one's own tree trusts oneself).
        self._trusted: frozenset[int] = frozenset({0, os.geteuid()})

    def close(self) -> None:
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    def refresh_mounts(self) -> None:
        """Forget the cached mount table (call after mounts change)."""
        self._mounts = None

    def scope(self, confine: str | None, uid: int | None = None, *, writing: bool = False) -> Scope:
        return Scope(confine, uid, self._trusted, writing=writing)

    def _info(self, path: str, st: os.stat_result) -> FileInfo:
        # Called for every directory of every walk: the device lookup almost always answers, so
        # the host path is only built for the fallback, and the frozen dataclass's per-field
        # __setattr__ init is bypassed (same fields, same type).
        if self._mounts is None:
            self._mounts = load_mount_table()
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

    def resolve_home(self, home: str, uid: int | None) -> Home | None:
        """Resolve an account's home by the rules for root's own paths (no link the account
        controls is followed on the way to it). None when it is missing, not a directory, or
        reached only through a link the rules refuse."""
        try:
            walk, final = self._resolve(home, follow_final=True, scope=self.scope(None, uid))
        except (UnsafePath, OSError):
            return None
        with walk:
            if final is not None:
                return None
            return Home(tuple(walk.names), walk.infos[-1].uid)

    def _resolve(self, path: str, *, follow_final: bool, scope: Scope) -> tuple[Walk, FinalName | None]:
        """Walk ``path`` inside the root. Returns the walk at the parent and the final component,
        or the walk at the target itself (final None) when the target is a directory.
        The caller owns (and must close) the walk.

        Links are followed as ``scope`` allows (the module docstring). The home is only
        resolved once a link is met (a walk without links needs no home for reading)."""
        pending: list[str | _Check] = list(reversed(components(path)))
        real_left = len(pending)  # how many path components (not markers) are still queued
        links = 0
        home_names: tuple[str, ...] | None = None
        walk = Walk(self)
        try:
            while pending:
                item = pending.pop()
                if isinstance(item, _Check):
                    self._check_confined(walk.names, home_names, path)
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
                    inside = self._may_follow(walk, scope, path)
                    target = self._readlink(walk, item, path)
                    if inside is not None:
                        home_names = inside
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
                    self._check_confined(walk.names, home_names, path)
                return walk, FinalName(item, st)
            if any(isinstance(p, _Check) for p in pending):
                self._check_confined(walk.names, home_names, path)
            return walk, None
        except BaseException:
            walk.reset()
            raise

    def _may_follow(self, walk: Walk, scope: Scope, path: str) -> tuple[str, ...] | None:
        """May the walk follow a link found in its current directory? Raises UnsafePath when not.
        Returns the home's names when the link is inside the home (its target must resolve
        inside the home again), None when it is root's link outside the home."""
        directory = walk.infos[-1]
        roots = scope.is_roots(directory)
        home = scope.resolved_home(self) if scope.home is not None else None
        if home is not None and within(walk.names, home.names):
            if scope.writing:
                raise UnsafePath("symlink on the write path", path)
            theirs = (
                scope.user_owns(home) and directory.uid == home.uid and not group_or_other_writable(directory)
            )
            if not (roots or theirs):
                raise UnsafePath(f"symlink in {directory.path}, {controller(directory)}", path)
            return home.names
        if roots:
            return None
        if scope.writing:
            raise UnsafePath(f"symlink on the write path: {directory.path} is {controller(directory)}", path)
        raise UnsafePath(f"symlink in {directory.path}, {controller(directory)}", path)

    @staticmethod
    def _check_confined(names: list[str], confine: tuple[str, ...] | None, path: str) -> None:
        if confine is not None and not within(names, confine):
            raise UnsafePath(f"symlink leaves {join(confine)}", path)

    @staticmethod
    def _open_component(walk: Walk, name: str, path: str) -> int:
        try:
            return os.open(name, PROBE, dir_fd=walk.fd)
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path) from None

    @staticmethod
    def _readlink(walk: Walk, name: str, path: str) -> str:
        try:
            target = os.readlink(name, dir_fd=walk.fd)
        except OSError as exc:
            # EINVAL: it stopped being a symlink between the open and here.
            raise UnsafePath("changed during the walk", path) from exc
        if not target:
            raise FileNotFoundError(errno.ENOENT, "empty symlink", path)
        return target
