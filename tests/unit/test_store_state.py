"""agent.store.state: status, inventory, first_seen/last_used, jti, apply journal, grants, backups."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.redact import clear_secrets, register_secret
from agent.store.db import Database, open_database
from agent.store.state import Backup, SecretInStatus, StateStore

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = open_database(tmp_path)
    yield database
    database.close()


@pytest.fixture
def store(db: Database) -> StateStore:
    return StateStore(db, clock=lambda: T0.timestamp())


def test_status_round_trips_and_survives_reopen(tmp_path: Path) -> None:
    status = {"status": "ok", "token_expires_at": "2026-03-01T12:15:00Z", "outbox": 3, "errors": []}
    with open_database(tmp_path) as db:
        assert StateStore(db).get_status() is None
        StateStore(db).set_status(status)
    with open_database(tmp_path) as db:
        assert StateStore(db).get_status() == status


@pytest.mark.parametrize(
    "status",
    [
        {"access_token": "whatever"},
        {"auth": {"refresh_token": "x"}},
        {"last_error": f"server said {JWT}"},
        {"notes": ["ok", "key sk_agent_0123456789abcdef"]},
        {"API_KEY": "x"},
    ],
)
def test_status_with_a_secret_is_refused_and_not_stored(store: StateStore, status: dict[str, object]) -> None:
    store.set_status({"status": "ok"})
    with pytest.raises(SecretInStatus) as info:
        store.set_status(status)
    assert JWT not in str(info.value) and "sk_agent_0123" not in str(info.value)
    assert store.get_status() == {"status": "ok"}


def test_status_with_a_registered_secret_is_refused(store: StateStore) -> None:
    register_secret("opaque-bootstrap-value-42")
    try:
        with pytest.raises(SecretInStatus):
            store.set_status({"message": "using opaque-bootstrap-value-42"})
    finally:
        clear_secrets()


def test_inventory_snapshot(store: StateStore) -> None:
    assert store.load_inventory() is None
    inventory = {"snapshot_id": "s1", "generation": 4, "keys": [{"fingerprint": "SHA256:a"}]}
    store.save_inventory(inventory)
    store.save_inventory({**inventory, "generation": 5})
    loaded = store.load_inventory()
    assert loaded is not None and loaded["generation"] == 5


def test_first_seen_keeps_the_earliest_and_handles_no_user(store: StateStore) -> None:
    a = ("SHA256:a", "deploy", "/home/deploy/.ssh/authorized_keys")
    host = ("SHA256:h", None, "/etc/ssh/ssh_host_ed25519_key.pub")
    store.record_seen([a, host], T0)
    store.record_seen([a], T0 + timedelta(hours=1))
    store.record_seen([a], T0 - timedelta(hours=1))  # an earlier sighting wins
    assert store.first_seen_map() == {a: T0 - timedelta(hours=1), host: T0}
    assert store.retain_seen([host]) == 1
    assert store.first_seen_map() == {host: T0}


def test_last_used_keeps_the_latest(store: StateStore) -> None:
    store.record_used("SHA256:a", "deploy", T0)
    store.record_used("SHA256:a", "deploy", T0 - timedelta(minutes=5))
    store.record_used("SHA256:a", "root", T0 + timedelta(minutes=5))
    assert store.last_used_map() == {
        ("SHA256:a", "deploy"): T0,
        ("SHA256:a", "root"): T0 + timedelta(minutes=5),
    }


def test_jti_registry_and_pruning(store: StateStore) -> None:
    assert store.jti_seen("ins_1") is None
    store.record_jti("ins_1", "applied", int((T0 + timedelta(hours=1)).timestamp()))
    store.record_jti("ins_2", "rejected", T0 - timedelta(days=3))
    store.record_jti("ins_3", "applied", T0 - timedelta(hours=2))
    assert store.jti_seen("ins_1") == "applied"
    assert store.jti_seen("ins_2") == "rejected"
    assert store.prune_jtis(T0) == 1  # only the one expired more than a day ago
    assert store.jti_seen("ins_2") is None
    assert store.jti_seen("ins_3") == "applied"
    assert store.prune_jtis(T0, keep_after_exp=timedelta(0)) == 1
    assert store.jti_seen("ins_1") == "applied"


def test_naive_datetimes_are_refused(store: StateStore) -> None:
    with pytest.raises(ValueError, match="naive"):
        store.record_jti("ins_x", "applied", datetime(2026, 1, 1))


def test_apply_journal_survives_a_restart(tmp_path: Path) -> None:
    record = {"user": "deploy", "path": "/home/deploy/.ssh/authorized_keys", "backup": "b1"}
    with open_database(tmp_path) as db:
        store = StateStore(db)
        store.begin_apply("ins_1", record)
        store.begin_apply("ins_2", {"user": "root"})
        store.finish_apply("ins_2")
    with open_database(tmp_path) as db:  # "crash" happened before ins_1 finished
        pending = StateStore(db).unfinished_applies()
        assert [(p.jti, p.record) for p in pending] == [("ins_1", record)]
        StateStore(db).finish_apply("ins_1")
        assert StateStore(db).unfinished_applies() == []


def test_grants(store: StateStore) -> None:
    store.add_grant("eph_2", "deploy", "/p", "SHA256:b", T0 + timedelta(minutes=10), "ins_2")
    store.add_grant("eph_1", "deploy", "/p", "SHA256:a", T0 + timedelta(minutes=5), None)
    assert [g.grant_id for g in store.all_grants()] == ["eph_1", "eph_2"]
    assert store.due_grants(T0) == []
    due = store.due_grants(T0 + timedelta(minutes=5))
    assert [(g.grant_id, g.expires_at, g.jti) for g in due] == [("eph_1", T0 + timedelta(minutes=5), None)]
    assert store.remove_grant("eph_1")
    assert not store.remove_grant("eph_1")
    assert [g.grant_id for g in store.all_grants()] == ["eph_2"]


def test_backups_index_and_prune(store: StateStore) -> None:
    for i in range(4):
        store.add_backup(f"rot_{i}", "/home/a/.ssh/authorized_keys", f"/state/backups/a{i}", f"h{i}")
    store.add_backup("rot_1", "/home/b/.ssh/authorized_keys", "/state/backups/b1", "hb")
    assert store.backups_for("rot_1") == [
        Backup("rot_1", "/home/a/.ssh/authorized_keys", "/state/backups/a1", "h1", T0),
        Backup("rot_1", "/home/b/.ssh/authorized_keys", "/state/backups/b1", "hb", T0),
    ]
    removed = store.prune_backups(keep=2)
    assert [b.backup_file for b in removed] == ["/state/backups/a0", "/state/backups/a1"]
    assert [b.backup_file for b in store.backups_for("rot_1")] == ["/state/backups/b1"]
    assert [b.backup_file for b in store.backups_for("rot_3")] == ["/state/backups/a3"]
    assert store.prune_backups(keep=2) == []


def test_state_is_usable_from_many_threads(store: StateStore) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(40):
                store.record_used(f"SHA256:{n}", "u", T0 + timedelta(seconds=i))
                store.record_jti(f"ins_{n}_{i}", "applied", T0)
                store.set_status({"status": "ok", "n": n, "i": i})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.last_used_map() == {(f"SHA256:{n}", "u"): T0 + timedelta(seconds=39) for n in range(4)}
    assert all(store.jti_seen(f"ins_{n}_39") == "applied" for n in range(4))


def test_auth_hold_is_kept_per_key(store: StateStore) -> None:
    assert store.auth_hold("k1") is None
    store.save_auth_hold("k1", 1_800_000_000.0)
    assert store.auth_hold("k1") == 1_800_000_000.0
    assert store.auth_hold("k2") is None  # a new key (re-enrollment) is not held
