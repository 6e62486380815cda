"""Linux inotify, the part the watcher needs: three syscalls, the event struct and one reader thread.

Why our own and not watchdog's: its public ``Observer`` costs one thread per watched path, and its
private layer changed its callback protocol in a patch release (docs/choices.md, "Watching").
What the kernel offers here has been stable since Linux 2.6.27: ``inotify_init1``,
``inotify_add_watch``, ``inotify_rm_watch``, and ``read`` returning whole ``struct inotify_event``
records. That is all this module wraps:

- the mask constants (``<sys/inotify.h>``);
- ``parse_events``: the byte buffer of one ``read`` -> events, a pure function;
- ``Inotify``: one descriptor (non-blocking, close-on-exec), ``add_watch``/``rm_watch`` raising
  ``OSError`` with the kernel's errno (ENOSPC: ``max_user_watches``; EACCES, ENOENT, ENOTDIR), and
  one reader thread that hands each buffer's events to a handler. The thread sleeps in ``poll`` on
  the descriptor and an eventfd, so ``stop`` ends it at once. It never dies of an exception in the
  handler or of an unreadable buffer (both are logged by type and reported as a queue overflow: events
  were lost, the consumer must rescan); it ends only on ``stop`` or when the descriptor itself
  fails, and then ``is_alive()`` is False.

What the consumer does with events (which watch means which path, IN_IGNORED book-keeping) is not
here: see ``agent/daemon/watch_points.py``.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import select
import struct
import threading
import traceback
from collections.abc import Callable
from typing import Final, NamedTuple

logger = logging.getLogger("sshklm.inotify")

# Events (<sys/inotify.h>).
IN_ACCESS: Final = 0x00000001
IN_MODIFY: Final = 0x00000002
IN_ATTRIB: Final = 0x00000004
IN_CLOSE_WRITE: Final = 0x00000008
IN_CLOSE_NOWRITE: Final = 0x00000010
IN_OPEN: Final = 0x00000020
IN_MOVED_FROM: Final = 0x00000040
IN_MOVED_TO: Final = 0x00000080
IN_CREATE: Final = 0x00000100
IN_DELETE: Final = 0x00000200
IN_DELETE_SELF: Final = 0x00000400
IN_MOVE_SELF: Final = 0x00000800
# Set by the kernel in returned events.
IN_UNMOUNT: Final = 0x00002000
IN_Q_OVERFLOW: Final = 0x00004000  # with wd -1: the queue was full, events were dropped
IN_IGNORED: Final = 0x00008000  # the watch is gone (removed, or its directory deleted/unmounted)
IN_ISDIR: Final = 0x40000000
# Flags for inotify_add_watch.
IN_ONLYDIR: Final = 0x01000000
IN_DONT_FOLLOW: Final = 0x02000000
IN_EXCL_UNLINK: Final = 0x04000000
# Flags for inotify_init1: the same values as the open(2) flags.
IN_NONBLOCK: Final = os.O_NONBLOCK
IN_CLOEXEC: Final = os.O_CLOEXEC

# struct inotify_event { int wd; uint32_t mask; uint32_t cookie; uint32_t len; char name[len]; }
EVENT_HEADER: Final = struct.Struct("=iIII")
NAME_MAX: Final = 255
# One read returns whole events only; 64 KiB holds at least 240 of the largest ones.
READ_SIZE: Final = 65536


class InotifyEvent(NamedTuple):
    wd: int
    mask: int
    cookie: int
    name: bytes  # b"" for an event on the watched directory itself


OVERFLOW: Final = InotifyEvent(-1, IN_Q_OVERFLOW, 0, b"")


def parse_events(buffer: bytes) -> list[InotifyEvent]:
    """The events in the bytes of one ``read`` of an inotify descriptor.

    A name is NUL-padded to an alignment boundary in the record (``len`` counts the padding); the
    padding is dropped. Raises ValueError when the buffer does not end on a record boundary: the
    kernel never splits a record, so such bytes cannot be trusted."""
    events: list[InotifyEvent] = []
    offset, end, header = 0, len(buffer), EVENT_HEADER.size
    while offset < end:
        if end - offset < header:
            raise ValueError(f"truncated inotify event header at byte {offset} of {end}")
        wd, mask, cookie, length = EVENT_HEADER.unpack_from(buffer, offset)
        offset += header
        if length > end - offset:
            raise ValueError(f"inotify event name of {length} bytes overruns the buffer at byte {offset}")
        name = buffer[offset : offset + length].partition(b"\0")[0] if length else b""
        offset += length
        events.append(InotifyEvent(wd, mask, cookie, name))
    return events


def exception_site(exc: BaseException) -> str:
    """``TypeName at file:line`` of where ``exc`` was raised: what a log may say about an exception
    from code that handles file names and contents (the message itself may carry them)."""
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
    return f"{type(exc).__name__} at {where}"


# --------------------------------------------------------------------------- syscalls

_libc = ctypes.CDLL(None, use_errno=True)  # the C library the interpreter runs on
_inotify_init1 = _libc.inotify_init1
_inotify_init1.argtypes = [ctypes.c_int]
_inotify_init1.restype = ctypes.c_int
_inotify_add_watch = _libc.inotify_add_watch
_inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_inotify_add_watch.restype = ctypes.c_int
_inotify_rm_watch = _libc.inotify_rm_watch
_inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
_inotify_rm_watch.restype = ctypes.c_int


def _checked(result: int) -> int:
    if result == -1:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


EventHandler = Callable[[list[InotifyEvent]], None]


class Inotify:
    """One inotify descriptor and its reader thread (see the module docstring).

    ``add_watch``/``rm_watch`` may be called from any thread, before and while the reader runs."""

    def __init__(self, *, thread_name: str = "inotify-reader") -> None:
        self._lock = threading.Lock()  # the descriptors: no syscall on a closed (reused) number
        self._fd = _checked(_inotify_init1(IN_NONBLOCK | IN_CLOEXEC))
        try:
            self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except OSError:
            os.close(self._fd)
            raise
        self._closed = False
        self._thread_name = thread_name
        self._thread: threading.Thread | None = None

    def add_watch(self, path: bytes, mask: int) -> int:
        """The watch descriptor of ``path`` (the same one again for the same inode: the kernel then
        replaces its mask). Raises OSError with the kernel's errno."""
        if b"\0" in path:  # C would watch the path cut at the NUL: another directory
            raise OSError(errno.EINVAL, "path contains a NUL byte")
        with self._lock:
            self._check_open()
            return _checked(_inotify_add_watch(self._fd, path, mask))

    def rm_watch(self, wd: int) -> None:
        """Removes a watch; the kernel queues IN_IGNORED for it. EINVAL: no such watch (any more)."""
        with self._lock:
            self._check_open()
            _checked(_inotify_rm_watch(self._fd, wd))

    def _check_open(self) -> None:
        if self._closed:
            raise OSError(errno.EBADF, "inotify descriptor is closed")

    def start(self, handler: EventHandler) -> None:
        """Starts the reader thread: it calls ``handler`` with the events of each read, in order."""
        if self._thread is not None:
            raise RuntimeError("inotify reader already started")
        self._thread = threading.Thread(
            target=self._read_loop, args=(handler,), name=self._thread_name, daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Ends the reader thread and closes the descriptor (which drops every watch). Idempotent."""
        with self._lock:
            if self._closed:
                return
            os.eventfd_write(self._wake, 1)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                # Closing under a live reader could hand its descriptor number to another open.
                logger.error(
                    "inotify: the reader thread did not end within %.1f s; descriptor left open", timeout
                )
                return
        with self._lock:
            if self._closed:  # a concurrent stop closed it meanwhile
                return
            self._closed = True
            os.close(self._fd)
            os.close(self._wake)

    def is_alive(self) -> bool:
        """True while the reader thread runs: False before ``start``, after ``stop``, and once the
        descriptor failed."""
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------------ reader thread

    def _read_loop(self, handler: EventHandler) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._wake, select.POLLIN)
        while True:
            try:
                ready = dict(poller.poll())
                if self._wake in ready:
                    return
                if ready.get(self._fd, 0) & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                    raise OSError(errno.EBADF, "poll reports the inotify descriptor broken")
                buffer = os.read(self._fd, READ_SIZE)
                if not buffer:  # an inotify descriptor blocks or says EAGAIN, never end-of-file
                    raise OSError(errno.EBADF, "end-of-file on the inotify descriptor")
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                # The descriptor itself failed: nothing more can be read. The thread ends, so
                # is_alive() is False and the daemon's health check withholds the watchdog ping.
                logger.error(
                    "inotify: reading failed (%s); the reader stops", errno.errorcode.get(exc.errno or 0, "?")
                )
                return
            try:
                events = parse_events(buffer)
            except ValueError:
                logger.error(
                    "inotify: unreadable buffer of %d bytes; treated as a queue overflow", len(buffer)
                )
                events = [OVERFLOW]
            _deliver(handler, events)


def _deliver(handler: EventHandler, events: list[InotifyEvent]) -> None:
    """Hands ``events`` to ``handler``; an exception is logged by type and reported as lost events."""
    try:
        handler(events)
    except Exception as exc:
        # Some of these events may not have reached the consumer: report them lost.
        logger.error("inotify: event handler raised %s; treated as a queue overflow", exception_site(exc))
        try:
            handler([OVERFLOW])
        except Exception as again:
            logger.error("inotify: event handler raised %s on the overflow too", exception_site(again))
