"""Watch points: the watcher's inotify watches on directories, by host path, reference-counted.

A needed dir's plan holds one to three points (the dir or its anchor, its grandparent, its parent when
a symlink is involved); points are shared (``/home`` by every user) and counted, not listed: the dirs
using one can be found again from the sorted needed dirs below it.

The kernel gives one watch descriptor per inode: the same directory reached under two paths (a
symlinked ``~/.ssh``) or watched again after an audit has the same wd. So each wd maps back to the
points that hold it, and the kernel watch is removed only with the last of them. Not thread-safe:
the watcher calls in under its lock.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class WatchBackend(Protocol):
    """What the points need of inotify (the watcher's ``InotifyBackend``)."""

    def add(self, path: bytes, mask: int) -> int: ...

    def remove(self, wd: int) -> None: ...


@dataclass(slots=True)
class _Point:
    path: str
    wd: int | None  # None: the watch is gone (IN_IGNORED) until the point is re-planned
    ident: int | None  # identity() when added: the audit compares it
    refs: int = 0  # needed dirs whose plan holds this point


def identity(real_path: str) -> int | None:
    """st_dev and st_ino (following links) in one int: a tuple of two ints is three objects per watch."""
    try:
        st = os.stat(real_path)
    except OSError:
        return None
    return st.st_dev << 64 | st.st_ino


class WatchPoints:
    def __init__(self, backend: WatchBackend, mask: int, to_real: Callable[[str], str]) -> None:
        self._backend = backend
        self._mask = mask
        self._to_real = to_real
        self._points: dict[str, _Point] = {}
        # wd -> the watched path, or paths when one inode is watched under several (rare: links).
        # Not a set or tuple each: 10,000 one-element sets cost ~2 MB, tuples ~0.5 MB.
        self._wd_points: dict[int, str | tuple[str, ...]] = {}

    def __contains__(self, path: str) -> bool:
        return path in self._points

    def paths(self) -> list[str]:
        return list(self._points)

    def paths_of(self, wd: int) -> tuple[str, ...]:
        """The points watched by ``wd``."""
        paths = self._wd_points.get(wd, ())
        return (paths,) if isinstance(paths, str) else paths

    def live_count(self) -> int:
        return sum(1 for p in self._points.values() if p.wd is not None)

    def live_identities(self) -> list[tuple[str, int | None]]:
        """(path, identity when watched) of each point with a watch: the audit's input."""
        return [(p.path, p.ident) for p in self._points.values() if p.wd is not None]

    def acquire(self, path: str, *, refresh: bool, new_ref: bool) -> str:
        """Make sure point ``path`` has a live watch (with ``refresh``: of the directory the path
        names now); returns the point's key (one string per path). Raises the OSError of
        inotify_add_watch; the point is then unchanged."""
        point = self._points.get(path)
        if point is None:
            point = self._points[path] = _Point(path, None, None)
        elif not (refresh and self._stale(point)):
            point.refs += new_ref
            return point.path
        real = self._to_real(path)
        try:
            # The new watch is added before the old one is removed: no window without a watch.
            wd = self._backend.add(os.fsencode(real), self._mask)
        except OSError:
            if point.refs == 0:
                del self._points[path]
            raise
        if point.wd != wd:  # the same wd: the same directory, still watched
            self._forget_wd(point)
            point.wd = wd
            self._set_wd_paths(wd, _with(self.paths_of(wd), point.path))
        point.ident = identity(real)  # None: the audit re-plans it
        point.refs += new_ref
        return point.path

    def release(self, path: str) -> None:
        point = self._points.get(path)
        if point is None:
            return
        point.refs -= 1
        if point.refs <= 0:
            del self._points[path]
            self._forget_wd(point)

    def watch_lost(self, wd: int) -> list[str]:
        """The kernel dropped watch ``wd`` (IN_IGNORED: its directory was deleted or unmounted):
        returns the points that held it, which have no watch now."""
        lost: list[str] = []
        for path in self.paths_of(wd):
            point = self._points.get(path)
            if point is not None and point.wd == wd:
                point.wd = None
                lost.append(path)
        self._wd_points.pop(wd, None)
        return lost

    def _stale(self, point: _Point) -> bool:
        if point.wd is None:
            return True
        ident = identity(self._to_real(point.path))
        return ident is None or ident != point.ident

    def _forget_wd(self, point: _Point) -> None:
        if point.wd is None:
            return
        rest = _without(self.paths_of(point.wd), point.path)
        self._set_wd_paths(point.wd, rest)
        if not rest:
            self._backend.remove(point.wd)
        point.wd = None

    def _set_wd_paths(self, wd: int, paths: tuple[str, ...]) -> None:
        if not paths:
            self._wd_points.pop(wd, None)
        else:
            self._wd_points[wd] = paths[0] if len(paths) == 1 else paths


def _with(items: tuple[str, ...], new: str) -> tuple[str, ...]:
    return items if new in items else (*items, new)


def _without(items: tuple[str, ...], gone: str) -> tuple[str, ...]:
    return tuple(x for x in items if x != gone)
