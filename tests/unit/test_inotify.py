"""The inotify adapter: the event parser on hand-made buffers, the syscalls and the reader thread on a
real inotify descriptor over a temporary directory."""

from __future__ import annotations

import errno
import logging
import os
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.daemon import inotify
from agent.daemon.inotify import EVENT_HEADER, OVERFLOW, Inotify, InotifyEvent, parse_events

TIMEOUT = 5.0


def record(wd: int, mask: int, name: bytes = b"", *, cookie: int = 0, pad_to: int = 16) -> bytes:
    """One ``struct inotify_event`` as the kernel writes it: the name NUL-terminated and padded."""
    if not name:
        return EVENT_HEADER.pack(wd, mask, cookie, 0)
    padded = name + b"\0" * (pad_to - len(name) % pad_to)
    return EVENT_HEADER.pack(wd, mask, cookie, len(padded)) + padded


# ------------------------------------------------------------------------------ parser


def test_header_is_the_kernels_16_bytes_in_native_order() -> None:
    assert EVENT_HEADER.size == 16
    assert EVENT_HEADER.pack(1, 2, 3, 4) == struct.pack("@iIII", 1, 2, 3, 4)


def test_several_events_in_one_buffer_in_order() -> None:
    buffer = (
        record(1, inotify.IN_MODIFY, b"authorized_keys")
        + record(2, inotify.IN_ATTRIB)
        + record(1, inotify.IN_MOVED_FROM, b"a", cookie=77)
        + record(1, inotify.IN_MOVED_TO, b"b", cookie=77)
    )
    assert parse_events(buffer) == [
        InotifyEvent(1, inotify.IN_MODIFY, 0, b"authorized_keys"),
        InotifyEvent(2, inotify.IN_ATTRIB, 0, b""),
        InotifyEvent(1, inotify.IN_MOVED_FROM, 77, b"a"),
        InotifyEvent(1, inotify.IN_MOVED_TO, 77, b"b"),
    ]


def test_name_padding_is_dropped_whatever_its_length() -> None:
    for name in (b"x", b"exactly16bytes!!", b"id_ed25519.pub", "é-ключ".encode()):
        for pad_to in (4, 16, 32):
            assert parse_events(record(3, inotify.IN_CREATE, name, pad_to=pad_to)) == [
                InotifyEvent(3, inotify.IN_CREATE, 0, name)
            ]


def test_queue_overflow_has_wd_minus_one_and_no_name() -> None:
    events = parse_events(record(1, inotify.IN_CLOSE_WRITE, b"f") + record(-1, inotify.IN_Q_OVERFLOW))
    assert events[1] == OVERFLOW
    assert events[1].wd == -1


def test_ignored_and_directory_flags_are_kept_in_the_mask() -> None:
    buffer = (
        record(5, inotify.IN_DELETE_SELF)
        + record(5, inotify.IN_IGNORED)
        + record(4, inotify.IN_CREATE | inotify.IN_ISDIR, b".ssh")
    )
    assert [(e.wd, e.mask, e.name) for e in parse_events(buffer)] == [
        (5, inotify.IN_DELETE_SELF, b""),
        (5, inotify.IN_IGNORED, b""),
        (4, inotify.IN_CREATE | inotify.IN_ISDIR, b".ssh"),
    ]


def test_empty_buffer_has_no_events() -> None:
    assert parse_events(b"") == []


def test_truncated_buffers_are_refused() -> None:
    whole = record(1, inotify.IN_MODIFY, b"authorized_keys")
    with pytest.raises(ValueError, match="header"):
        parse_events(whole + record(2, inotify.IN_ATTRIB)[:10])
    with pytest.raises(ValueError, match="overruns"):
        parse_events(whole[:-1])
    with pytest.raises(ValueError, match="overruns"):
        parse_events(EVENT_HEADER.pack(1, inotify.IN_CREATE, 0, 2**31))


def test_constants_have_the_kernels_values() -> None:
    # The values of <sys/inotify.h>: a wrong one would watch the wrong thing silently.
    assert (inotify.IN_ACCESS, inotify.IN_MODIFY, inotify.IN_ATTRIB, inotify.IN_CLOSE_WRITE) == (1, 2, 4, 8)
    assert (inotify.IN_CLOSE_NOWRITE, inotify.IN_OPEN, inotify.IN_MOVED_FROM, inotify.IN_MOVED_TO) == (
        0x10,
        0x20,
        0x40,
        0x80,
    )
    assert (inotify.IN_CREATE, inotify.IN_DELETE, inotify.IN_DELETE_SELF, inotify.IN_MOVE_SELF) == (
        0x100,
        0x200,
        0x400,
        0x800,
    )
    assert (inotify.IN_UNMOUNT, inotify.IN_Q_OVERFLOW, inotify.IN_IGNORED) == (0x2000, 0x4000, 0x8000)
    assert (inotify.IN_ONLYDIR, inotify.IN_EXCL_UNLINK, inotify.IN_ISDIR) == (
        0x01000000,
        0x04000000,
        0x40000000,
    )


# ------------------------------------------------------------------------------ a real descriptor


class Collector:
    def __init__(self) -> None:
        self.events: list[InotifyEvent] = []
        self._cond = threading.Condition()

    def __call__(self, events: list[InotifyEvent]) -> None:
        with self._cond:
            self.events.extend(events)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[InotifyEvent]], bool]) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.events), TIMEOUT)


@pytest.fixture
def ino() -> Iterator[Inotify]:
    instance = Inotify(thread_name="test-inotify-reader")
    yield instance
    instance.stop(TIMEOUT)


def test_reader_delivers_events_of_a_watched_directory(tmp_path: Path, ino: Inotify) -> None:
    got = Collector()
    wd = ino.add_watch(os.fsencode(tmp_path), inotify.IN_CREATE | inotify.IN_CLOSE_WRITE | inotify.IN_ONLYDIR)
    ino.start(got)
    (tmp_path / "authorized_keys").write_text("ssh-ed25519 AAAA\n")
    assert got.wait_for(lambda evs: InotifyEvent(wd, inotify.IN_CLOSE_WRITE, 0, b"authorized_keys") in evs)
    assert InotifyEvent(wd, inotify.IN_CREATE, 0, b"authorized_keys") in got.events


def test_same_directory_twice_is_the_same_watch_and_removal_queues_ignored(
    tmp_path: Path, ino: Inotify
) -> None:
    got = Collector()
    wd = ino.add_watch(os.fsencode(tmp_path), inotify.IN_CREATE)
    assert ino.add_watch(os.fsencode(str(tmp_path) + "/."), inotify.IN_CREATE) == wd
    ino.start(got)
    ino.rm_watch(wd)
    assert got.wait_for(lambda evs: InotifyEvent(wd, inotify.IN_IGNORED, 0, b"") in evs)
    with pytest.raises(OSError) as removed_twice:
        ino.rm_watch(wd)
    assert removed_twice.value.errno == errno.EINVAL


def test_deleted_directory_ends_its_watch_with_ignored(tmp_path: Path, ino: Inotify) -> None:
    got = Collector()
    watched = tmp_path / "ssh"
    watched.mkdir()
    wd = ino.add_watch(os.fsencode(watched), inotify.IN_DELETE_SELF)
    ino.start(got)
    watched.rmdir()
    assert got.wait_for(lambda evs: [e.mask for e in evs] == [inotify.IN_DELETE_SELF, inotify.IN_IGNORED])
    assert {e.wd for e in got.events} == {wd}


def test_add_watch_errors_carry_the_kernels_errno(tmp_path: Path, ino: Inotify) -> None:
    (tmp_path / "file").write_text("")
    cases = [
        (tmp_path / "missing", inotify.IN_CREATE, errno.ENOENT),
        (tmp_path / "missing" / "below", inotify.IN_CREATE, errno.ENOENT),
        (tmp_path / "file" / "below", inotify.IN_CREATE, errno.ENOTDIR),
        (tmp_path / "file", inotify.IN_CREATE | inotify.IN_ONLYDIR, errno.ENOTDIR),
        (tmp_path, 0, errno.EINVAL),  # an empty mask
        (Path(str(tmp_path) + "\0/elsewhere"), inotify.IN_CREATE, errno.EINVAL),  # not cut at the NUL
    ]
    for path, mask, expected in cases:
        with pytest.raises(OSError) as failed:
            ino.add_watch(os.fsencode(path), mask)
        assert failed.value.errno == expected, path


def _add_watch_errno_as_nobody(path: Path) -> int:
    """inotify_add_watch(path) in a forked child that dropped root: its errno (0: it worked)."""
    pid = os.fork()
    if pid == 0:  # the child: no threads, no pytest; only an exit code leaves it
        code = 255
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            child = Inotify()
            child.add_watch(os.fsencode(path), inotify.IN_CREATE)
            code = 0
        except OSError as exc:
            code = exc.errno or 254
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_add_watch_without_read_permission_is_eacces(ino: Inotify) -> None:
    # inotify_add_watch needs read permission on the directory itself. The parent is searchable by
    # all (pytest's tmp_path is not), so the refusal is the locked directory's own.
    with tempfile.TemporaryDirectory(prefix="sshklm-inotify-") as parent:
        os.chmod(parent, 0o755)
        locked = Path(parent) / "locked"
        locked.mkdir(mode=0o000)
        if os.geteuid() == 0:  # root passes every permission check: ask as nobody
            assert _add_watch_errno_as_nobody(locked) == errno.EACCES
        else:
            with pytest.raises(OSError) as failed:
                ino.add_watch(os.fsencode(locked), inotify.IN_CREATE)
            assert failed.value.errno == errno.EACCES


def test_stop_ends_the_reader_closes_the_descriptor_and_is_idempotent(tmp_path: Path) -> None:
    ino = Inotify(thread_name="test-inotify-stop")
    before = threading.active_count()
    ino.start(Collector())
    assert ino.is_alive() and threading.active_count() == before + 1
    ino.stop(TIMEOUT)
    assert not ino.is_alive() and threading.active_count() == before
    ino.stop(TIMEOUT)
    with pytest.raises(OSError) as closed:
        ino.add_watch(os.fsencode(tmp_path), inotify.IN_CREATE)
    assert closed.value.errno == errno.EBADF


def test_stop_without_start_closes_the_descriptor(tmp_path: Path) -> None:
    ino = Inotify()
    assert not ino.is_alive()
    ino.stop(TIMEOUT)
    with pytest.raises(OSError):
        ino.add_watch(os.fsencode(tmp_path), inotify.IN_CREATE)


def test_handler_exception_is_logged_by_type_reported_as_overflow_and_reading_goes_on(
    tmp_path: Path, ino: Inotify, caplog: pytest.LogCaptureFixture
) -> None:
    got = Collector()
    calls = 0

    def flaky(events: list[InotifyEvent]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a message that may carry /home/alice/.ssh/id_rsa")
        got(events)

    wd = ino.add_watch(os.fsencode(tmp_path), inotify.IN_CREATE)
    ino.start(flaky)
    (tmp_path / "first").touch()
    assert got.wait_for(lambda evs: OVERFLOW in evs)  # the first batch may be lost: rescan
    (tmp_path / "second").touch()
    assert got.wait_for(lambda evs: InotifyEvent(wd, inotify.IN_CREATE, 0, b"second") in evs)
    assert ino.is_alive()
    assert "RuntimeError" in caplog.text
    assert "id_rsa" not in caplog.text


def test_a_broken_descriptor_ends_the_reader(
    tmp_path: Path, ino: Inotify, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    ino.add_watch(os.fsencode(tmp_path), inotify.IN_CREATE)
    ino.start(Collector())
    assert ino.is_alive()
    # /dev/null in place of the inotify descriptor: the next read says end-of-file, which an
    # inotify descriptor never does. The poll under way still waits on the old descriptor: an event
    # there wakes it.
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(devnull, ino._fd)
    finally:
        os.close(devnull)
    (tmp_path / "wake").touch()
    ino._thread.join(TIMEOUT)  # type: ignore[union-attr]
    assert not ino.is_alive()
    assert "reader stops" in caplog.text
