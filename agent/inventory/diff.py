"""Diff two inventories into contract events (agent-api.md 5.3). Pure.

A key is identified by (kind, user, path, fingerprint). The same key may stand on several
lines of one file; the multiset of those lines is compared, so adding a duplicate line is a
`key_added` and removing one is a `key_removed`. Same identity with other options, comment,
effectiveness or managed_by is a `key_changed`. The caller supplies event ids and the time;
the outbox assigns `seq`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from agent.inventory.model import Event, EventType, Inventory, KeyRecord, ScanError
from agent.inventory.revocation import krl_change, principals_changes

Identity = tuple[str, str | None, str, str]


@dataclass(frozen=True)
class Change:
    type: EventType
    user: str | None
    path: str | None
    fingerprint: str | None
    key: KeyRecord | None
    detail: dict[str, object]


def _group(keys: Iterable[KeyRecord]) -> dict[Identity, list[KeyRecord]]:
    grouped: dict[Identity, list[KeyRecord]] = defaultdict(list)
    for record in keys:
        grouped[record.identity].append(record)
    return grouped


def _observable(record: KeyRecord) -> tuple[object, ...]:
    """What counts as a change of an existing key (line numbers shifting does not)."""
    return (
        tuple(sorted(record.options.items(), key=lambda kv: kv[0])),
        record.comment,
        record.effective,
        record.ineffective_reason,
        record.managed_by,
        record.expires_at,
        record.revoked,
    )


def diff_keys(
    old: Iterable[KeyRecord], new: Iterable[KeyRecord], *, paths: Iterable[str] | None = None
) -> list[Change]:
    """Changes from `old` to `new`. With `paths`, only keys in those files are compared
    (a partial rescan re-reads just the changed files)."""
    scope = set(paths) if paths is not None else None
    old_g = _group(k for k in old if scope is None or k.path in scope)
    new_g = _group(k for k in new if scope is None or k.path in scope)
    changes: list[Change] = []
    for ident in sorted(set(old_g) | set(new_g), key=lambda i: tuple(str(p) for p in i)):
        before = old_g.get(ident, [])
        after = new_g.get(ident, [])
        common = min(len(before), len(after))
        for old_rec, new_rec in zip(before[:common], after[:common], strict=True):
            if _observable(old_rec) != _observable(new_rec):
                changes.append(_change("key_changed", new_rec, {"line": new_rec.line}))
        for new_rec in after[common:]:
            changes.append(_change("key_added", new_rec, {"line": new_rec.line}))
        for old_rec in before[common:]:
            changes.append(_change("key_removed", old_rec, {"line": old_rec.line}))
    # In file order: several lines appended within one debounce window arrive as written.
    changes.sort(key=lambda c: (c.path or "", _line(c)))
    return changes


def _line(change: Change) -> int:
    line = change.detail.get("line")
    return line if isinstance(line, int) else 0


def _change(kind: EventType, record: KeyRecord, detail: dict[str, object]) -> Change:
    if record.managed_by:
        detail = {**detail, "managed_by": record.managed_by}
    return Change(kind, record.user, record.path, record.fingerprint, record, detail)


def diff_errors(old: Iterable[ScanError], new: Iterable[ScanError]) -> list[Change]:
    """A file that newly became unreadable (or unreadable for another reason)."""
    seen = {(e.path, e.error) for e in old}
    return [
        Change("file_unreadable", e.user, e.path, None, None, {"error": e.error})
        for e in new
        if e.line is None and (e.path, e.error) not in seen
    ]


def diff_inventories(
    old: Inventory | None, new: Inventory, *, paths: Iterable[str] | None = None
) -> list[Change]:
    if old is None:
        return []
    changes = diff_keys(old.keys, new.keys, paths=paths)
    changes += diff_errors(old.errors, new.errors)
    if old.sshd != new.sshd:
        changes.append(
            Change(
                "sshd_config_changed",
                None,
                None,
                None,
                None,
                {"before": old.sshd.to_json(), "after": new.sshd.to_json()},
            )
        )
    changes += diff_trust(old, new)
    return changes


def diff_trust(old: Inventory, new: Inventory) -> list[Change]:
    """The KRL's and the principals files' changes, as `sshd_config_changed` events with the file
    as `path` and `detail.directive` naming which (the contract has no event type of their own)."""
    changes: list[Change] = []
    krl = krl_change(old.krl, new.krl)
    if krl is not None:
        where = new.krl or old.krl
        changes.append(Change("sshd_config_changed", None, where.path if where else None, None, None, krl))
    for user, path, detail in principals_changes(old.principals, new.principals):
        changes.append(Change("sshd_config_changed", user, path, None, None, detail))
    return changes


def to_events(changes: Iterable[Change], *, at: datetime, new_id: Callable[[], str]) -> list[Event]:
    """Materialise changes as events; seq 0 is a placeholder the outbox replaces."""
    return [
        Event(
            id=new_id(),
            seq=0,
            at=at,
            type=c.type,
            user=c.user,
            path=c.path,
            fingerprint=c.fingerprint,
            key=c.key,
            detail=dict(c.detail),
        )
        for c in changes
    ]
