"""`sshklm-agent reload`: make the running daemon re-read its configuration, and wait until it has.

The unit's `ExecReload=`: systemd 252 (Debian 12) has no `Type=notify-reload` and returns from
`systemctl reload` as soon as ExecReload exits, so a bare `kill -HUP` would return before the
daemon had read anything. This command sends SIGHUP and waits for the daemon's acknowledgement in
its published status (`last_reload`, stamped with the CLOCK_MONOTONIC time the daemon started
reading the file, so an earlier or concurrent reload is never taken for this one).

A file that does not load, or that `run` would refuse (agent/commands/preflight.py, the one
validation), is refused here before the daemon is disturbed: a user mistake like any other
command's, one line and exit 2; the running configuration stays. Exit codes: 0 applied, 1 the
daemon refused or failed it (it keeps its configuration), 2 the file is wrong, 3 no agent running.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from agent.commands import UsageError
from agent.commands.preflight import check_config, errors
from agent.commands.status import assess, read_status
from agent.config import ConfigError, load_config
from agent.daemon.notify import monotonic_usec

EXIT_APPLIED = 0
EXIT_REFUSED = 1
EXIT_NOT_RUNNING = 3
POLL_S = 0.1


def reload_acknowledged(status: dict[str, Any] | None, signalled_usec: int) -> dict[str, Any] | None:
    """The daemon's record of a reload that began at or after `signalled_usec`, else None. Pure."""
    if not status:
        return None
    last = status.get("last_reload")
    if not isinstance(last, dict):
        return None
    started = last.get("started_usec")
    if not isinstance(started, int) or started < signalled_usec:
        return None
    return last


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cmd_reload(
    config_path: str | None,
    *,
    pid: int | None,
    timeout_s: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    refused = "reload refused, keeping the running configuration: "
    try:
        config, _ = load_config(config_path)
    except ConfigError as exc:
        raise UsageError(refused + "; ".join(exc.problems)) from None
    problems = errors(check_config(config))
    if problems:
        raise UsageError(refused + "; ".join(str(p) for p in problems))
    state_dir = config.state.dir
    status = read_status(state_dir)
    if pid is None:
        if status is None or not assess(status, datetime.now(UTC)):
            print("sshklm-agent: no running agent to reload (see: sshklm-agent status)", file=sys.stderr)
            return EXIT_NOT_RUNNING
        pid = int(status["pid"])
    signalled = monotonic_usec()
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        print(f"sshklm-agent: no process {pid} to reload", file=sys.stderr)
        return EXIT_NOT_RUNNING
    deadline = clock() + timeout_s
    while True:
        status = read_status(state_dir)
        if status is not None and status.get("pid") not in (None, pid):
            print(
                f"sshklm-agent: the status in {state_dir} is not process {pid}'s "
                "(state.dir changed? it applies on restart: systemctl restart sshklm-agent)",
                file=sys.stderr,
            )
            return EXIT_REFUSED
        done = reload_acknowledged(status, signalled)
        if done is not None:
            if done.get("result") == "applied":
                print(f"sshklm-agent: configuration reloaded (generation {done.get('generation')})")
                return EXIT_APPLIED
            print(f"sshklm-agent: {done.get('detail') or done.get('result')}", file=sys.stderr)
            return EXIT_REFUSED
        if not _alive(pid):
            print(f"sshklm-agent: process {pid} exited during the reload", file=sys.stderr)
            return EXIT_REFUSED
        if clock() >= deadline:
            print(
                f"sshklm-agent: no acknowledgement from process {pid} within {timeout_s:.0f} s",
                file=sys.stderr,
            )
            return EXIT_REFUSED
        sleep(POLL_S)
