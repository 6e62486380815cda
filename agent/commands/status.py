"""`sshklm-agent status`: what the daemon last recorded about itself. No server call, no secrets.
The screen (`render`), the document itself (`--json`), or its metrics (`--prometheus`: agent/metrics.py)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from agent.commands import UsageError
from agent.config import Config
from agent.inventory.model import parse_rfc3339
from agent.metrics import render as render_metrics
from agent.timefmt import duration

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


def _ago(value: object, now: datetime) -> str:
    """`2026-12-04T12:00:00Z (3 min ago)`, or `never`."""
    if not isinstance(value, str):
        return "never"
    try:
        seconds = (now - parse_rfc3339(value)).total_seconds()
    except ValueError:
        return value
    if seconds < 0:
        return f"{value} (in {duration(-seconds)})"
    return f"{value} ({duration(seconds)} ago)"


LABEL = 14  # every row's value starts in this column


def _table(rows: Sequence[tuple[str, str]]) -> list[str]:
    """`name value` rows, the values aligned after the longest name."""
    width = max((len(name) for name, _ in rows), default=0) + 1
    return [f"{name:<{width}}{value}".rstrip() for name, value in rows]


def _rows(rows: Sequence[tuple[str, str]]) -> list[str]:
    """The screen's rows: `label:` then the value in column LABEL."""
    return [f"{label:<{LABEL}}{value}".rstrip() for label, value in rows]


def _block(label: str, rows: Sequence[tuple[str, str]]) -> list[str]:
    """A labelled sub-table (delivered kinds, jobs): its first line carries the label."""
    return [f"{label if i == 0 else '':<{LABEL}}{line}" for i, line in enumerate(_table(rows))]


def _error_text(error: dict[str, Any]) -> str:
    status = f" (HTTP {error['http_status']})" if error.get("http_status") is not None else ""
    return f"{error.get('kind')}: {error.get('code')}{status}: {error.get('message')}"


def _reporting_rows(status: dict[str, Any], now: datetime) -> list[tuple[str, str]]:
    """Why this host is (not) reporting: the state, the last error, the server's last answer,
    when the next try goes, and what was delivered when."""
    reporting = status.get("reporting") or {}
    rows: list[tuple[str, str]] = []
    failing = {k: v for k, v in (reporting.get("failing") or {}).items() if isinstance(v, dict)}
    deliveries = {k: v for k, v in (reporting.get("deliveries") or {}).items() if isinstance(v, dict)}
    if failing:
        since = min(str(v.get("since")) for v in failing.values())
        calls = sum(int(v.get("calls") or 0) for v in failing.values())
        rows.append(
            (
                "reporting:",
                f"FAILING since {_ago(since, now)}: {', '.join(sorted(failing))} ({calls} failed calls)",
            )
        )
    elif deliveries:
        rows.append(("reporting:", f"ok, last delivery {_ago(status.get('last_delivery_at'), now)}"))
    else:
        first = (status.get("next_jobs") or {}).get("heartbeat")
        wait = f": first contact {_ago(first, now)} (start-up splay)" if first else ""
        rows.append(("reporting:", "nothing delivered yet" + wait))
    error = reporting.get("last_error")
    if isinstance(error, dict):
        rows.append(("last error:", f"{_ago(error.get('at'), now)} {_error_text(error)}"))
    answer = reporting.get("server_answer")
    if isinstance(answer, dict):
        code = f" {answer['code']}" if answer.get("code") else ""
        rows.append(
            ("server said:", f"HTTP {answer.get('http_status')}{code} at {_ago(answer.get('at'), now)}")
        )
    elif failing or deliveries:
        rows.append(("server said:", "nothing yet (no answer received)"))
    retry = reporting.get("next_retry_at")
    if retry:
        rows.append(("next try:", f"{_ago(retry, now)} (delivery backoff)"))
    channel = status.get("instructions")
    if isinstance(channel, dict) and channel.get("next_retry_at"):
        rows.append(("next try:", f"{_ago(channel['next_retry_at'], now)} (instructions backoff)"))
    return rows


def _delivered(status: dict[str, Any], now: datetime) -> list[str]:
    deliveries = (status.get("reporting") or {}).get("deliveries") or {}
    rows = []
    for kind in ("inventory", "events", "heartbeat", "instructions", "results", "policy", "scan_result"):
        record = deliveries.get(kind)
        if not isinstance(record, dict):
            if kind in ("inventory", "events", "heartbeat"):
                rows.append((kind, "never"))
            continue
        count = record.get("count")
        suffix = f", {count} events" if kind == "events" and isinstance(count, int) else ""
        rows.append((kind, _ago(record.get("at"), now) + suffix))
    return _block("delivered:", rows)


def render(status: dict[str, Any], now: datetime | None = None) -> str:
    """One screen, the answer to "why is this host not reporting?" first."""
    now = now or datetime.now(UTC)
    watch = status.get("watch") or {}
    mode = status.get("mode")
    pid = f", pid {status['pid']}" if status.get("running") and status.get("pid") else ""
    rows: list[tuple[str, str]] = [
        (
            "agent:",
            f"{'running' if status.get('running') else 'not running'} (version {status.get('version')}{pid})",
        )
    ]
    if mode == "standalone":
        rows.append(("mode:", "standalone (no server.url): changes are logged, nothing is sent"))
    elif mode == "enrolled":
        rows.append(("mode:", f"enrolled: host {status.get('host_id')}, server {status.get('server')}"))
    else:
        rows.append(
            ("mode:", f"{status.get('link_problem') or 'not connected'} (server {status.get('server')})")
        )
    if mode == "enrolled":
        rows.extend(_reporting_rows(status, now))
    oldest = status.get("outbox_oldest_at")
    waiting = f"{status.get('outbox')} events waiting"
    if status.get("outbox") and isinstance(oldest, str):
        waiting += f", the oldest since {_ago(oldest, now)}"
    dropped = status.get("outbox_dropped")
    if isinstance(dropped, dict) and dropped.get("total"):
        waiting += f"; {dropped['total']} dropped over its bound (state.outbox_max_events)"
    rows.append(("outbox:", waiting))
    revocation = status.get("revocation")
    if isinstance(revocation, dict):
        rows.append(("revocation:", _revocation_text(revocation)))
    lines = _rows(rows)
    if mode == "enrolled":
        lines.extend(_delivered(status, now))
    tail: list[tuple[str, str]] = [
        (
            "last scan:",
            f"{_ago(status.get('last_scan_at'), now)}: "
            f"{status.get('keys')} keys, {status.get('problems')} problems",
        ),
        (
            "watching:",
            f"{watch.get('targets_inotify', 0)} files by inotify, {watch.get('targets_polled', 0)} polled"
            + (f" ({watch.get('polling_reasons')})" if watch.get("targets_polled") else ""),
        ),
    ]
    if mode == "enrolled":
        tail.append(
            ("auth:", f"{status.get('auth_state')}, token expires {status.get('token_expires_at') or '-'}")
        )
    if status.get("last_error"):
        tail.append(("agent error:", str(status["last_error"])))
    lines.extend(_rows(tail))
    jobs = sorted((status.get("next_jobs") or {}).items())
    if jobs:
        lines.extend(_block("next jobs:", [(job, str(when or "-")) for job, when in jobs]))
    return "\n".join(lines)


def cmd_status(config: Config, *, as_json: bool, prometheus: bool = False) -> int:
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
    now = datetime.now(UTC)
    if status is None:
        status = {"running": False, "mode": None, "note": "the agent has not run on this host yet"}
        if prometheus:
            print(render_metrics(status, now), end="")
        else:
            print(json.dumps(status) if as_json else "agent: not running (no state yet)")
        return 3
    status["running"] = assess(status, now)
    if prometheus:
        print(render_metrics(status, now), end="")
    elif as_json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print(render(status, now))
    return 0 if status["running"] else 3


def _revocation_text(revocation: dict[str, Any]) -> str:
    """The KRL row: its state first, and loudly when sshd refuses every public key because of it."""
    state = revocation.get("state")
    if state == "not_configured":
        return "not configured (sshd names no RevokedKeys)"
    where = revocation.get("path") or "?"
    if state == "ok":
        return f"ok, {revocation.get('entries', 0)} entries in {where}"
    text = f"{str(state).upper()}: {where}"
    if state in ("missing", "invalid", "unreadable"):
        text += ": sshd refuses EVERY public key until it is repaired"
    if revocation.get("problem"):
        text += f" ({revocation['problem']})"
    return text
