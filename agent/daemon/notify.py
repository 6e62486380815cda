"""systemd service notifications (sd_notify(3)) for a `Type=notify` unit.

Built on `sdnotify.SystemdNotifier`, which connects an AF_UNIX datagram socket to
NOTIFY_SOCKET once, in its constructor (so create the Notifier after the environment is
final), maps a leading `@` to the abstract namespace, encodes text as latin-1 and swallows
every error. Multi-field messages (`RELOADING=1\\nMONOTONIC_USEC=...`) are one datagram of
newline-separated assignments, which `notify()` sends as is, so sdnotify serves every
message here.

The one trap is the encoding: a non-latin-1 character makes sdnotify drop the whole
datagram silently. STATUS text is therefore sanitised to printable ASCII, one line, at most
STATUS_MAX_CHARS characters. Without NOTIFY_SOCKET every method is a cheap no-op.

systemd 252 (Debian 12) has no Type=notify-reload: on reload the daemon sends `reloading()`
and then `ready()` again once the new configuration is in effect.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

import sdnotify

STATUS_MAX_CHARS = 200


def sanitize_status(text: str) -> str:
    """One line of printable ASCII, at most STATUS_MAX_CHARS characters: newlines and tabs
    become spaces (a newline would start a new assignment in the datagram), other
    non-printable or non-ASCII characters become '?'."""
    chars = []
    for ch in text:
        if ch in "\r\n\t":
            chars.append(" ")
        elif " " <= ch <= "~":
            chars.append(ch)
        else:
            chars.append("?")
    line = " ".join("".join(chars).split())
    if len(line) > STATUS_MAX_CHARS:
        line = line[: STATUS_MAX_CHARS - 3] + "..."
    return line


def watchdog_interval_from_env(environ: Mapping[str, str], pid: int) -> float | None:
    """WatchdogSec in seconds from WATCHDOG_USEC, or None when the watchdog is off or meant
    for another process (WATCHDOG_PID present and not `pid`). Ping at half this interval."""
    raw = environ.get("WATCHDOG_USEC")
    if not raw:
        return None
    watchdog_pid = environ.get("WATCHDOG_PID")
    if watchdog_pid:
        try:
            if int(watchdog_pid) != pid:
                return None
        except ValueError:
            return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """Sends READY/STATUS/WATCHDOG/RELOADING/STOPPING to systemd (no-op without NOTIFY_SOCKET)."""

    def __init__(self) -> None:
        # os.environ, not an injected mapping: SystemdNotifier reads NOTIFY_SOCKET from it.
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        # SystemdNotifier reads os.environ itself; with no socket it would only keep a dead
        # object around, so skip it.
        self._notifier: sdnotify.SystemdNotifier | None = sdnotify.SystemdNotifier() if self.enabled else None

    def _send(self, message: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(message)

    def ready(self, status: str | None = None) -> None:
        message = "READY=1"
        if status is not None:
            message += f"\nSTATUS={sanitize_status(status)}"
        self._send(message)

    def status(self, text: str) -> None:
        self._send(f"STATUS={sanitize_status(text)}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def reloading(self) -> None:
        """Start of a reload; MONOTONIC_USEC lets systemd order it against the READY=1 that
        ends it (required by Type=notify-reload, harmless for Type=notify)."""
        self._send(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec()}")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def watchdog_interval(self) -> float | None:
        return watchdog_interval_from_env(os.environ, os.getpid())
