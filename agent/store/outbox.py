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

Collapse (long outages)
- `collapse_if_over(max_events, make_inventory_marker)`: when more than `max_events` events are
  pending, every pending event that a full inventory supersedes (see SUPERSEDED_BY_INVENTORY)
  is deleted and ONE marker row is stored instead; if other events still exceed the bound,
  the oldest of them are dropped too, so the outbox never grows without bound.
- The marker is not an event and `peek` never returns it. The daemon checks
  `full_inventory_marker()` (or `needs_full_inventory()`) before sending events; when set, it
  collects and PUTs a full inventory *after* reading the marker, then calls
  `clear_full_inventory_flag(marker["seq"])`. The seq guard makes the clear safe against a
  second collapse happening while the inventory is in flight: that collapse stores a new
  marker with a higher seq, which survives the clear.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from agent.store.db import Database

JSON = dict[str, Any]

FULL_INVENTORY_MARKER_ID = "full_inventory"

# Event types whose information a full inventory carries (keys present, their options,
# last_used, unreadable files, the sshd summary). instruction_* events are an audit echo of
# results already posted to /v1/instructions/{jti}/result; they are kept unless the bound
# forces them out.
SUPERSEDED_BY_INVENTORY: frozenset[str] = frozenset(
    {"key_added", "key_removed", "key_changed", "file_unreadable", "sshd_config_changed", "key_used"}
)

_ACK_CHUNK = 500  # well under SQLite's bound-parameter limit


class Outbox:
    """Durable, ordered queue of Event JSON dicts. Thread-safe (all access goes through the
    Database lock)."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

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
            conn.executemany(
                "INSERT OR IGNORE INTO outbox (id, kind, type, body, created_at) "
                "VALUES (?, 'event', ?, ?, ?)",
                rows,
            )

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

    def collapse_if_over(self, max_events: int, make_inventory_marker: Callable[[int], JSON]) -> int:
        """If more than `max_events` events are pending, replace them by a full-inventory marker.

        Deletes every pending event of a SUPERSEDED_BY_INVENTORY type, then (only if still over
        the bound) the oldest remaining events down to `max_events`. Stores one marker row whose
        body is `make_inventory_marker(dropped_total)` (dropped_total accumulates over repeated
        collapses until the flag is cleared). Returns the number of events dropped now (0 when
        under the bound: nothing changes).
        """
        if max_events < 0:
            raise ValueError("max_events must be >= 0")
        with self._db.transaction() as conn:
            depth = int(conn.execute("SELECT count(*) FROM outbox WHERE kind = 'event'").fetchone()[0])
            if depth <= max_events:
                return 0
            types = sorted(SUPERSEDED_BY_INVENTORY)
            placeholders = ",".join("?" * len(types))
            dropped = conn.execute(
                f"DELETE FROM outbox WHERE kind = 'event' AND type IN ({placeholders})",  # noqa: S608
                types,
            ).rowcount
            remaining = depth - dropped
            if remaining > max_events:
                dropped += conn.execute(
                    "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE kind = 'event' "
                    "ORDER BY seq LIMIT ?)",
                    (remaining - max_events,),
                ).rowcount
            previous = conn.execute(
                "SELECT body, created_at FROM outbox WHERE id = ?", (FULL_INVENTORY_MARKER_ID,)
            ).fetchone()
            total = dropped
            first_at = self._clock()
            if previous is not None:
                total += int(json.loads(previous[0]).get("dropped", 0))
                first_at = float(previous[1])
                conn.execute("DELETE FROM outbox WHERE id = ?", (FULL_INVENTORY_MARKER_ID,))
            body = dict(make_inventory_marker(total))
            body["dropped"] = total
            # A fresh row (new, higher seq) so an in-flight clear of the old marker misses it.
            conn.execute(
                "INSERT INTO outbox (id, kind, type, body, created_at) "
                "VALUES (?, 'full_inventory', NULL, ?, ?)",
                (
                    FULL_INVENTORY_MARKER_ID,
                    json.dumps(body, separators=(",", ":"), allow_nan=False),
                    first_at,
                ),
            )
            return dropped

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
