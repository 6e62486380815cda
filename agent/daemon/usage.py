"""The usage follower: tails sshd's own log and reports each key login (``key_used``).

One thread. Sources:
- ``journal``: ``journalctl -f -o json --no-pager -n 0 -u UNIT`` as a child process (restarted with
  backoff when it exits, killed with its process group on ``stop``). Lines are judged by journald's
  trusted fields (see ``usage_parse.parse_journal_json``).
- ``file``: a syslog file tailed from its end, polled every ``poll_interval_s``. Rotation by rename +
  create (inode change) opens the new file from its start while the old one is drained for a while
  (rsyslog keeps writing to it until logrotate's HUP); truncation (copytruncate) restarts at 0.
  ``file_format="plain"`` reads a file sshd writes itself (``sshd -E FILE``): bare messages, no stamp,
  so the hit time is the time the line was read.
- ``auto``: the journal when journalctl exists and either systemd runs (/run/systemd/system) or the
  journal already holds ssh unit entries; else the first existing of /var/log/auth.log, /var/log/secure;
  else disabled, with ``reason`` saying why.

``on_hit(hit, at)`` runs on the follower thread; an exception in it is logged and the thread goes on.
The choice is made in ``start()``; ``mode`` and ``reason`` say what was chosen.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import IO, Literal

from agent.control.backoff import backoff_ceiling
from agent.daemon.usage_parse import UsageHit, parse_journal_json, parse_sshd_message, parse_syslog_line

log = logging.getLogger("sshklm.usage")

Source = Literal["auto", "journal", "file"]
FileFormat = Literal["syslog", "plain"]
Mode = Literal["journal", "file", "disabled"]

DEFAULT_LOG_FILES = ("/var/log/auth.log", "/var/log/secure")
DEFAULT_UNITS = ("ssh.service", "sshd.service")
SYSTEMD_RUN_DIR = "/run/systemd/system"

_MAX_LINE = 64 * 1024  # sshd's lines are < 2 KiB; longer ones are skipped, not buffered without end
_READ_CHUNK = 64 * 1024
_DRAIN_QUIET_S = 10.0  # a rotated file that has not grown for this long is closed
_ROLLOVER_SLACK = timedelta(days=2)


def _utc_now() -> datetime:
    return datetime.now(UTC)


# --- choosing the source (pure) ---------------------------------------------------------------------


@dataclass(frozen=True)
class SourceChoice:
    mode: Mode
    path: str | None  # the file, for mode "file"
    reason: str


def choose_source(
    requested: Source,
    *,
    log_files: Sequence[str],
    existing_files: frozenset[str],
    journalctl_found: bool,
    systemd_running: bool,
    journal_has_ssh: Callable[[], bool],
) -> SourceChoice:
    """Decide where to read. ``log_files`` are the candidates in order (the configured file alone,
    or the defaults); ``journal_has_ssh`` is only asked when it matters (it runs journalctl)."""
    if requested == "journal":
        if not journalctl_found:
            return SourceChoice("disabled", None, "source 'journal' requested but journalctl was not found")
        return SourceChoice("journal", None, "source 'journal' requested")
    if requested == "file":
        for path in log_files:
            if path in existing_files:
                return SourceChoice("file", path, f"source 'file' requested: {path}")
        if len(log_files) == 1:  # an explicitly configured file may appear later: wait for it
            return SourceChoice(
                "file", log_files[0], f"source 'file' requested: {log_files[0]} (not there yet)"
            )
        return SourceChoice(
            "disabled", None, "source 'file' requested but none of " + ", ".join(log_files) + " exists"
        )
    if journalctl_found:
        if systemd_running:
            return SourceChoice("journal", None, "auto: systemd is running")
        if journal_has_ssh():
            return SourceChoice("journal", None, "auto: the journal has ssh unit entries")
    for path in log_files:
        if path in existing_files:
            return SourceChoice("file", path, f"auto: {path}")
    why = "journalctl not found" if not journalctl_found else "no systemd and no ssh entries in the journal"
    return SourceChoice("disabled", None, f"auto: {why}, and none of " + ", ".join(log_files) + " exists")


# --- file tailing -----------------------------------------------------------------------------------


class _OpenLog:
    """One open log file read by position: complete lines only, overlong lines skipped."""

    def __init__(self, fd: int, st: os.stat_result, pos: int) -> None:
        self.fd = fd
        self.dev, self.ino = st.st_dev, st.st_ino
        self.pos = pos
        self._partial = bytearray()
        self._skipping = False  # inside an overlong line: drop bytes up to its newline
        self.last_growth = time.monotonic()

    def read_lines(self) -> list[bytes]:
        size = os.fstat(self.fd).st_size
        if size < self.pos:  # truncated in place (copytruncate): start over
            log.info("usage: log file truncated, reading it from the start")
            self.pos = 0
            self._partial.clear()
            self._skipping = False
        lines: list[bytes] = []
        while True:
            chunk = os.pread(self.fd, _READ_CHUNK, self.pos)
            if not chunk:
                break
            self.pos += len(chunk)
            self.last_growth = time.monotonic()
            lines.extend(self._split(chunk))
        return lines

    def _split(self, chunk: bytes) -> list[bytes]:
        out: list[bytes] = []
        parts = chunk.split(b"\n")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if self._skipping:
                if not last:
                    self._skipping = False
                continue
            self._partial += part
            if len(self._partial) > _MAX_LINE:
                self._partial.clear()
                self._skipping = last
                continue
            if not last:
                out.append(bytes(self._partial))
                self._partial.clear()
        return out

    def close(self) -> None:
        os.close(self.fd)


def _open_log(path: str) -> tuple[int, os.stat_result] | None:
    """Open read-only; None when missing or not a regular file (a FIFO would block us, a device
    is not a log). O_NONBLOCK makes the open itself safe on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("usage: cannot open %s: %s", path, exc.strerror)
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        log.warning("usage: %s is not a regular file, not following it", path)
        return None
    return fd, st


class FileTail:
    """Follows a path across rotations. ``poll()`` returns the complete lines added since the last
    call, the old file's last lines first."""

    def __init__(self, path: str, *, from_end: bool = True) -> None:
        self.path = path
        self._current: _OpenLog | None = None
        self._draining: list[_OpenLog] = []
        # Only a file already there at the first poll is read from its end: one that appears
        # later (or replaces it) is new, all of it unread.
        self._skip_existing = from_end

    def _open_current(self) -> None:
        opened = _open_log(self.path)
        if opened is None:
            return
        fd, st = opened
        self._current = _OpenLog(fd, st, st.st_size if self._skip_existing else 0)

    def poll(self) -> list[bytes]:
        try:
            return self._poll()
        finally:
            self._skip_existing = False

    def _poll(self) -> list[bytes]:
        lines: list[bytes] = []
        for old in list(self._draining):
            lines.extend(old.read_lines())
            if time.monotonic() - old.last_growth > _DRAIN_QUIET_S:
                old.close()
                self._draining.remove(old)
        if self._current is None:
            self._open_current()
            if self._current is None:
                return lines
        lines.extend(self._current.read_lines())
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return lines  # between rename and create: keep reading the old one
        if (st.st_dev, st.st_ino) != (self._current.dev, self._current.ino):
            log.info("usage: %s was rotated, following the new file", self.path)
            self._draining.append(self._current)
            self._current = None
            self._open_current()
            if self._current is not None:
                lines.extend(self._current.read_lines())
        return lines

    def close(self) -> None:
        for f in [*self._draining, *([self._current] if self._current else [])]:
            f.close()
        self._draining.clear()
        self._current = None


# --- the follower -----------------------------------------------------------------------------------


def _journal_has_ssh(journalctl: str, units: Sequence[str]) -> bool:
    argv = [journalctl, "-q", "--no-pager", "-n", "1", "-o", "json"]
    for unit in units:
        argv += ["-u", unit]
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0 and bool(done.stdout.strip())


class UsageFollower:
    def __init__(
        self,
        on_hit: Callable[[UsageHit, datetime], None],
        source: Source = "auto",
        log_file: str | None = None,
        journal_unit: str | None = None,
        journalctl: str = "journalctl",
        *,
        file_format: FileFormat = "syslog",
        poll_interval_s: float = 0.5,
        restart_backoff_s: tuple[float, float] = (1.0, 30.0),
        clock: Callable[[], datetime] = _utc_now,
        local_tz: tzinfo | None = None,
        default_log_files: Sequence[str] = DEFAULT_LOG_FILES,
        systemd_run_dir: str = SYSTEMD_RUN_DIR,
    ) -> None:
        self._on_hit = on_hit
        self._source: Source = source
        self._log_file = log_file or None  # the config's "" means unset
        self._units: tuple[str, ...] = (journal_unit,) if journal_unit else DEFAULT_UNITS
        self._journalctl = journalctl
        self._file_format: FileFormat = file_format
        self._poll_s = poll_interval_s
        self._backoff_min, self._backoff_max = restart_backoff_s
        self._clock = clock
        self._local_tz = local_tz
        self._default_log_files = tuple(default_log_files)
        self._systemd_run_dir = systemd_run_dir
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self.mode: Mode | None = None  # set by start()
        self.path: str | None = None
        self.reason = "not started"
        self.hits = 0  # lines that matched, for status output

    # -- lifecycle

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("usage follower already started")
        choice = self._choose()
        self.mode, self.path, self.reason = choice.mode, choice.path, choice.reason
        if choice.mode == "disabled":
            return  # the usage tracker (extensions.py) says so, once
        if choice.mode == "journal":
            target: Callable[[], None] = self._run_journal
        else:
            assert choice.path is not None
            tail = FileTail(choice.path, from_end=True)
            tail.poll()  # position at the end now, so lines written after start() are never missed
            target = functools.partial(self._run_file, tail)
        self._thread = threading.Thread(target=target, name="sshklm-usage", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        with self._lock:
            proc = self._proc
        if proc is not None:
            _end_process_group(proc, timeout / 2)
        if self._thread is not None:
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _choose(self) -> SourceChoice:
        candidates = (self._log_file,) if self._log_file else self._default_log_files
        return choose_source(
            self._source,
            log_files=candidates,
            existing_files=frozenset(p for p in candidates if os.path.exists(p)),
            journalctl_found=shutil.which(self._journalctl) is not None,  # a path is checked as given
            systemd_running=os.path.isdir(self._systemd_run_dir),
            journal_has_ssh=lambda: _journal_has_ssh(self._journalctl, self._units),
        )

    # -- delivering

    def _deliver(self, message: str, at: datetime) -> None:
        hit = parse_sshd_message(message)
        if hit is None:
            return
        self.hits += 1
        try:
            self._on_hit(hit, at)
        except Exception:
            log.exception("usage: on_hit failed (the follower goes on)")

    def _file_line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace")
        now = self._clock()
        if self._file_format == "plain":
            self._deliver(text, now)
            return
        tz = self._local_tz or now.astimezone().tzinfo or UTC
        parsed = parse_syslog_line(text, now.year, tz)
        if parsed is None:
            return
        when, message = parsed
        if when is not None and when - now > _ROLLOVER_SLACK:
            # "Dec 31" read on Jan 1: last year's line (an RFC 3339 stamp re-parses the same).
            earlier = parse_syslog_line(text, now.year - 1, tz)
            if earlier is not None and earlier[0] is not None:
                when = earlier[0]
        self._deliver(message, when or now)

    # -- threads

    def _run_file(self, tail: FileTail) -> None:
        try:
            while not self._stop.is_set():
                try:
                    for raw in tail.poll():
                        self._file_line(raw)
                except OSError as exc:
                    log.warning("usage: reading %s failed: %s", tail.path, exc.strerror)
                self._stop.wait(self._poll_s)
        finally:
            tail.close()

    def _journal_argv(self) -> list[str]:
        argv = [self._journalctl, "-f", "-o", "json", "--no-pager", "-n", "0"]
        for unit in self._units:
            argv += ["-u", unit]
        return argv

    def _run_journal(self) -> None:
        # Consecutive restarts without a useful run: the attempt number of the agent's one backoff,
        # used without jitter (a local child process; there is no fleet to spread out).
        restarts = 0
        while not self._stop.is_set():
            started = time.monotonic()
            with self._lock:
                if self._stop.is_set():
                    break
                try:
                    # Own session: stop() ends the whole group, so nothing keeps our pipe open.
                    proc = subprocess.Popen(
                        self._journal_argv(),
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                except OSError as exc:
                    log.warning("usage: cannot run %s: %s", self._journalctl, exc.strerror)
                    proc = None
                self._proc = proc
            if proc is not None:
                got_lines = self._read_journal(proc)
                with self._lock:
                    self._proc = None
                _end_process_group(proc, 1.0)
                if self._stop.is_set():
                    break
                if got_lines or time.monotonic() - started > 60:
                    restarts = 0
            delay = backoff_ceiling(restarts, base=self._backoff_min, cap=self._backoff_max)
            if proc is not None:
                log.warning(
                    "usage: journalctl exited (status %s); restarting in %.0f s", proc.returncode, delay
                )
            self._stop.wait(delay)
            restarts += 1

    def _read_journal(self, proc: subprocess.Popen[bytes]) -> bool:
        stream: IO[bytes] | None = proc.stdout
        assert stream is not None
        got_lines = False
        skipping = False
        with stream:
            while True:
                raw = stream.readline(_MAX_LINE)
                if not raw:
                    return got_lines
                complete = raw.endswith(b"\n")
                if skipping or not complete:  # an overlong line: drop it to its end
                    skipping = not complete
                    continue
                got_lines = True
                parsed = parse_journal_json(raw)
                if parsed is not None:
                    self._deliver(parsed[1], parsed[0])


def _end_process_group(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """TERM then KILL the group we started with ``start_new_session`` (pgid == its pid), and reap."""
    if proc.poll() is None:
        for sig, wait_s in ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
    else:
        # The leader is gone; a leftover child could still hold the pipe open.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log.warning("usage: journalctl (pid %d) did not exit", proc.pid)
