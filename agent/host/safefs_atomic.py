"""THE atomic-write primitive of the safe file layer: ``replace_file_at``, and what it needs.

Part of the safe file layer (see ``agent/host/safefs.py``). Every file the agent writes — users'
authorized keys files (``safefs_write``), the agent's own private files (``safefs_private``), root's
files for sshd — is written by ``replace_file_at`` in a directory held by descriptor.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import sys
from collections.abc import Callable
from typing import Final

from agent.host.safefs_walk import check_name

SELINUX_XATTR: Final = "security.selinux"
_TEMP_CREATE: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
# Inode flags (chattr): an append-only or immutable directory lets no entry be renamed or
# removed, an append-only or immutable file cannot be replaced. <linux/fs.h>
FS_IOC_GETFLAGS: Final = 0x80086601
FS_IMMUTABLE_FL: Final = 0x00000010
FS_APPEND_FL: Final = 0x00000020
_XATTR_UNSUPPORTED: Final = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP})


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a write may be short)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


class TempFileLeft(OSError):
    """The write failed and its temp file could not be removed either (e.g. the directory turned
    append-only under it): the message names the file, so the operator can remove it."""


def inode_flags(fd: int) -> int:
    """The chattr flags of an open (not O_PATH) descriptor; 0 where the filesystem has none."""
    try:
        answer = fcntl.ioctl(fd, FS_IOC_GETFLAGS, b"\0\0\0\0")
    except OSError:
        return 0  # ENOTTY / EOPNOTSUPP: no inode flags here
    return int.from_bytes(answer, sys.byteorder)


def refuse_unreplaceable(fd: int, what: str, path: str, *, doing: str = "replaced atomically") -> None:
    """An append-only or immutable directory or file cannot take an atomic replace (a rename) or
    a removal: say so before anything is created."""
    flags = inode_flags(fd)
    for flag, word in ((FS_IMMUTABLE_FL, "immutable"), (FS_APPEND_FL, "append-only")):
        if flags & flag:
            raise PermissionError(
                errno.EPERM, f"{what} is {word} (chattr +{word[0]}): nothing can be {doing}", path
            )


# -- the atomic-write primitive --------------------------------------------------------------------


def replace_file_at(
    dir_fd: int,
    name: str,
    data: bytes,
    *,
    mode: int,
    owner: tuple[int, int] | None = None,
    label: bytes | None = None,
    before_rename: Callable[[], None] | None = None,
    shown_dir: str | None = None,
) -> os.stat_result:
    """Atomically replace (or create) ``name`` in the directory held by ``dir_fd`` with ``data``.

    The temp file ``.<name>.sshklm-<random>.tmp`` is created O_EXCL|O_NOFOLLOW (0600) in that
    directory; ``owner`` (uid, gid; None: the caller's) and ``mode`` are set on its descriptor
    before any byte is written; then every byte, fsync, the SELinux ``label`` (when given and the
    filesystem has labels), ``before_rename()`` (the caller's last checks; raising aborts), the
    rename over ``name`` within the same directory, and an fsync of the directory. On any failure
    the temp file is removed and ``name`` is untouched — or, when even that fails, ``TempFileLeft``
    names it (``shown_dir``: the directory's path for messages). Returns the new file's stat."""
    check_name(name)
    where = (shown_dir.rstrip("/") + "/") if shown_dir else ""
    refuse_unreplaceable(dir_fd, "its directory", where + name)
    tmp = f".{name}.sshklm-{secrets.token_hex(8)}.tmp"
    tfd = os.open(tmp, _TEMP_CREATE, 0o600, dir_fd=dir_fd)
    renamed = False
    try:
        if owner is not None:
            st = os.fstat(tfd)
            if (st.st_uid, st.st_gid) != owner:
                os.fchown(tfd, *owner)
        os.fchmod(tfd, mode)
        write_all(tfd, data)
        os.fsync(tfd)
        if label is not None:
            try:
                os.setxattr(tfd, SELINUX_XATTR, label)
            except OSError as exc:
                if exc.errno not in _XATTR_UNSUPPORTED:
                    raise
        if before_rename is not None:
            before_rename()
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        renamed = True
        os.fsync(dir_fd)
        return os.fstat(tfd)
    except BaseException as exc:
        if not renamed:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except FileNotFoundError:
                pass
            except OSError as cleanup:
                if not isinstance(exc, Exception):
                    raise
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                raise TempFileLeft(
                    exc.errno if isinstance(exc, OSError) and exc.errno else cleanup.errno,
                    f"{why or type(exc).__name__}; the temp file {where}{tmp} could not be removed "
                    f"({cleanup.strerror}): remove it by hand",
                    where + name,
                ) from exc
        raise
    finally:
        close_quietly(tfd)
