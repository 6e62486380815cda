"""agent.store.outbox: ordering, seq assignment, ack, collapse, concurrency."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.store.db import Database, open_database
from agent.store.outbox import SUPERSEDED_BY_INVENTORY, Outbox


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = open_database(tmp_path)
    yield database
    database.close()


def ev(event_type: str = "key_added", **extra: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "at": "2026-01-01T00:00:00Z",
        "type": event_type,
        "user": "deploy",
        "path": "/home/deploy/.ssh/authorized_keys",
        "fingerprint": "SHA256:abc",
        "key": None,
        "detail": {},
        **extra,
    }


def test_append_assigns_seq_in_order_and_peek_returns_oldest_first(db: Database) -> None:
    box = Outbox(db)
    first = [ev(), ev(), ev()]
    box.append(first)
    second = [ev("key_removed", seq=999)]  # a caller-supplied seq is ignored
    box.append(second)
    events = box.peek()
    assert [e["id"] for e in events] == [e["id"] for e in first + second]
    assert [e["seq"] for e in events] == [1, 2, 3, 4]
    # The body round-trips, and the caller's dicts were not modified.
    assert {k: v for k, v in events[3].items() if k != "seq"} == {
        k: v for k, v in second[0].items() if k != "seq"
    }
    assert second[0]["seq"] == 999
    assert box.depth() == 4
    assert [e["seq"] for e in box.peek(limit=2)] == [1, 2]
    assert box.peek(limit=0) == []


def test_seq_is_never_reused_after_ack_or_reopen(tmp_path: Path) -> None:
    with open_database(tmp_path) as db:
        box = Outbox(db)
        batch = [ev(), ev()]
        box.append(batch)
        assert box.ack([e["id"] for e in batch]) == 2
        assert box.depth() == 0
        assert box.last_seq() == 2
    with open_database(tmp_path) as db:
        box = Outbox(db)
        box.append([ev()])
        assert [e["seq"] for e in box.peek()] == [3]


def test_ack_ignores_unknown_ids_and_handles_large_batches(db: Database) -> None:
    box = Outbox(db)
    events = [ev() for _ in range(1200)]
    box.append(events)
    assert box.ack(["nope", *[e["id"] for e in events[:1100]]]) == 1100
    assert [e["id"] for e in box.peek()] == [e["id"] for e in events[1100:]]


def test_duplicate_id_is_kept_once_with_its_first_seq(db: Database) -> None:
    box = Outbox(db)
    event = ev()
    box.append([event, ev()])
    box.append([event])
    assert box.depth() == 2
    assert box.peek()[0]["seq"] == 1


def test_append_rejects_events_without_id_atomically(db: Database) -> None:
    box = Outbox(db)
    with pytest.raises(ValueError):
        box.append([ev(), {"type": "key_added"}])
    with pytest.raises(ValueError):
        box.append([ev(), ev(at=float("nan"))])
    assert box.depth() == 0


def test_oldest_at_uses_the_injected_clock(db: Database) -> None:
    now = [1_800_000_000.0]
    box = Outbox(db, clock=lambda: now[0])
    assert box.oldest_at() is None
    box.append([ev()])
    now[0] += 60
    box.append([ev()])
    assert box.oldest_at() == datetime.fromtimestamp(1_800_000_000.0, UTC)


def test_collapse_under_the_bound_changes_nothing(db: Database) -> None:
    box = Outbox(db)
    box.append([ev() for _ in range(5)])
    assert box.collapse_if_over(5, lambda n: {"reason": "outage"}) == 0
    assert box.depth() == 5
    assert not box.needs_full_inventory()


def test_collapse_replaces_key_events_by_one_marker(db: Database) -> None:
    box = Outbox(db)
    kept = ev("instruction_applied", detail={"jti": "ins_1"})
    used = ev("key_used")  # not superseded by an inventory (issue 11): kept while under the bound
    box.append([ev("key_added"), used, kept, ev("sshd_config_changed"), ev("key_removed")])
    calls: list[int] = []

    def marker(dropped: int) -> dict[str, Any]:
        calls.append(dropped)
        return {"reason": "outbox_overflow"}

    assert box.collapse_if_over(3, marker) == 3
    assert calls == [3]
    assert [e["id"] for e in box.peek()] == [used["id"], kept["id"]]  # the marker is never peeked
    assert box.depth() == 2
    info = box.full_inventory_marker()
    assert info is not None
    assert info["reason"] == "outbox_overflow" and info["dropped"] == 3
    assert info["seq"] > 5
    assert box.needs_full_inventory()
    # Events appended after the collapse are delivered normally.
    later = ev()
    box.append([later])
    assert [e["id"] for e in box.peek()] == [used["id"], kept["id"], later["id"]]
    assert box.clear_full_inventory_flag(info["seq"])
    assert not box.needs_full_inventory()
    assert not box.clear_full_inventory_flag()


def test_collapse_keeps_the_bound_even_with_unsupersedable_events(db: Database) -> None:
    box = Outbox(db)
    audit = [ev("instruction_failed") for _ in range(10)]
    box.append(audit)
    assert box.collapse_if_over(4, lambda n: {}) == 6
    assert [e["id"] for e in box.peek()] == [e["id"] for e in audit[6:]]  # the newest survive


def test_repeated_collapse_keeps_one_marker_and_guards_an_in_flight_clear(db: Database) -> None:
    box = Outbox(db)
    box.append([ev() for _ in range(3)])
    box.collapse_if_over(2, lambda n: {"n": n})
    first = box.full_inventory_marker()
    assert first is not None and first["dropped"] == 3
    # While the daemon sends an inventory for `first`, more events pile up and collapse again.
    box.append([ev("key_changed") for _ in range(4)])
    box.collapse_if_over(2, lambda n: {"n": n})
    second = box.full_inventory_marker()
    assert second is not None
    assert second["dropped"] == 7 and second["n"] == 7
    assert second["seq"] > first["seq"]
    # The inventory sent for the first marker does not cover the second collapse.
    assert not box.clear_full_inventory_flag(first["seq"])
    assert box.needs_full_inventory()
    assert box.clear_full_inventory_flag(second["seq"])


def test_superseded_types_cover_every_inventory_derivable_event() -> None:
    assert {"key_added", "key_removed", "key_changed", "file_unreadable"} <= SUPERSEDED_BY_INVENTORY
    assert "instruction_applied" not in SUPERSEDED_BY_INVENTORY


def test_concurrent_appends_and_acks(db: Database) -> None:
    box = Outbox(db)
    writers, per_writer, batch = 4, 150, 5
    appended: dict[int, list[str]] = {w: [] for w in range(writers)}
    acked: list[str] = []
    acked_lock = threading.Lock()
    done = threading.Event()
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            for _ in range(per_writer // batch):
                events = [ev(writer=w) for _ in range(batch)]
                box.append(events)
                appended[w].extend(e["id"] for e in events)
        except BaseException as exc:
            errors.append(exc)

    def consumer() -> None:
        try:
            while not done.is_set() or box.depth():
                events = box.peek(limit=37)
                seqs = [e["seq"] for e in events]
                assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
                ids = [e["id"] for e in events]
                box.ack(ids)
                with acked_lock:
                    acked.extend(ids)
        except BaseException as exc:
            errors.append(exc)

    consumers = [threading.Thread(target=consumer) for _ in range(2)]
    producers = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in consumers + producers:
        t.start()
    for t in producers:
        t.join()
    done.set()
    for t in consumers:
        t.join()
    assert errors == []
    every_id = [i for ids in appended.values() for i in ids]
    assert len(every_id) == writers * per_writer
    # Everything was delivered; two consumers may both have peeked the same event
    # (at-least-once), but nothing was lost and nothing is left.
    assert set(acked) == set(every_id)
    assert box.depth() == 0
    assert box.last_seq() == writers * per_writer


def test_concurrent_writers_keep_each_writers_order(db: Database) -> None:
    box = Outbox(db)
    order: dict[int, list[str]] = {w: [] for w in range(3)}

    def writer(w: int) -> None:
        for _ in range(50):
            event = ev(writer=w)
            box.append([event])
            order[w].append(event["id"])

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = box.peek(limit=1000)
    assert [e["seq"] for e in events] == list(range(1, 151))
    for w, ids in order.items():
        assert [e["id"] for e in events if e["writer"] == w] == ids
