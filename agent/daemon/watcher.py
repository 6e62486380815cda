"""The change watcher: tells the daemon which discovery inputs may have changed.

Modules: ``inotify`` (the kernel adapter and its reader thread), ``watch_targets`` (pure: paths and
the index of targets), ``watch_points`` (reference-counted watches), ``watch_poll`` (signatures and
snapshot diffs). What stays here (under 600 lines besides this note) is one unit: planning a needed
dir's coverage, mapping events to targets, the dispatch loop and the poller all read and re-plan the
same coverage state under one lock, and each path into it ends in ``_plan_dir``; cut apart, every
piece would need the others' internals.

Design (summarized in docs/architecture.md)
-------------------------------------------
*What is watched.* The daemon gives host paths of **target files** (authorized keys files wherever
sshd_config puts them, host keys, sshd_config and its Included files, /etc/passwd, /etc/group) and
**target directories** (``~/.ssh``: every entry in it is a target, for identity keys). The watcher
watches **directories, never files, non-recursively**. For each *needed directory* D (one that holds
target files, or a target directory) that exists it watches two points:

- D itself: content events of the names in D, and D's own events (chmod/chown of ``~/.ssh``: IN_ATTRIB;
  D removed or renamed: IN_DELETE_SELF / IN_MOVE_SELF / IN_IGNORED, re-planned at once);
- grandparent(D) (``/home`` for ``~/.ssh``: one watch shared by every user): events on the *name of
  parent(D)* there are chmod/chown of a home (sshd's StrictModes depends on it) and a home removed,
  renamed or re-created. An event on name N in a watched directory P is mapped to the needed dirs at or
  under P/N (a sorted list and bisect): their targets are reported, and re-planned on structural events.

So a user's files cost **one watch (``~/.ssh``) plus the shared grandparent**. D's own events stand in
for the events parent(D) would report on D's name. A needed dir that does not exist is *anchored* at its
nearest existing ancestor (one watch): a home without ``~/.ssh`` costs one watch on the home, a home
created after ``set_targets`` shows up as IN_CREATE in ``/home``, and the chain is re-planned step by step
(``rm -rf ~/.ssh; mkdir ~/.ssh``: DELETE_SELF, anchored on the home, IN_CREATE, watched again). Every
re-plan reports the dir's targets, so nothing written while a watch was missing is lost.

*Symlinks.* Directory watches follow symlinks (as sshd does), so a symlinked ``~/.ssh`` is watched where
it points. That is also why the grandparent alone is not enough when D or parent(D) is a symlink (lstat
when planned): replacing the link (``ln -sfn``) is an event in parent(D), and chmod of a symlinked home's
target is an event of that target, neither seen from the grandparent. Then parent(D) is watched too
(three points). Watch points are deduplicated (D == "/", or grandparent == parent for top-level dirs)
and reference-counted; one string object per path is kept (no per-user copies).
Events on names are mapped back to target paths; events on other names (``.bash_history``) are dropped.
Editors' atomic saves and ``sed -i`` arrive as IN_MOVED_TO on the target's name, vim's backup dance
as moves/creates, append as IN_MODIFY/IN_CLOSE_WRITE, chmod/chown as IN_ATTRIB.
The mask has no IN_OPEN/IN_ACCESS/IN_CLOSE_NOWRITE (reads of watched homes would flood the queue).

*New users.* /etc/passwd is itself a target: the daemon re-reads users on its change and calls
``set_targets`` again. If the new home does not exist yet at that moment, the anchor on ``/home``
(its nearest existing ancestor) reports it when it appears. ``set_targets`` never loses events:
new watches are added before unneeded ones are removed. Call it *before* scanning what it targets.

*Why one inotify descriptor of our own.* watchdog's ``Observer`` starts one emitter thread per
scheduled path: 10,000 users = 10,000 threads and ~230 MB, past systemd's default TasksMax; and its
private lower layer changed its callback protocol in a patch release (docs/choices.md). So the
watcher owns the small part it needs: ``agent/daemon/inotify.py`` (three syscalls, the event struct,
ONE descriptor and ONE reader thread, many watches). The watcher adds one dispatch thread (maps
events to targets, debounces per file, calls back) and one poller thread: 3 threads at any scale.

*Losing track.* IN_Q_OVERFLOW (the kernel dropped events; also reported by the reader for a buffer
it could not read or hand over) -> ``on_rescan("inotify queue overflow")`` and every watch is
re-verified. A watch whose directory was removed is re-planned at once; every ``poll_interval_s``
the poller also re-stats each watched directory and re-plans the ones whose inode changed (e.g. a
renamed ancestor above the grandparent, which no watch reports).

*Polling fallback.* Directories on network or user-space filesystems (NFS, CIFS/SMB, FUSE, 9p, Ceph...,
by the fs type of the longest matching mount in /proc/self/mountinfo: inotify does not see other
clients' changes) and directories whose watch could not be added (ENOSPC: the
``fs.inotify.max_user_watches`` limit) are polled by one thread every ``poll_interval_s``: lstat
signatures of the target files, of D and of parent(D), and D's listing for target directories.
``stats()`` says how many targets are polled and why.

*Callbacks.* ``on_changes(paths)`` and ``on_rescan(reason)`` are called from the dispatch thread only,
never with the watcher's lock held (so they may call ``set_targets``). An exception in them is logged
(type and location only: messages may carry data) and the thread continues. ``is_alive()`` is False
as soon as any of the three threads has died.
For a target directory, ``on_changes`` may contain the directory path itself: rescan all of it.

*Limits.* A target that is a symlink is reported when the link or its directory changes, not when the
file it points to changes in another directory: the daemon adds the file a link resolves to as a target
of its own (``LiveDiscovery`` maps it back to the link's target, and re-targets when a link is re-pointed).
A user can point ``~/.ssh`` at a busy directory; events there cost a dictionary lookup each.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import queue
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass
from typing import Protocol

from agent.daemon import inotify
from agent.daemon.debounce import Debouncer
from agent.daemon.inotify import Inotify, InotifyEvent, exception_site
from agent.daemon.watch_points import WatchPoints, identity
from agent.daemon.watch_poll import Snapshot, changed_targets, listed_dir, poll_paths, take_snapshot
from agent.daemon.watch_targets import NO_TARGETS, Targets, build_targets, child_toward, join_path, parent_of
from agent.host.mounts import Mount, fstype_of, is_network_fstype, parse_mountinfo

logger = logging.getLogger("sshklm.watcher")

# Content, existence, mode and owner changes of names in a directory and of the directory itself.
# Deliberately without IN_OPEN, IN_ACCESS and IN_CLOSE_NOWRITE.
WATCH_MASK = (
    inotify.IN_MODIFY
    | inotify.IN_ATTRIB
    | inotify.IN_CLOSE_WRITE
    | inotify.IN_MOVED_FROM
    | inotify.IN_MOVED_TO
    | inotify.IN_CREATE
    | inotify.IN_DELETE
    | inotify.IN_DELETE_SELF
    | inotify.IN_MOVE_SELF
    | inotify.IN_ONLYDIR
    | inotify.IN_EXCL_UNLINK
)
_STRUCTURAL = inotify.IN_CREATE | inotify.IN_DELETE | inotify.IN_MOVED_FROM | inotify.IN_MOVED_TO
_SELF_GONE = inotify.IN_DELETE_SELF | inotify.IN_MOVE_SELF | inotify.IN_UNMOUNT

REASON_WATCH_LIMIT = "inotify watch limit reached (ENOSPC)"
REASON_OVERFLOW = "inotify queue overflow"


def _is_symlink(real_path: str) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(real_path).st_mode)
    except OSError:
        return False


# --------------------------------------------------------------------------- inotify backend


class WatchCallback(Protocol):
    """What the backend reports: an event on a watch, a watch the kernel dropped, lost events."""

    def on_event(self, event: InotifyEvent) -> None: ...

    def on_watch_deleted(self, wd: int) -> None: ...

    def on_queue_overflow(self) -> None: ...


class InotifyBackend:
    """The watcher's one inotify descriptor (``agent/daemon/inotify.py``) and the routing of its events.

    The reader thread hands each read's events to ``deliver``, which reports them as the callback's
    three kinds: IN_Q_OVERFLOW, IN_IGNORED (the kernel dropped a watch: its directory was deleted or
    unmounted, or we removed it), and every other event of a watch.
    A seam: tests subclass it to fail ``add`` (ENOSPC), to hold ``deliver`` (then the kernel's queue
    really overflows) or to call it with synthetic events.
    """

    def __init__(self) -> None:
        self._inotify = Inotify(thread_name="sshklm-watch-inotify")
        self._callback: WatchCallback | None = None

    def add(self, path: bytes, mask: int) -> int:
        return self._inotify.add_watch(path, mask)

    def remove(self, wd: int) -> None:
        # EINVAL: the kernel dropped the watch already (its IN_IGNORED is on the way); EBADF: stopped.
        with suppress(OSError):
            self._inotify.rm_watch(wd)

    def start(self, callback: WatchCallback) -> None:
        self._callback = callback
        self._inotify.start(self.deliver)

    def deliver(self, events: list[InotifyEvent]) -> None:
        callback = self._callback
        if callback is None:
            raise RuntimeError("inotify backend not started")
        for event in events:
            if event.mask & inotify.IN_Q_OVERFLOW:
                callback.on_queue_overflow()
            elif event.mask & inotify.IN_IGNORED:
                callback.on_watch_deleted(event.wd)
            elif event.wd != -1:
                callback.on_event(event)

    def stop(self, timeout: float) -> None:
        self._inotify.stop(timeout)

    def is_alive(self) -> bool:
        return self._inotify.is_alive()


# --------------------------------------------------------------------------- queue items


@dataclass(frozen=True, slots=True)
class _Gone:
    wd: int


@dataclass(frozen=True, slots=True)
class _Overflow:
    pass


@dataclass(frozen=True, slots=True)
class _Dirty:
    paths: frozenset[str]


@dataclass(frozen=True, slots=True)
class _Replan:
    points: frozenset[str]  # watch points whose identity changed
    dirs: frozenset[str]  # anchored dirs that now exist


_Item = InotifyEvent | _Gone | _Overflow | _Dirty | _Replan | None  # None: stop


class _Sink:
    """The backend's callback: it only enqueues, so it never raises in the inotify reader thread."""

    __slots__ = ("_queue",)

    def __init__(self, sink: queue.SimpleQueue[_Item]) -> None:
        self._queue = sink

    def on_event(self, event: InotifyEvent) -> None:
        self._queue.put(event)

    def on_watch_deleted(self, wd: int) -> None:
        self._queue.put(_Gone(wd))

    def on_queue_overflow(self) -> None:
        self._queue.put(_Overflow())


# --------------------------------------------------------------------------- state


@dataclass(slots=True)
class _Polled:
    """A needed dir covered by polling (network filesystem, watch limit)."""

    reason: str
    snapshot: Snapshot  # last poll


# The coverage of a needed dir: inotify watch points (keys in WatchPoints), or polling. Watch points
# start with the dir itself unless it does not exist and is *anchored* at its nearest existing
# ancestor. A bare tuple rather than an object per dir: 10,000 objects cost ~1 MB.
_Watched = tuple[str, ...]
_DirState = _Watched | _Polled


def _points_of(state: _DirState) -> _Watched:
    return () if isinstance(state, _Polled) else state


def _is_anchored(d: str, state: _DirState) -> bool:
    return not isinstance(state, _Polled) and state[0] != d


@dataclass(frozen=True)
class WatchStats:
    targets_inotify: int  # target files and target dirs covered by inotify
    targets_polled: int
    dirs_inotify: int  # directories holding targets, covered by inotify
    dirs_polled: int
    watches: int  # live inotify watches
    overflows: int
    polling_reasons: dict[str, int]  # reason -> number of targets polled for it
    threads: int  # live threads of the watcher


# --------------------------------------------------------------------------- the watcher


class Watcher:
    """Watches target files and directories; see the module docstring."""

    def __init__(
        self,
        *,
        on_changes: Callable[[set[str]], None],
        on_rescan: Callable[[str], None],
        debounce_s: float = 0.25,
        max_delay_s: float = 5.0,
        poll_interval_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        root: str = "/",
        inotify_factory: Callable[[], InotifyBackend] = InotifyBackend,
        read_mountinfo: Callable[[], str] | None = None,
    ) -> None:
        self._on_changes = on_changes
        self._on_rescan = on_rescan
        self._clock = clock
        self._root = os.path.abspath(root)
        self._poll_interval = poll_interval_s
        self._debouncer: Debouncer[str] = Debouncer(debounce_s, max(max_delay_s, debounce_s))
        self._read_mountinfo = read_mountinfo or _read_proc_mountinfo
        self._mounts: list[Mount] = []

        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._sink = _Sink(self._queue)

        self._inotify = inotify_factory()
        self._dispatch_thread = threading.Thread(
            target=self._dispatch_loop, name="sshklm-watch-dispatch", daemon=True
        )
        self._poll_thread = threading.Thread(target=self._poll_loop, name="sshklm-watch-poll", daemon=True)
        self._started = False

        self._targets: Targets = NO_TARGETS
        self._dirs: dict[str, _DirState] = {}  # needed dirs -> coverage
        self._points = WatchPoints(self._inotify, WATCH_MASK, self._real)
        self._overflows = 0

    # ------------------------------------------------------------------ public API

    def set_targets(self, files: Iterable[str], dirs: Iterable[str] = ()) -> None:
        """Replace the set of targets (absolute host paths). Adds watches before removing old ones."""
        mounts = self._load_mounts()
        with self._lock:
            if self._stopping.is_set():
                raise RuntimeError("watcher is stopped")
            self._targets = build_targets(files, dirs, self._dirs)
            self._mounts = mounts
            failures: list[str] = []
            for d in self._targets.sorted_dirs:
                if d not in self._dirs:
                    self._plan_dir(d, refresh=False, failures=failures)
                elif isinstance(self._dirs[d], _Polled):
                    # Re-try inotify (limits may have been raised); the snapshot bridges the gap.
                    self._plan_dir(d, refresh=False, failures=failures)
            for d in [d for d in self._dirs if not self._targets.is_needed(d)]:
                self._drop_dir(d)
        if failures:
            logger.warning("watcher: %d directories are polled: %s", len(failures), sorted(set(failures)))

    def start(self) -> None:
        if self._started:
            raise RuntimeError("watcher already started")
        self._started = True
        self._inotify.start(self._sink)
        self._dispatch_thread.start()
        self._poll_thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._queue.put(None)
        self._inotify.stop(timeout)
        for thread in (self._dispatch_thread, self._poll_thread):
            if thread.ident is not None:
                thread.join(timeout)

    def is_alive(self) -> bool:
        """True while all three threads run (False before start, after stop, or if one died)."""
        return self._started and not self._stopping.is_set() and self._threads_alive() == 3

    def _threads_alive(self) -> int:
        alive = (self._inotify.is_alive(), self._dispatch_thread.is_alive(), self._poll_thread.is_alive())
        return sum(alive)

    def stats(self) -> WatchStats:
        with self._lock:
            by_dir = self._targets.count_by_dir()
            targets_inotify = targets_polled = dirs_inotify = dirs_polled = 0
            reasons: Counter[str] = Counter()
            for d, state in self._dirs.items():
                if isinstance(state, _Polled):
                    dirs_polled += 1
                    targets_polled += by_dir[d]
                    reasons[state.reason] += by_dir[d]
                else:
                    dirs_inotify += 1
                    targets_inotify += by_dir[d]
            return WatchStats(
                targets_inotify=targets_inotify,
                targets_polled=targets_polled,
                dirs_inotify=dirs_inotify,
                dirs_polled=dirs_polled,
                watches=self._points.live_count(),
                overflows=self._overflows,
                polling_reasons=dict(reasons),
                threads=self._threads_alive(),
            )

    # ------------------------------------------------------------------ paths

    def _real(self, host_path: str) -> str:
        if self._root == "/":
            return host_path
        return self._root if host_path == "/" else self._root + host_path

    def _load_mounts(self) -> list[Mount]:
        try:
            return parse_mountinfo(self._read_mountinfo())
        except OSError as exc:
            logger.warning("watcher: cannot read mount table (%s); assuming local filesystems", exc.strerror)
            return []

    def _network_fstype(self, real_path: str) -> str | None:
        try:
            resolved = os.path.realpath(real_path)
        except OSError:
            resolved = real_path
        fstype = fstype_of(resolved, self._mounts)
        return fstype if fstype is not None and is_network_fstype(fstype) else None

    def _dirs_using(self, point: str) -> list[str]:
        """Needed dirs whose plan holds watch point ``point`` (points are a dir or its ancestors)."""
        return [d for d in self._targets.dirs_at_or_under(point) if point in _points_of(self._dirs[d])]

    # ------------------------------------------------------------------ planning (lock held)

    def _plan_points(self, d: str) -> tuple[tuple[str, ...], bool, str | None]:
        """(watch points, anchored, poll reason) for needed dir ``d``."""
        existing = d
        while not os.path.isdir(self._real(existing)) and existing != "/":
            existing = parent_of(existing)
        fstype = self._network_fstype(self._real(existing))
        if fstype is not None:
            return (), False, f"network filesystem ({fstype})"
        if existing != d:
            return (existing,), True, None
        parent = parent_of(d)
        points = [d, parent_of(parent)]
        if parent != "/" and (_is_symlink(self._real(d)) or _is_symlink(self._real(parent))):
            # The link's replacement and its target's chmod are not events of the grandparent.
            points.append(parent)
        return tuple(dict.fromkeys(points)), False, None

    def _plan_dir(self, d: str, *, refresh: bool, failures: list[str]) -> None:
        """(Re)establish coverage of needed dir ``d``: inotify watch points, or polling."""
        old = self._dirs.get(d)
        held = _points_of(old) if old is not None else ()
        reason: str | None = None
        for _attempt in range(3):
            planned, anchored, reason = self._plan_points(d)
            if reason is not None:
                break
            points, retry, reason = self._acquire_all(planned, held, refresh=refresh)
            if not retry and reason is None and anchored:
                # The next step down may have been created before the anchor's watch was in place:
                # its IN_CREATE was then never queued.
                retry = os.path.isdir(self._real(child_toward(points[0], d)))
            if not retry and reason is None:
                for p in held:
                    if p not in points:
                        self._points.release(p)
                if isinstance(old, _Polled):
                    # Hand over from polling to inotify: report what changed since the last poll.
                    self._queue.put(_Dirty(frozenset(self._poll_diff(d, old.snapshot))))
                self._dirs[d] = points
                return
            for p in points:
                if p not in held:
                    self._points.release(p)
            if reason is not None:
                break
        if reason is None:
            reason = "directory kept changing while being watched"
        # Fall back to polling: release every watch this dir held, to spare the watch budget.
        for p in held:
            self._points.release(p)
        snapshot = old.snapshot if isinstance(old, _Polled) else self._poll_snapshot(d)
        self._dirs[d] = _Polled(reason, snapshot)
        failures.append(reason)

    def _acquire_all(
        self, planned: tuple[str, ...], held: tuple[str, ...], *, refresh: bool
    ) -> tuple[tuple[str, ...], bool, str | None]:
        """Acquire the planned points (a new reference for those not ``held`` already).

        Returns (the points acquired, as WatchPoints' keys; retry; poll reason). On a failure the
        points acquired so far are returned for the caller to release."""
        acquired: list[str] = []
        for p in planned:
            try:
                acquired.append(self._points.acquire(p, refresh=refresh, new_ref=p not in held))
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                    return tuple(acquired), True, None  # vanished between the check and the watch
                if exc.errno == errno.ENOSPC:
                    return tuple(acquired), False, REASON_WATCH_LIMIT
                return tuple(acquired), False, f"inotify_add_watch failed ({os.strerror(exc.errno or 0)})"
        return tuple(acquired), False, None

    def _drop_dir(self, d: str) -> None:
        for p in _points_of(self._dirs.pop(d)):
            self._points.release(p)

    # ------------------------------------------------------------------ polling snapshots

    def _poll_snapshot(self, d: str) -> Snapshot:
        return take_snapshot(self._real, poll_paths(self._targets, d), list_dir=listed_dir(self._targets, d))

    def _poll_diff(self, d: str, before: Snapshot | None) -> set[str]:
        return changed_targets(self._targets, d, before or {}, self._poll_snapshot(d))

    # ------------------------------------------------------------------ dispatch thread

    def _dispatch_loop(self) -> None:
        while True:
            deadline = self._debouncer.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - self._clock())
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = _Dirty(frozenset())
            items = [item]
            while len(items) < 4096:  # drain a batch, bounded so callbacks are not starved
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if None in items or self._stopping.is_set():
                return
            rescan = self._process(items)
            if rescan is not None:
                self._call("on_rescan", functools.partial(self._on_rescan, rescan))
            due = self._debouncer.pop_due(self._clock())
            if due:
                self._call("on_changes", functools.partial(self._on_changes, due))

    @staticmethod
    def _call(name: str, func: Callable[[], None]) -> None:
        try:
            func()
        except Exception as exc:
            # Type and location only: the callback's message may carry file content.
            logger.error("watcher: %s callback raised %s; continuing", name, exception_site(exc))

    def _process(self, items: list[_Item]) -> str | None:
        """Apply a batch of queue items; returns a rescan reason when track was lost."""
        dirty: set[str] = set()
        replan_dirs: set[str] = set()
        stale_points: set[str] = set()
        rescan: str | None = None
        overflow = False
        with self._lock:
            for item in items:
                if isinstance(item, InotifyEvent):
                    for path in self._points.paths_of(item.wd):
                        self._map_point_event(path, item, dirty, replan_dirs, stale_points)
                elif isinstance(item, _Gone):
                    # The kernel dropped the watch (directory deleted or unmounted).
                    for path in self._points.watch_lost(item.wd):
                        stale_points.add(path)
                        dirty |= self._targets.targets_under(path)
                elif isinstance(item, _Overflow):
                    overflow = True
                elif isinstance(item, _Dirty):
                    dirty |= item.paths
                elif isinstance(item, _Replan):
                    stale_points |= item.points
                    replan_dirs |= {d for d in item.dirs if d in self._dirs}
                    for p in item.points | item.dirs:
                        dirty |= self._targets.targets_under(p)  # written while no watch was there
            if overflow:
                self._overflows += 1
                rescan = REASON_OVERFLOW
                stale_points.update(self._points.paths())
            for p in stale_points:
                replan_dirs.update(self._dirs_using(p))
            failures: list[str] = []
            if replan_dirs:
                self._mounts = self._load_mounts()
            for d in sorted(replan_dirs):
                if isinstance(self._dirs.get(d), tuple):  # watched (polled dirs have their poller)
                    self._plan_dir(d, refresh=True, failures=failures)
            now = self._clock()
            for path in dirty:
                self._debouncer.touch(path, now)
        if failures and rescan is None:
            rescan = f"{len(failures)} watches could not be re-established ({failures[0]}); polling them"
        return rescan

    def _map_point_event(
        self, path: str, ev: InotifyEvent, dirty: set[str], replan: set[str], stale_points: set[str]
    ) -> None:
        targets = self._targets
        if not ev.name:  # an event on the watched directory itself
            if ev.mask & _SELF_GONE:
                stale_points.add(path)
                dirty |= targets.targets_under(path)
            elif ev.mask & inotify.IN_ATTRIB:
                dirty |= self._attribute_change_reaches(path)
            return
        child = join_path(path, os.fsdecode(ev.name))
        if child in targets.files or (path in targets.dir_targets and not ev.mask & inotify.IN_ISDIR):
            dirty.add(child)
        if not ev.mask & (_STRUCTURAL | inotify.IN_ATTRIB):
            return
        # A directory on the way to needed dirs changed (a home in /home chmod-ed, removed, renamed
        # or re-created; ~/.ssh created in its anchor; a symlinked ~/.ssh replaced): their targets
        # may have changed (StrictModes), and a structural change needs a new plan.
        below = targets.dirs_at_or_under(child)
        if not below:
            return
        if not ev.mask & _STRUCTURAL:
            # chmod/chown only: see _attribute_change_reaches (StrictModes stops at the home).
            for d in below:
                if d == child or parent_of(d) == child:
                    dirty |= targets.targets_under(d)
            return
        dirty |= targets.targets_under(child)
        replan.update(below)
        if child in self._points:
            stale_points.add(child)

    def _attribute_change_reaches(self, point: str) -> set[str]:
        """Targets whose verdict chmod/chown of watched directory ``point`` may change.

        sshd's StrictModes checks a file's directories up to the home and stops there: the mode of
        a shared grandparent such as ``/home`` matters to nobody, and reading every user's files
        again on ``touch /home`` would cost a full rescan. So only the needed dir that is ``point``
        itself, or whose parent it is (a home, watched as the parent of a symlinked ``~/.ssh``)."""
        if point in self._dirs:
            return self._targets.targets_under(point)
        out: set[str] = set()
        for d in self._dirs_using(point):
            if parent_of(d) == point:
                out |= self._targets.targets_under(d)
        return out

    # ------------------------------------------------------------------ poller thread

    def _poll_loop(self) -> None:
        while not self._stopping.wait(self._poll_interval):
            self.poll_once()

    def poll_once(self) -> None:
        """One polling round (the poller thread calls it every ``poll_interval_s``)."""
        with self._lock:
            targets = self._targets
            polled = [
                (d, state, poll_paths(targets, d), listed_dir(targets, d))
                for d, state in self._dirs.items()
                if isinstance(state, _Polled)
            ]
            audit = self._points.live_identities()
            anchored = [d for d, state in self._dirs.items() if _is_anchored(d, state)]
        # Stat outside the lock: a slow (network) filesystem must not stall event dispatch.
        fresh = [(d, state, take_snapshot(self._real, paths, list_dir=ld)) for d, state, paths, ld in polled]
        stale = frozenset(path for path, ident in audit if identity(self._real(path)) != ident)
        appeared = frozenset(d for d in anchored if os.path.isdir(self._real(d)))
        dirty: set[str] = set()
        with self._lock:
            for d, state, snapshot in fresh:
                if self._dirs.get(d) is state:
                    dirty |= changed_targets(self._targets, d, state.snapshot, snapshot)
                    state.snapshot = snapshot
        if dirty:
            self._queue.put(_Dirty(frozenset(dirty)))
        if stale or appeared:
            self._queue.put(_Replan(points=stale, dirs=appeared))


def _read_proc_mountinfo() -> str:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return f.read()
