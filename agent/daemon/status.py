"""The daemon's status: the document `sshklm-agent status` reads from the state store and the one
line systemd shows (sd_notify STATUS). Pure: every value is passed in. Never a secret.

Every field is described in docs/status.md (a test keeps the two in step).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from agent import __version__
from agent.inventory.evaluate import RISK_WEIGHTS
from agent.inventory.model import KEY_KINDS, Inventory, rfc3339

JSON = dict[str, Any]


def mode_of(link: Mapping[str, Any] | None) -> str:
    """standalone (no server.url), enrolled (credentials in use), or not connected (a server.url,
    but no usable credentials or URL: `link_problem` says why)."""
    if link is None:
        return "standalone"
    return "enrolled" if link.get("host_id") else "not connected"


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
    outbox_oldest_at: datetime | None = None,
    outbox_dropped: Mapping[str, Any] | None = None,
    reporting: Mapping[str, Any] | None = None,
    retry_at: datetime | None = None,
    config_generation: int = 0,
    last_reload: Mapping[str, Any] | None = None,
    counters: Mapping[str, Any] | None = None,
) -> JSON:
    """`link`: the server link's own fields (enrolled mode), None in standalone mode; `reporting`:
    the LinkHealth snapshot (deliveries, failures, the server's last answer); `retry_at`: when the
    sender tries again after a failed delivery; `outbox_dropped`: what the outbox bound has cost
    (store/outbox.py `dropped()`); `config_generation` and `last_reload`: SIGHUP reloads applied
    since start and the outcome of the last one (what `sshklm-agent reload` waits for); `counters`:
    what the metrics count (daemon/counters.py `snapshot()`)."""
    summary = inventory_summary(inventory)
    return {
        "running": running,
        "pid": pid,
        "version": __version__,
        "mode": mode_of(link),
        "started_at": rfc3339(started_at),
        "updated_at": rfc3339(now),
        "last_scan_at": rfc3339(last_scan_at),
        "keys": len(inventory.keys) if inventory else 0,
        "problems": len(inventory.errors) if inventory else 0,
        "key_counts": summary["key_counts"] if summary else None,
        "risk_factors": summary["risk_factors"] if summary else None,
        "revocation": revocation_status(inventory),
        "outbox": outbox,
        "outbox_oldest_at": rfc3339(outbox_oldest_at),
        "outbox_dropped": _jsonable(dict(outbox_dropped)) if outbox_dropped is not None else None,
        "watch": _jsonable(dict(watch)),
        "last_error": last_error,
        "next_jobs": dict(next_jobs),
        "config_generation": config_generation,
        "last_reload": dict(last_reload) if last_reload is not None else None,
        "counters": _jsonable(dict(counters)) if counters is not None else None,
        "last_delivery_at": _last_delivery(reporting),
        "reporting": (
            {**_jsonable(dict(reporting)), "next_retry_at": rfc3339(retry_at)}
            if reporting is not None
            else None
        ),
        **(link or {}),
    }


# The summary of the last inventory summarised, by its snapshot id: the document is built every
# 10 seconds and an inventory of 100,000 keys changes far less often.
_summary: tuple[str, JSON] | None = None


def inventory_summary(inventory: Inventory | None) -> JSON | None:
    """Keys by kind and effectiveness, and keys by risk factor (every factor of the risk model,
    0 when no key has it; policy violations as `policy:<rule>` when some key has one)."""
    global _summary
    if inventory is None:
        return None
    cached = _summary
    if cached is not None and cached[0] == inventory.snapshot_id:
        return cached[1]
    kinds: dict[str, dict[str, int]] = {kind: {"effective": 0, "ineffective": 0} for kind in KEY_KINDS}
    factors: dict[str, int] = dict.fromkeys(RISK_WEIGHTS, 0)
    for record in inventory.keys:
        counts = kinds.setdefault(record.kind, {"effective": 0, "ineffective": 0})
        counts["effective" if record.effective else "ineffective"] += 1
        for factor in record.risk.factors:
            factors[factor] = factors.get(factor, 0) + 1
    summary: JSON = {"key_counts": kinds, "risk_factors": factors}
    _summary = (inventory.snapshot_id, summary)
    return summary


def _last_delivery(reporting: Mapping[str, Any] | None) -> str | None:
    """When the server last accepted anything from this host (any kind), or None."""
    reporting = reporting or {}
    records = (reporting.get("deliveries") or {}).values()
    times: list[str] = [v["at"] for v in records if isinstance(v, dict) and isinstance(v.get("at"), str)]
    return max(times) if times else None


def summary_line(status: Mapping[str, Any]) -> str:
    """The status in one line (systemd's STATUS, the ready message)."""
    watch = status.get("watch") or {}
    watched = watch.get("targets_inotify", 0) + watch.get("targets_polled", 0) if watch else 0
    parts = [f"{watched} files watched", f"{status['keys']} keys", f"outbox {status['outbox']}"]
    reporting = status.get("reporting") or {}
    failing = reporting.get("failing") or {}
    if failing:
        since = min(str(v.get("since")) for v in failing.values() if isinstance(v, dict))
        parts.append(f"control plane failing since {since}")
    elif status.get("last_delivery_at"):
        parts.append(f"last delivery {status['last_delivery_at']}")
    if status.get("mode") == "not connected" and status.get("link_problem"):
        parts.append(str(status["link_problem"]))
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
        return {"state": "not_configured", "path": None, "entries": 0, "version": None, "problem": None}
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
