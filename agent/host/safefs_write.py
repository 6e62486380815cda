"""The safe file layer's writes: THE atomic-write primitive, users' directories, the agent's own.

Part of the safe file layer (see ``agent/host/safefs.py``). Every file the agent writes goes
through ``replace_file_at``: a temp file created O_CREAT|O_EXCL|O_NOFOLLOW in a directory held by
descriptor, owner and mode set on its descriptor before any byte, all bytes written and fsynced,
the caller's last checks, a rename within that directory, an fsync of the directory. It serves:

* users' authorized keys files (``atomic_replace``: in a directory opened by ``open_dir``, which
  walks from the root by the trust rules of ``safefs_walk`` — only root's links, none inside the
  home — and checks every directory from ``/`` down like StrictModes and stricter; guarded by
  the stat of the read the new bytes are based on; the SELinux label kept). Nothing the agent
  creates for a user is the user's outside that user's own home (see ``open_dir``);
* the agent's own files in its private directories (``write_private_file``: credentials,
  rotation backups), whose directory ``open_private_dir`` creates 0700 and refuses when it is a
  symlink or owned by another uid.

The primitive itself is ``safefs_atomic.py``; the private directories ``safefs_private.py``. This
module holds users' directories: ``open_dir``'s walk and rules, ``atomic_replace``, ``remove_at``.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Final

from agent.host.safefs_atomic import (
    SELINUX_XATTR,
    refuse_unreplaceable,
    replace_file_at,
)
from agent.host.safefs_read import READ, ReadResult, read_final
from agent.host.safefs_walk import (
    DIR_PROBE,
    PROBE,
    FileInfo,
    Home,
    Resolver,
    Scope,
    UnsafePath,
    Walk,
    check_name,
    components,
    group_or_other_writable,
    join,
    kind,
    within,
)

CHANGED_SINCE_READ: Final = "changed since read"  # the reason a write guarded by `expect` is refused

_DIR_READ: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_XATTR_ABSENT: Final = frozenset({errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP})


# A directory open_dir creates where the user may not own it (outside the user's home, or in a
# directory of root's): root's, and readable by everybody, because sshd reads authorized keys
# files with the user's privileges (temporarily_use_uid in auth2-pubkey.c).
ROOT_DIR_MODE: Final = 0o755


@dataclass(frozen=True)
class CreateSpec:
    """Owner and mode of a directory that open_dir may create *when the user may own it* (in a
    directory the user owns inside the user's home); elsewhere it is root's, ``ROOT_DIR_MODE``."""

    uid: int
    gid: int
    mode: int = 0o700


class DirHandle:
    """A directory held open (O_RDONLY descriptor) for reading and atomically replacing files in it.

    ``home``: the real path of the account's home when this directory is at or below it, else
    None. ``user_may_own``: new files here may be the user's (the directory is the user's own,
    inside the user's home); otherwise a new file must be root's."""

    def __init__(
        self,
        fd: int,
        path: str,
        chain: tuple[FileInfo, ...],
        owners: frozenset[int],
        *,
        home: str | None = None,
        user_may_own: bool = False,
    ) -> None:
        self.fd = fd
        self.path = path  # real path inside the root
        self.chain = chain  # directories from "/" down to and including this one
        self.owners = owners  # uids allowed to own files written here (root and the user)
        self.home = home
        self.user_may_own = user_may_own

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


# -- users' directories ----------------------------------------------------------------------------


def _not_dir_reason(dir_fd: int, name: str) -> str:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return "changed during the walk"
    return _not_dir_reason_info(st)


def _not_dir_reason_info(st: os.stat_result) -> str:
    if stat.S_ISLNK(st.st_mode):
        return "symlink on the write path"
    return "is not a directory" if stat.S_ISREG(st.st_mode) else kind(st.st_mode)


def _check_dir(info: FileInfo, owners: frozenset[int], path: str) -> None:
    if info.uid not in owners:
        raise UnsafePath(f"directory {info.path} has a bad owner (uid {info.uid})", path)
    if group_or_other_writable(info):
        raise UnsafePath(f"directory {info.path} is group- or other-writable", path)


@dataclass(frozen=True)
class _Rules:
    """What every directory on a write path must satisfy (``Writes.open_dir``)."""

    uid: int  # the account
    home: Home | None  # its home, resolved by the rules (None: missing or unreachable)
    owners: frozenset[int]  # root, the account, the agent's own uid

    def check(self, walk: Walk, path: str) -> None:
        """Every directory from the root down: root's or the user's, not group/other-writable;
        when at or below the home, the home is the user's own."""
        for info in walk.infos:
            _check_dir(info, self.owners, path)
        home = _home_of(walk, self.home)
        if home is not None and home.uid != self.uid:
            raise UnsafePath(f"home {home.path} is owned by uid {home.uid}, not by the user", path)


def _home_of(walk: Walk, home: Home | None) -> FileInfo | None:
    """The home's directory in the walk, when the walk is at or below the home."""
    if home is None or not within(walk.names, home.names):
        return None
    return walk.infos[len(home.names)]


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
        return os.open(name, DIR_PROBE, dir_fd=parent_fd)
    except NotADirectoryError:
        raise UnsafePath("created directory was replaced", path) from None


def _probe_target(dirh: DirHandle, name: str) -> os.stat_result | None:
    """lstat of ``name`` in the held directory; refuses anything an atomic write must not touch."""
    path = dirh.child(name)
    try:
        fd = os.open(name, PROBE, dir_fd=dirh.fd)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePath(kind(st.st_mode), path)
    if st.st_nlink > 1:
        raise UnsafePath(f"has {st.st_nlink} hard links", path)
    return st


def _check_new_owner(dirh: DirHandle, uid: int, *, creating: bool, path: str) -> None:
    """A file is owned by root or the directory's user; a new one by the user only where the
    user may own it (``DirHandle.user_may_own``): never outside the user's own home."""
    if uid not in dirh.owners:
        raise UnsafePath(f"a file owned by uid {uid} is not written here", path)
    if creating and uid not in (0, os.geteuid()) and not dirh.user_may_own:
        raise UnsafePath(f"a new file of uid {uid} is created only in that user's own directories", path)


def _check_expected(current: os.stat_result | None, expect: FileInfo | None, path: str) -> None:
    if expect is None:
        return
    if current is None or (current.st_dev, current.st_ino, current.st_size, current.st_mtime) != (
        expect.dev,
        expect.ino,
        expect.size,
        expect.mtime,
    ):
        raise UnsafePath(CHANGED_SINCE_READ, path)


def _selinux_label(dirh: DirHandle, name: str, probe: os.stat_result) -> bytes | None:
    """The file's SELinux label (None when it has none); refuses a file that cannot be replaced
    (append-only or immutable) before the write starts."""
    # fgetxattr needs a real (not O_PATH) descriptor; the probe already proved a regular file.
    fd = os.open(name, READ, dir_fd=dirh.fd)
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (probe.st_dev, probe.st_ino):
            raise UnsafePath("changed during the write", dirh.child(name))
        refuse_unreplaceable(fd, "the file", dirh.child(name))
        return os.getxattr(fd, SELINUX_XATTR)
    except OSError as exc:
        if exc.errno in _XATTR_ABSENT:
            return None
        raise
    finally:
        os.close(fd)


class Writes(Resolver):
    """The write API of ``HostFS``: users' directories opened for writing, files replaced in them."""

    max_bytes: int  # the cap of read_at
    _before_rename: BeforeRename | None  # a test hook: run between the last checks and the rename

    def open_dir(
        self, path: str, *, create: CreateSpec | None = None, confine: str, user_uid: int | None = None
    ) -> DirHandle:
        """Open the directory ``path`` for writing files of the account ``user_uid`` whose home is
        ``confine``. ``path`` may be below the home or anywhere else (a central AuthorizedKeysFile
        such as /etc/ssh/authorized_keys/%u); the rules are the same:

        * the walk starts at the root and follows a symlink only in a directory of root's (root-
          or agent-owned, not group/other-writable) and outside the home: no link the user (or
          anyone but root) controls steers the write, and no link below the home is followed;
        * every directory of the real path, from ``/`` down, is owned by root or the user and not
          group- or other-writable (StrictModes checks only up to the home; a root process
          writing must trust every component);
        * when ``path`` is at or below the home, the home must be the user's own directory
          (for a non-root account a root-owned home such as ``/`` or ``/etc``, or another
          account's, is refused);
        * with ``create``, a missing final directory is created: with ``create``'s owner and mode
          when the user may own it (its parent is the user's, inside the user's home), else
          root's with ``ROOT_DIR_MODE``. Nothing is ever created for the user outside that home.

        The user is ``user_uid``, else ``create.uid``, else the owner of ``confine``."""
        parts = components(path)
        if ".." in parts or ".." in components(confine):
            raise UnsafePath("'..' is not allowed on the write path", path)
        uid = user_uid if user_uid is not None else create.uid if create is not None else None
        scope = self.scope(confine, uid, writing=True)
        home = scope.resolved_home(self)
        if uid is None:
            if home is None:
                raise UnsafePath("home is missing or unsafe", confine)
            uid = home.uid
            scope = self.scope(confine, uid, writing=True)
        owners = frozenset({0, uid, os.geteuid()})
        walk = self._walk_to_dir(join(parts), scope, create, _Rules(uid, home, owners), path)
        with walk:
            home_info = _home_of(walk, home)
            dir_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=walk.fd)
            return DirHandle(
                dir_fd,
                walk.path,
                tuple(walk.infos),
                owners,
                home=home_info.path if home_info is not None else None,
                user_may_own=home_info is not None and walk.infos[-1].uid == uid,
            )

    def _walk_to_dir(
        self, path: str, scope: Scope, create: CreateSpec | None, rules: _Rules, shown: str
    ) -> Walk:
        """The walk to the directory ``path`` (by the scope's rules), every directory checked
        (``_Rules.check``) before anything is created; its last component created when missing
        and ``create`` is given: the user's (``create``) only in a directory of the user's inside
        the user's home, else root's (``ROOT_DIR_MODE``)."""
        parent, name = posixpath.split(path)
        uid, home = rules.uid, rules.home
        walk, final = self._resolve(parent, follow_final=True, scope=scope)
        try:
            if final is not None:
                raise UnsafePath(_not_dir_reason_info(final.st), shown)
            rules.check(walk, shown)
            if not name:
                return walk
            try:
                fd = os.open(name, PROBE, dir_fd=walk.fd)
            except FileNotFoundError:
                if create is None:
                    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), shown) from None
                parent_home = _home_of(walk, home)
                if parent_home is None or parent_home.uid != uid or walk.infos[-1].uid != uid:
                    create = CreateSpec(os.geteuid(), os.getegid(), ROOT_DIR_MODE)
                fd = _make_dir(walk.fd, name, create, shown)
            st = os.fstat(fd)
            if stat.S_ISLNK(st.st_mode):
                os.close(fd)
                self._may_follow(walk, scope, shown)  # raises unless root's link outside the home
                walk.reset()
                walk, final = self._resolve(path, follow_final=True, scope=scope)
                if final is not None:
                    raise UnsafePath(_not_dir_reason_info(final.st), shown)
            elif not stat.S_ISDIR(st.st_mode):
                os.close(fd)
                raise UnsafePath(_not_dir_reason_info(st), shown)
            else:
                walk.push(fd, name, st)
            rules.check(walk, shown)
            return walk
        except BaseException:
            walk.reset()
            raise

    def read_at(self, dirh: DirHandle, name: str) -> ReadResult | None:
        """Read ``name`` in a held directory without following links; None when absent.
        Refuses non-regular files and hard-linked files."""
        check_name(name)
        probe = _probe_target(dirh, name)
        if probe is None:
            return None
        realpath = dirh.child(name)
        data, info, truncated = read_final(self, dirh.fd, name, probe, realpath, realpath, self.max_bytes)
        if info.nlink > 1:
            raise UnsafePath(f"has {info.nlink} hard links", realpath)
        return ReadResult(data, info, realpath, dirh.chain, truncated)

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
        check_name(name)
        path = dirh.child(name)
        current = _probe_target(dirh, name)
        _check_expected(current, expect, path)
        _check_new_owner(dirh, uid, creating=current is None, path=path)
        refuse_unreplaceable(dirh.fd, f"directory {dirh.path}", path)
        label = _selinux_label(dirh, name, current) if current is not None else None

        def last_checks() -> None:
            if self._before_rename is not None:
                self._before_rename(dirh, name)
            # Re-check right before the rename to keep the window for a swap as small as possible.
            _check_expected(_probe_target(dirh, name), expect, path)

        st = replace_file_at(
            dirh.fd,
            name,
            data,
            mode=mode,
            owner=(uid, gid),
            label=label,
            before_rename=last_checks,
            shown_dir=dirh.path,
        )
        return self._info(path, st)

    def remove_at(self, dirh: DirHandle, name: str, *, expect: FileInfo) -> None:
        """Remove ``name`` from the held directory (then fsync it), refused ("changed since read")
        when the file is not the one ``expect`` describes (dev/ino/size/mtime)."""
        check_name(name)
        path = dirh.child(name)
        _check_expected(_probe_target(dirh, name), expect, path)
        refuse_unreplaceable(dirh.fd, f"directory {dirh.path}", path, doing="removed")
        os.unlink(name, dir_fd=dirh.fd)
        os.fsync(dirh.fd)
