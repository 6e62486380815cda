"""`sshklm-agent status`: what the daemon last recorded about itself. No server call, no secrets."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

from agent.commands import UsageError
from agent.config import Config
from agent.inventory.model import parse_rfc3339

STALE_AFTER_S = 60  # the daemon writes its status every 10 s


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    return b"sshklm" in cmdline or b"agent" in cmdline


def read_status(state_dir: str) -> dict[str, Any] | None:
    from agent.store.db import open_database
    from agent.store.state import StateStore

    if not os.path.exists(os.path.join(state_dir, "agent.db")):
        return None
    db = open_database(state_dir, check_integrity=False)
    try:
        return StateStore(db).get_status()
    finally:
        db.close()


def assess(status: dict[str, Any], now: datetime) -> bool:
    """Running = the recorded pid is alive and the status is fresh."""
    if not status.get("running"):
        return False
    updated = status.get("updated_at")
    fresh = isinstance(updated, str) and (now - parse_rfc3339(updated)).total_seconds() < STALE_AFTER_S
    return fresh and _pid_alive(status.get("pid"))


def render(status: dict[str, Any]) -> str:
    watch = status.get("watch") or {}
    lines = [
        f"agent:        {'running' if status['running'] else 'not running'} "
        f"(version {status.get('version')})",
        f"mode:         {status.get('mode')}"
        + (f", host {status['host_id']}" if status.get("host_id") else ""),
        f"last scan:    {status.get('last_scan_at') or 'never'}  ({status.get('keys')} keys, "
        f"{status.get('problems')} problems)",
        f"last report:  {status.get('last_report_at') or 'never'}",
        f"outbox:       {status.get('outbox')} events waiting",
        f"watching:     {watch.get('targets_inotify', 0)} files by inotify, "
        f"{watch.get('targets_polled', 0)} polled"
        + (f" ({watch.get('polling_reasons')})" if watch.get("targets_polled") else ""),
    ]
    if status.get("mode") == "enrolled":
        lines.append(
            f"auth:         {status.get('auth_state')}, token expires {status.get('token_expires_at') or '-'}"
        )
    if status.get("link_problem"):
        lines.append(f"server:       {status['link_problem']}")
    lines.append(f"last error:   {status.get('last_error') or 'none'}")
    for job, when in sorted((status.get("next_jobs") or {}).items()):
        lines.append(f"next {job + ':':<13}{when}")
    return "\n".join(lines)


def cmd_status(config: Config, *, as_json: bool) -> int:
    state_dir = config.state.dir
    if os.path.isdir(state_dir) and not os.access(state_dir, os.R_OK | os.X_OK):
        raise UsageError(f"cannot read the agent's state in {state_dir}: permission denied: run as root")
    try:
        status = read_status(config.state.dir)
    except Exception as exc:  # unreadable state is a status answer, not a crash
        print(
            f"sshklm-agent: cannot read state in {config.state.dir}: {type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return 1
    if status is None:
        status = {"running": False, "mode": None, "note": "the agent has not run on this host yet"}
        print(json.dumps(status) if as_json else "agent: not running (no state yet)")
        return 3
    status["running"] = assess(status, datetime.now(UTC))
    print(json.dumps(status, indent=2, sort_keys=True) if as_json else render(status))
    return 0 if status["running"] else 3
