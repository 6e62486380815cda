"""The daemon's status: the document `sshklm-agent status` reads from the state store and the one
line systemd shows (sd_notify STATUS). Pure: every value is passed in. Never a secret."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from agent import __version__
from agent.inventory.model import Inventory, rfc3339

JSON = dict[str, Any]


def status_document(
    *,
    running: bool,
    pid: int,
    now: datetime,
    started_at: datetime,
    last_scan_at: datetime | None,
    inventory: Inventory | None,
    outbox: int | None,
    watch: Mapping[str, Any],
    last_error: str | None,
    next_jobs: Mapping[str, str | None],
    link: Mapping[str, Any] | None,
) -> JSON:
    """`link`: the server link's own fields (enrolled mode), None in standalone mode."""
    return {
        "running": running,
        "pid": pid,
        "version": __version__,
        "mode": "enrolled" if link is not None else "standalone",
        "started_at": rfc3339(started_at),
        "updated_at": rfc3339(now),
        "last_scan_at": rfc3339(last_scan_at),
        "keys": len(inventory.keys) if inventory else 0,
        "problems": len(inventory.errors) if inventory else 0,
        "revocation": revocation_status(inventory),
        "outbox": outbox,
        "watch": _jsonable(dict(watch)),
        "last_error": last_error,
        "next_jobs": dict(next_jobs),
        **(link or {}),
    }


def summary_line(status: Mapping[str, Any]) -> str:
    """The status in one line (systemd's STATUS, the ready message)."""
    watch = status.get("watch") or {}
    watched = watch.get("targets_inotify", 0) + watch.get("targets_polled", 0) if watch else 0
    parts = [f"{watched} files watched", f"{status['keys']} keys", f"outbox {status['outbox']}"]
    if status.get("last_report_at"):
        parts.append(f"last report {status['last_report_at']}")
    revocation = status.get("revocation") or {}
    if revocation.get("state") in ("missing", "invalid", "unreadable"):
        parts.append(f"KRL {revocation['state']}: sshd refuses every public key")
    if status.get("last_error"):
        parts.append(f"last error: {status['last_error']}")
    return "; ".join(parts)


def revocation_status(inventory: Inventory | None) -> JSON | None:
    """sshd's key revocation list as the last scan found it: `state` "ok", "not_configured" (no
    RevokedKeys), "unchecked", or "missing" / "invalid" / "unreadable" (sshd refuses every public
    key: the agent reports it at once and rewrites the KRL at the next revocation instruction)."""
    if inventory is None:
        return None
    krl = inventory.krl
    if krl is None:
        return {"state": "not_configured", "path": None, "entries": 0, "problem": None}
    return {
        "state": krl.status,
        "path": krl.path,
        "entries": krl.contents.entries if krl.contents else 0,
        "version": krl.contents.version if krl.contents else None,
        "problem": krl.problem,
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)
