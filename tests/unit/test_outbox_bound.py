"""`state.outbox_max_events` holds for every event type (issue 11, "the outbox bound").

Before: only discovery's change events were bounded; `key_used` (an outage plus forged or real
log lines) and instruction events grew the outbox without bound. Now every append is bounded.
Over the bound, what goes first is what a full inventory restores (key and file changes); then
`key_used` events are merged (one per user, key and source address, with a `count` and the first
time), then the oldest `key_used` go, then the oldest of the rest (instruction audit events,
whose results were posted on their own). What was dropped is counted (by type) in the marker, in
the store for `status`, and a full inventory follows."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.store.db import Database, open_database
from agent.store.outbox import Outbox


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = open_database(tmp_path)
    yield database
    database.close()


def used(
    user: str = "deploy", fp: str = "SHA256:a", source: str = "203.0.113.9", at: str = "2026-01-01T00:00:00Z"
) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "at": at,
        "type": "key_used",
        "user": user,
        "path": None,
        "fingerprint": fp,
        "key": None,
        "detail": {"from": source, "at": at},
    }


def ev(event_type: str) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "at": "2026-01-01T00:00:00Z", "type": event_type, "detail": {}}


def test_key_used_events_are_bounded_too(db: Database) -> None:
    box = Outbox(db)
    for i in range(300):
        box.append([used(source=f"198.51.100.{i % 250}", at=f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}Z")])
        box.collapse_if_over(100, lambda n: {"reason": "outbox bound"})
        assert box.depth() <= 100
    dropped = box.dropped()
    kept = sum(e["detail"].get("count", 1) for e in box.peek())
    assert dropped["total"] + kept == 300 and dropped["total"] >= 150
    assert set(dropped["by_type"]) == {"key_used"}
    marker = box.full_inventory_marker()
    assert marker is not None and marker["dropped"] == dropped["total"]


def test_key_used_are_merged_per_user_key_and_source_before_any_is_dropped(db: Database) -> None:
    box = Outbox(db)
    box.append([used(at=f"2026-01-01T00:00:{s:02d}Z") for s in range(10)])
    box.append([used(source="192.0.2.7", at="2026-01-01T00:01:00Z")])
    box.append([ev("instruction_applied")])
    assert box.collapse_if_over(5, lambda n: {}) == 9
    events = box.peek()
    assert [e["type"] for e in events] == ["key_used", "key_used", "instruction_applied"]
    merged = events[0]
    assert merged["detail"] == {
        "from": "203.0.113.9",
        "at": "2026-01-01T00:00:09Z",
        "count": 10,
        "first_at": "2026-01-01T00:00:00Z",
    }
    assert events[1]["detail"]["from"] == "192.0.2.7" and "count" not in events[1]["detail"]
    # Merging again adds up the counts.
    box.append([used(at="2026-01-01T00:02:00Z") for _ in range(6)])
    box.collapse_if_over(5, lambda n: {})
    again = [e for e in box.peek() if e["detail"].get("from") == "203.0.113.9"]
    assert len(again) == 1 and again[0]["detail"]["count"] == 16
    assert again[0]["detail"]["first_at"] == "2026-01-01T00:00:00Z"


def test_order_of_sacrifice(db: Database) -> None:
    """Changes (restored by the inventory) first, then key_used, then the oldest audit events.
    `by_type` counts events lost, a merged key_used row counting what it stood for."""
    box = Outbox(db)
    audit = [ev("instruction_applied") for _ in range(4)]
    box.append([ev("key_added"), ev("key_changed"), *[used(source=f"10.0.0.{i}") for i in range(4)], *audit])
    assert box.collapse_if_over(6, lambda n: {}) == 4  # the 2 changes and the 2 oldest key_used
    kept = box.peek()
    assert [e["type"] for e in kept].count("key_used") == 2 and [e["id"] for e in kept][-4:] == [
        a["id"] for a in audit
    ]
    box.append([ev("instruction_failed") for _ in range(3)])
    box.collapse_if_over(6, lambda n: {})
    types = [e["type"] for e in box.peek()]
    assert "key_used" not in types and len(types) == 6
    assert box.dropped()["by_type"] == {
        "key_added": 1,
        "key_changed": 1,
        "key_used": 4,
        "instruction_applied": 1,
    }


def test_low_water_collapses_below_the_bound_so_the_work_is_not_redone_on_every_append(db: Database) -> None:
    box = Outbox(db)
    box.append([ev("instruction_failed") for _ in range(101)])
    assert box.collapse_if_over(100, lambda n: {}, low_water=90) == 11
    assert box.depth() == 90
    box.append([ev("instruction_failed") for _ in range(10)])
    assert box.collapse_if_over(100, lambda n: {}, low_water=90) == 0  # at the bound, not over it


def test_dropped_counts_survive_the_marker_and_a_restart(tmp_path: Path) -> None:
    with open_database(tmp_path) as db:
        box = Outbox(db)
        box.append([used(source=f"10.0.0.{i}") for i in range(5)])
        box.collapse_if_over(2, lambda n: {})
        marker = box.full_inventory_marker()
        assert marker is not None
        box.clear_full_inventory_flag(marker["seq"])
    with open_database(tmp_path) as db:
        dropped = Outbox(db).dropped()
        assert dropped["total"] == 3 and dropped["by_type"] == {"key_used": 3}
        assert dropped["last_at"] is not None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batches=st.lists(
        st.lists(
            st.sampled_from(
                ["key_added", "key_removed", "key_used", "key_used", "instruction_applied", "file_unreadable"]
            ),
            min_size=1,
            max_size=20,
        ),
        max_size=25,
    ),
    bound=st.integers(min_value=1, max_value=40),
)
def test_the_bound_always_holds(
    tmp_path_factory: pytest.TempPathFactory, batches: list[list[str]], bound: int
) -> None:
    with open_database(tmp_path_factory.mktemp("box")) as db:
        box = Outbox(db)
        appended = 0
        for batch in batches:
            box.append(
                [used(source=f"10.0.{i}.1") if t == "key_used" else ev(t) for i, t in enumerate(batch)]
            )
            appended += len(batch)
            box.collapse_if_over(bound, lambda n: {}, low_water=max(0, bound - 3))
            assert box.depth() <= bound
        kept_count = sum(int(e["detail"].get("count", 1)) for e in box.peek() if e["type"] == "key_used")
        others = sum(1 for e in box.peek() if e["type"] != "key_used")
        # Every event appended is still queued (alone or in a merged row's count) or counted as lost.
        assert kept_count + others + box.dropped()["total"] == appended


def test_append_bounded_never_shows_more_than_the_bound(db: Database) -> None:
    box = Outbox(db)
    assert (
        box.append_bounded([used(source=f"10.1.0.{i}") for i in range(30)], 10, lambda n: {}, low_water=8)
        == 22
    )
    assert box.depth() == 8
    assert box.append_bounded([ev("instruction_applied")], 10, lambda n: {}) == 0
    assert box.depth() == 9
