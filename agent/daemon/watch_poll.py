"""Polling for the watcher: lstat signatures of what covers a needed dir, and what a change means.

Used where inotify cannot be trusted (network and user-space filesystems) or is not available (the
watch limit): the watcher's poller thread takes a snapshot of each polled dir every
``poll_interval_s`` and reports the targets whose signatures changed. ``take_snapshot`` reads the
filesystem; the rest is pure.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable

from agent.daemon.watch_targets import Targets, below, join_path, parent_of

Signature = tuple[int, ...]
Snapshot = dict[str, Signature | None]  # host path -> signature, None when missing


def file_signature(st: os.stat_result) -> Signature:
    return (
        st.st_mode,
        st.st_uid,
        st.st_gid,
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_ino,
        st.st_dev,
    )


def dir_signature(st: os.stat_result) -> Signature:
    # Without times: a directory's mtime moves with every file created in a home.
    return (st.st_mode, st.st_uid, st.st_gid, st.st_ino, st.st_dev)


def poll_paths(targets: Targets, d: str) -> list[tuple[str, bool]]:
    """(host path, is_dir) pairs whose signatures cover needed dir ``d``: D, parent(D) (StrictModes,
    a replaced symlink) and D's target files."""
    paths = [(d, True)]
    if d != "/":
        paths.append((parent_of(d), True))
    paths.extend(
        (t, False) for t in below(targets.sorted_targets, d) if t in targets.files and parent_of(t) == d
    )
    return paths


def listed_dir(targets: Targets, d: str) -> str | None:
    """``d`` when it is a target dir: its listing is part of its snapshot (new entries are targets)."""
    return d if d in targets.dir_targets else None


def changed_targets(targets: Targets, d: str, before: Snapshot, after: Snapshot) -> set[str]:
    """The targets that two snapshots of needed dir ``d`` say may have changed: all of them when D or
    its parent changed, else the changed paths."""
    changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    if not changed:
        return set()
    if d in changed or parent_of(d) in changed:
        return targets.targets_under(d)
    return changed


def take_snapshot(
    to_real: Callable[[str], str], paths: Iterable[tuple[str, bool]], *, list_dir: str | None
) -> Snapshot:
    """lstat signatures of host paths (None when missing); with ``list_dir``, of its entries too."""
    out: Snapshot = {}
    for path, is_dir in paths:
        out[path] = _signature(to_real(path), is_dir)
    if list_dir is not None:
        try:
            names = os.listdir(to_real(list_dir))
        except OSError:
            names = []
        for name in names:
            path = join_path(list_dir, name)
            out[path] = _signature(to_real(path), False)
    return out


def _signature(real_path: str, is_dir: bool) -> Signature | None:
    try:
        st = os.stat(real_path, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            # sshd follows links: include the target's signature too.
            try:
                target = os.stat(real_path)
                return file_signature(st) + file_signature(target)
            except OSError:
                return file_signature(st)
    except OSError:
        return None
    return dir_signature(st) if is_dir else file_signature(st)
