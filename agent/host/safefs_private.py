"""The agent's own private directories (state, credentials, backups): created 0700, never a
symlink, never another uid's; files in them written with THE atomic write (``safefs_atomic``).
And files the agent writes for others to read (the metrics text file for node_exporter) in a
directory of ours that no one else may write in (``write_readable_file``).

Part of the safe file layer (see ``agent/host/safefs.py``). Their paths are configuration, not user
input, so they are opened by path (with O_NOFOLLOW), not walked by the trust rules.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from typing import Final

from agent.host.safefs_atomic import replace_file_at
from agent.host.safefs_walk import UnsafePath, check_name

PRIVATE_DIR_MODE: Final = 0o700
_DIR_READ: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_private_dir(path: str) -> int:
    """The agent's own directory ``path`` (configuration, not user input), created 0700 with its
    parents when absent. Refused (UnsafePath) when it is a symlink or not a directory, or owned by
    another uid (we run as root: a directory someone else controls could be swapped under us);
    a looser mode is tightened to 0700. Returns an O_RDONLY directory descriptor to close."""
    try:
        os.makedirs(path, mode=PRIVATE_DIR_MODE, exist_ok=True)
    except FileExistsError:
        raise UnsafePath(_NOT_PLAIN_DIR, path) from None
    fd = _open_plain_dir(path)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise UnsafePath(f"is owned by uid {st.st_uid}, not by us", path)
        if stat.S_IMODE(st.st_mode) != PRIVATE_DIR_MODE:
            os.fchmod(fd, PRIVATE_DIR_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


_NOT_PLAIN_DIR: Final = "is not a plain directory (a symlink, or not a directory)"


def _open_plain_dir(path: str) -> int:
    """An O_RDONLY descriptor of the directory ``path``; UnsafePath when it is a symlink or not a
    directory."""
    try:
        return os.open(path, _DIR_READ)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePath(_NOT_PLAIN_DIR, path) from None
        raise


@contextlib.contextmanager
def _private_dir(directory: str) -> Iterator[int]:
    fd = open_private_dir(directory)
    try:
        yield fd
    finally:
        os.close(fd)


def write_private_file(directory: str, name: str, data: bytes, mode: int) -> None:
    """Atomically replace ``directory/name`` (a private directory, see ``open_private_dir``) with
    ``data``, owned by the agent, at ``mode`` (never wider while being written)."""
    with _private_dir(directory) as fd:
        replace_file_at(fd, name, data, mode=mode)


def read_private_file(directory: str, name: str) -> bytes:
    """The bytes of ``directory/name`` in a private directory; a symlink is refused (ELOOP)."""
    check_name(name)
    with _private_dir(directory) as fd:
        f = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        with os.fdopen(f, "rb") as fh:
            return fh.read()


def remove_private_file(directory: str, name: str) -> None:
    """Remove ``directory/name`` from a private directory (FileNotFoundError when absent)."""
    check_name(name)
    with _private_dir(directory) as fd:
        os.unlink(name, dir_fd=fd)


def readable_dir_problem(st: os.stat_result) -> str | None:
    """Why a directory may not hold a file the agent writes for others to read (its metrics), or
    None: it must be a directory of ours (we run as root: root's) that no one else can write in,
    or its entries could be swapped under us."""
    if not stat.S_ISDIR(st.st_mode):
        return _NOT_PLAIN_DIR
    if st.st_uid != os.geteuid():
        return f"is owned by uid {st.st_uid}, not by us (uid {os.geteuid()}): chown it to root"
    if st.st_mode & 0o022:
        return f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}): chmod go-w it"
    return None


def write_readable_file(directory: str, name: str, data: bytes, mode: int) -> None:
    """Atomically replace ``directory/name`` with ``data`` at ``mode`` (e.g. 0644: others read it).
    The directory is not created (it belongs to the reader, e.g. node_exporter's textfile
    directory) and must pass ``readable_dir_problem`` (UnsafePath otherwise; a symlink is refused)."""
    fd = _open_plain_dir(directory)
    try:
        problem = readable_dir_problem(os.fstat(fd))
        if problem is not None:
            raise UnsafePath(problem, directory)
        replace_file_at(fd, name, data, mode=mode, shown_dir=directory)
    finally:
        os.close(fd)
