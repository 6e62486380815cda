"""The outbox: change events waiting for delivery to the control plane (contract section 5.3).

Semantics
- `append` is durable: once it returns, the events survive kill -9 and power loss
  (one transaction, WAL + synchronous=FULL).
- The outbox assigns `seq`: a strictly increasing integer, persisted (SQLite AUTOINCREMENT),
  never reused even after every row is acked. Delivery order is seq order; the client sends
  `peek()` batches and `ack()`s the ids the server accepted, so delivery is at-least-once and
  the server drops ids it has already seen.
- An event is stored without its `seq` key; `peek` returns it with `seq` filled in from the row.
- Appending an id that is still pending is a no-op (the first copy keeps its seq).

Collapse (long outages): the bound holds for every event type
- `collapse_if_over(max_events, make_inventory_marker, low_water=None)`: when more than
  `max_events` events are pending, events go until at most `low_water` (default `max_events`)
  remain, in this order:
  1. every event a full inventory supersedes (SUPERSEDED_BY_INVENTORY: the keys present, their
     options, unreadable files, the sshd summary);
  2. `key_used` events are merged: one per (user, fingerprint, source address), the newest, its
     `detail` gaining `count` (how many logins it stands for, earlier merges included) and
     `first_at` (the first one's time). The inventory's `last_used` keeps only the last login per
     key; the merge keeps who logged in from where;
  3. the oldest `key_used` events (a flood of log lines, real or forged, costs the flood);
  4. the oldest of the rest (instruction_* events, an audit echo of results already posted to
     /v1/instructions/{jti}/result).
  ONE marker row is stored (see below), and what was lost is counted by type: in the marker
  (`dropped`, `dropped_by_type`, until a full inventory went out) and for good in the store (kv
  `outbox_dropped`: `dropped()`, shown by `status`). A merged row counts as the logins it stood
  for. A merged row that a batch in flight already carried may be delivered twice (once without
  its count): delivery is at least once anyway.
- Cost: the number of pending events is kept in memory by this Outbox (one per daemon; another
  instance's appends make it a lower bound until the next collapse recounts), so an append under
  the bound costs no count; a collapse reads the queue once, and with a `low_water` below the
  bound it runs once per (bound - low_water) appends, not on every append at the bound.
- The marker is not an event and `peek` never returns it. The daemon checks
  `full_inventory_marker()` (or `needs_full_inventory()`) before sending events; when set, it
  collects and PUTs a full inventory *after* reading the marker, then calls
  `clear_full_inventory_flag(marker["seq"])`. The seq guard makes the clear safe against a
  second collapse happening while the inventory is in flight: that collapse stores a new
  marker with a higher seq, which survives the clear.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from agent.store.db import Database

JSON = dict[str, Any]

FULL_INVENTORY_MARKER_ID = "full_inventory"

# Event types whose information a full inventory carries (keys present, their options,
# unreadable files, the sshd summary). Not key_used: the inventory keeps the last login of each
# key, not who logged in from where. instruction_* events are an audit echo of results already
# posted to /v1/instructions/{jti}/result; they are kept unless the bound forces them out.
SUPERSEDED_BY_INVENTORY: frozenset[str] = frozenset(
    {"key_added", "key_removed", "key_changed", "file_unreadable", "sshd_config_changed"}
)
KEY_USED = "key_used"
DROPPED_KEY = "outbox_dropped"  # kv: what collapses have lost, for good

_ACK_CHUNK = 500  # well under SQLite's bound-parameter limit


class Outbox:
    """Durable, ordered queue of Event JSON dicts. Thread-safe (all access goes through the
    Database lock)."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock
        self._pending: int | None = None  # pending events as this instance knows them (see Cost)

    def append(self, events: Sequence[JSON]) -> None:
        """Store `events` atomically, assigning each the next seq in list order.

        Each event must have a string `id`; any `seq` it carries is ignored (the outbox is the
        only source of seq). The caller's dicts are not modified.
        """
        rows: list[tuple[str, str | None, str, float]] = []
        now = self._clock()
        for event in events:
            event_id = event.get("id")
            if not isinstance(event_id, str) or not event_id:
                raise ValueError("event without a string id")
            if event_id == FULL_INVENTORY_MARKER_ID:
                raise ValueError("event id is reserved")
            event_type = event.get("type")
            body = {k: v for k, v in event.items() if k != "seq"}
            rows.append(
                (
                    event_id,
                    event_type if isinstance(event_type, str) else None,
                    json.dumps(body, separators=(",", ":"), allow_nan=False),
                    now,
                )
            )
        if not rows:
            return
        with self._db.transaction() as conn:
            added = conn.executemany(
                "INSERT OR IGNORE INTO outbox (id, kind, type, body, created_at) "
                "VALUES (?, 'event', ?, ?, ?)",
                rows,
            ).rowcount
            if self._pending is not None:
                self._pending += max(added, 0)

    def append_bounded(
        self,
        events: Sequence[JSON],
        max_events: int,
        make_inventory_marker: Callable[[int], JSON],
        *,
        low_water: int | None = None,
    ) -> int:
        """`append` and `collapse_if_over` in one transaction: no reader ever sees more than
        `max_events` pending. Returns what the collapse removed (0 under the bound)."""
        with self._db.transaction():
            self.append(events)
            return self.collapse_if_over(max_events, make_inventory_marker, low_water=low_water)

    def peek(self, limit: int = 500) -> list[JSON]:
        """Up to `limit` pending events, oldest (lowest seq) first, each with its `seq`."""
        if limit <= 0:
            return []
        with self._db.reading() as conn:
            rows = conn.execute(
                "SELECT seq, body FROM outbox WHERE kind = 'event' ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        out: list[JSON] = []
        for seq, body in rows:
            event: JSON = json.loads(body)
            event["seq"] = seq
            out.append(event)
        return out

    def ack(self, ids: Sequence[str]) -> int:
        """Remove delivered events by id; unknown ids are ignored. Returns how many were removed."""
        removed = 0
        event_ids = [i for i in ids if i != FULL_INVENTORY_MARKER_ID]
        with self._db.transaction() as conn:
            for start in range(0, len(event_ids), _ACK_CHUNK):
                chunk = event_ids[start : start + _ACK_CHUNK]
                placeholders = ",".join("?" * len(chunk))
                cursor = conn.execute(
                    f"DELETE FROM outbox WHERE kind = 'event' AND id IN ({placeholders})",  # noqa: S608
                    chunk,
                )
                removed += cursor.rowcount
            if self._pending is not None:
                self._pending = max(self._pending - removed, 0)
        return removed

    def depth(self) -> int:
        """Number of pending events (the marker is not counted)."""
        with self._db.reading() as conn:
            return int(conn.execute("SELECT count(*) FROM outbox WHERE kind = 'event'").fetchone()[0])

    def oldest_at(self) -> datetime | None:
        """When the oldest pending row (event or marker) was stored: how long data has waited."""
        with self._db.reading() as conn:
            value = conn.execute("SELECT min(created_at) FROM outbox").fetchone()[0]
        return None if value is None else datetime.fromtimestamp(value, UTC)

    def last_seq(self) -> int:
        """The highest seq ever assigned (0 if none), whether or not still pending."""
        with self._db.reading() as conn:
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        return 0 if row is None else int(row[0])

    def collapse_if_over(
        self, max_events: int, make_inventory_marker: Callable[[int], JSON], *, low_water: int | None = None
    ) -> int:
        """If more than `max_events` events are pending, make room down to `low_water` (default
        `max_events`) as the module docstring says, and store the full-inventory marker, whose
        body is `make_inventory_marker(lost_total)` plus `dropped` (events lost since the marker
        was last cleared) and `dropped_by_type`. Returns how many rows left the queue now
        (merged or dropped; 0 when under the bound: nothing changes)."""
        if max_events < 0:
            raise ValueError("max_events must be >= 0")
        floor = max_events if low_water is None else max(0, min(low_water, max_events))
        if self._pending is not None and self._pending <= max_events:
            return 0
        with self._db.transaction() as conn:
            depth = int(conn.execute("SELECT count(*) FROM outbox WHERE kind = 'event'").fetchone()[0])
            self._pending = depth
            if depth <= max_events:
                return 0
            lost: dict[str, int] = {}
            removed = _drop_types(conn, sorted(SUPERSEDED_BY_INVENTORY), lost)
            merged = _merge_key_used(conn) if depth - removed > floor else 0
            removed += merged
            if depth - removed > floor:
                removed += _drop_oldest(conn, depth - removed - floor, lost, only_type=KEY_USED)
            if depth - removed > floor:
                removed += _drop_oldest(conn, depth - removed - floor, lost, only_type=None)
            self._pending = depth - removed
            self._store_marker(conn, lost, make_inventory_marker)
            self._count_dropped(conn, lost, merged)
            return removed

    def _store_marker(
        self, conn: sqlite3.Connection, lost: dict[str, int], make_inventory_marker: Callable[[int], JSON]
    ) -> None:
        previous = conn.execute(
            "SELECT body, created_at FROM outbox WHERE id = ?", (FULL_INVENTORY_MARKER_ID,)
        ).fetchone()
        by_type = dict(lost)
        first_at = self._clock()
        if previous is not None:
            old = json.loads(previous[0])
            old_by_type = old.get("dropped_by_type")
            if isinstance(old_by_type, dict):
                for name, n in old_by_type.items():
                    by_type[name] = by_type.get(name, 0) + int(n)
            elif old.get("dropped"):  # a marker from before dropped_by_type
                by_type["?"] = by_type.get("?", 0) + int(old["dropped"])
            first_at = float(previous[1])
            conn.execute("DELETE FROM outbox WHERE id = ?", (FULL_INVENTORY_MARKER_ID,))
        total = sum(by_type.values())
        body = dict(make_inventory_marker(total))
        body["dropped"] = total
        body["dropped_by_type"] = by_type
        # A fresh row (new, higher seq) so an in-flight clear of the old marker misses it.
        conn.execute(
            "INSERT INTO outbox (id, kind, type, body, created_at) VALUES (?, 'full_inventory', NULL, ?, ?)",
            (FULL_INVENTORY_MARKER_ID, json.dumps(body, separators=(",", ":"), allow_nan=False), first_at),
        )

    def _count_dropped(self, conn: sqlite3.Connection, lost: dict[str, int], merged: int) -> None:
        row = conn.execute("SELECT value FROM kv WHERE key = ?", (DROPPED_KEY,)).fetchone()
        counts = _dropped_counts(row[0] if row else None)
        for name, n in lost.items():
            counts["by_type"][name] = counts["by_type"].get(name, 0) + n
        counts["total"] += sum(lost.values())
        counts["merged"] += merged
        counts["last_at"] = self._clock()
        conn.execute(
            "INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (DROPPED_KEY, json.dumps(counts, separators=(",", ":"))),
        )

    def dropped(self) -> JSON:
        """What collapses have lost since the database was created: `total` events, `by_type`,
        `merged` (key_used rows folded into another's count, not lost) and `last_at` (epoch
        seconds of the last collapse, or None)."""
        with self._db.reading() as conn:
            row = conn.execute("SELECT value FROM kv WHERE key = ?", (DROPPED_KEY,)).fetchone()
        return _dropped_counts(row[0] if row else None)

    def full_inventory_marker(self) -> JSON | None:
        """The marker's body plus its `seq` and `dropped` count, or None when not set."""
        with self._db.reading() as conn:
            row = conn.execute(
                "SELECT seq, body FROM outbox WHERE id = ?", (FULL_INVENTORY_MARKER_ID,)
            ).fetchone()
        if row is None:
            return None
        marker: JSON = json.loads(row[1])
        marker["seq"] = int(row[0])
        return marker

    def needs_full_inventory(self) -> bool:
        return self.full_inventory_marker() is not None

    def clear_full_inventory_flag(self, through_seq: int | None = None) -> bool:
        """Remove the marker (only if its seq <= `through_seq`, when given). True if removed."""
        with self._db.transaction() as conn:
            if through_seq is None:
                cursor = conn.execute("DELETE FROM outbox WHERE id = ?", (FULL_INVENTORY_MARKER_ID,))
            else:
                cursor = conn.execute(
                    "DELETE FROM outbox WHERE id = ? AND seq <= ?", (FULL_INVENTORY_MARKER_ID, through_seq)
                )
            return cursor.rowcount > 0


# -- the steps of a collapse (inside its transaction) --------------------------------------------


def _drop_types(conn: sqlite3.Connection, types: list[str], lost: dict[str, int]) -> int:
    """Delete every pending event of these types; count them by type into `lost`."""
    placeholders = ",".join("?" * len(types))
    where = f"kind = 'event' AND type IN ({placeholders})"
    for name, n in conn.execute(f"SELECT type, count(*) FROM outbox WHERE {where} GROUP BY type", types):  # noqa: S608
        lost[str(name)] = lost.get(str(name), 0) + int(n)
    return int(conn.execute(f"DELETE FROM outbox WHERE {where}", types).rowcount)  # noqa: S608


def _weight(event: JSON) -> int:
    """How many logins a key_used event stands for (1, or a merged row's count)."""
    detail = event.get("detail")
    n = detail.get("count") if isinstance(detail, dict) else None
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1


def _merge_key_used(conn: sqlite3.Connection) -> int:
    """Merge pending key_used events per (user, fingerprint, source): keep the newest of each,
    with `count` and `first_at`. Returns how many rows were merged away (nothing is lost)."""
    groups: dict[tuple[str, str, str], list[tuple[int, JSON]]] = {}
    rows = conn.execute(
        "SELECT seq, body FROM outbox WHERE kind = 'event' AND type = ? ORDER BY seq", (KEY_USED,)
    )
    for seq, body in rows:
        event: JSON = json.loads(body)
        detail = event.get("detail")
        source = detail.get("from") if isinstance(detail, dict) else None
        key = (str(event.get("user")), str(event.get("fingerprint")), str(source))
        groups.setdefault(key, []).append((int(seq), event))
    gone: list[tuple[int]] = []
    for members in groups.values():
        if len(members) < 2:
            continue
        seq, newest = members[-1]
        detail = dict(newest["detail"]) if isinstance(newest.get("detail"), dict) else {}
        firsts = [_first_at(event) for _, event in members]
        detail["count"] = sum(_weight(event) for _, event in members)
        detail["first_at"] = min((t for t in firsts if t), default=None)
        newest["detail"] = detail
        conn.execute(
            "UPDATE outbox SET body = ? WHERE seq = ?",
            (json.dumps(newest, separators=(",", ":"), allow_nan=False), seq),
        )
        gone += [(s,) for s, _ in members[:-1]]
    conn.executemany("DELETE FROM outbox WHERE seq = ?", gone)
    return len(gone)


def _first_at(event: JSON) -> str | None:
    detail = event.get("detail")
    for value in ((detail or {}).get("first_at") if isinstance(detail, dict) else None, event.get("at")):
        if isinstance(value, str):
            return value
    return None


def _drop_oldest(conn: sqlite3.Connection, n: int, lost: dict[str, int], *, only_type: str | None) -> int:
    """Delete the `n` oldest pending events (of `only_type`, or of any type); count what they
    stood for into `lost`."""
    where = "kind = 'event'" + (" AND type = ?" if only_type else "")
    params: tuple[object, ...] = (only_type,) if only_type else ()
    victims = conn.execute(
        f"SELECT seq, type, body FROM outbox WHERE {where} ORDER BY seq LIMIT ?",  # noqa: S608
        (*params, n),
    ).fetchall()
    for _seq, name, body in victims:
        weight = _weight(json.loads(body)) if name == KEY_USED else 1
        lost[str(name)] = lost.get(str(name), 0) + weight
    conn.executemany("DELETE FROM outbox WHERE seq = ?", [(seq,) for seq, _, _ in victims])
    return len(victims)


def _dropped_counts(text: str | None) -> JSON:
    counts: JSON = {"total": 0, "by_type": {}, "merged": 0, "last_at": None}
    if text:
        try:
            stored = json.loads(text)
        except ValueError:
            stored = None
        if isinstance(stored, dict):
            counts.update({k: stored[k] for k in counts if k in stored})
    return counts
