"""The administrator's view of a host's keys (`GET /v1/keys`): its last inventory with the change
events that arrived since applied to it, as a real control plane would keep it. Pure.

A key is identified as the agent identifies it (kind, user, path, fingerprint) plus its line. An
event older than the inventory (`at` before its `collected_at`) is already in it and is skipped; an
event is applied idempotently (an added key already at its line is replaced, not doubled), since
the agent delivers events at least once and an inventory may overtake events still queued.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

JSON = dict[str, Any]
KEY_EVENTS = frozenset({"key_added", "key_removed", "key_changed"})


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _identity(record: JSON) -> tuple[Any, ...]:
    return (record.get("kind"), record.get("user"), record.get("path"), record.get("fingerprint"))


def _find(keys: list[JSON], record: JSON) -> int | None:
    """The index of the same key on the same line, else of the same key on any line."""
    same = [i for i, k in enumerate(keys) if _identity(k) == _identity(record)]
    exact = [i for i in same if keys[i].get("line") == record.get("line")]
    return (exact or same or [None])[0]


def apply_events(keys: list[JSON], events: list[JSON], collected_at: str | None) -> list[JSON]:
    """`keys` (an inventory's) with the key events applied in order; a new list."""
    out = [dict(k) for k in keys]
    since = _time(collected_at)
    for event in events:
        record = event.get("key")
        if event.get("type") not in KEY_EVENTS or not isinstance(record, dict):
            continue
        at = _time(event.get("at"))
        if since is not None and at is not None and at < since:
            continue
        index = _find(out, record)
        if event["type"] == "key_removed":
            if index is not None:
                del out[index]
        elif event["type"] == "key_added":
            exact = index is not None and out[index].get("line") == record.get("line")
            if exact and index is not None:
                out[index] = dict(record)
            else:
                out.append(dict(record))
        elif index is not None:  # key_changed
            out[index] = dict(record)
        else:
            out.append(dict(record))
    return out


def expired_grants(events: list[JSON]) -> list[str]:
    """The grants whose key the agent removed at expiry (its `instruction_applied` events)."""
    return [
        str(e["detail"]["grant_id"])
        for e in events
        if e.get("type") == "instruction_applied"
        and isinstance(e.get("detail"), dict)
        and e["detail"].get("action") == "ephemeral_expiry"
        and isinstance(e["detail"].get("grant_id"), str)
    ]
