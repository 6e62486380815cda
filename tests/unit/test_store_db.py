"""agent.store.db: state directory safety, file modes, pragmas, migrations, corruption."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from agent.store import db as dbmod
from agent.store.db import (
    DB_NAME,
    SCHEMA_VERSION,
    StoreCorrupt,
    StoreError,
    open_database,
)
from agent.store.outbox import Outbox


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_creates_dir_0700_and_files_0600_with_wal(tmp_path: Path) -> None:
    state = tmp_path / "state" / "nested"
    with open_database(state) as db:
        Outbox(db).append([{"id": "a", "type": "key_added"}])  # forces the WAL to exist
        assert _mode(state) == 0o700
        assert _mode(state / DB_NAME) == 0o600
        wal = state / (DB_NAME + "-wal")
        shm = state / (DB_NAME + "-shm")
        assert wal.exists() and _mode(wal) == 0o600
        assert shm.exists() and _mode(shm) == 0o600


def test_pragmas_and_schema_version(tmp_path: Path) -> None:
    with open_database(tmp_path) as db:
        with db.reading() as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert db.schema_version() == SCHEMA_VERSION
    # A second open finds the current schema and changes nothing.
    with open_database(tmp_path) as db:
        assert db.schema_version() == SCHEMA_VERSION


def test_loose_permissions_are_tightened(tmp_path: Path) -> None:
    state = tmp_path / "s"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    (state / DB_NAME).touch()
    os.chmod(state / DB_NAME, 0o644)
    with open_database(state):
        pass
    assert _mode(state) == 0o700
    assert _mode(state / DB_NAME) == 0o600


def test_symlinked_state_dir_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(StoreError, match="not a plain directory"):
        open_database(link)


def test_symlinked_database_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.db"
    target.touch()
    state = tmp_path / "s"
    state.mkdir(mode=0o700)
    (state / DB_NAME).symlink_to(target)
    with pytest.raises(StoreError):
        open_database(state)


@pytest.mark.root(reason="chowns the state directory to another uid")
def test_state_dir_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "s"
    state.mkdir(mode=0o700)
    os.chown(state, 12345, 12345)
    with pytest.raises(StoreError, match="owned by uid 12345"):
        open_database(state)


def test_garbage_file_is_reported_corrupt(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"this is not a database, just bytes " * 200)
    os.chmod(tmp_path / DB_NAME, 0o600)
    with pytest.raises(StoreCorrupt):
        open_database(tmp_path)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    with open_database(tmp_path):
        pass
    conn = sqlite3.connect(tmp_path / DB_NAME)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="downgrade"):
        open_database(tmp_path)


def test_failed_migration_step_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open_database(tmp_path):
        pass
    broken_step = ("CREATE TABLE half_done (x INTEGER)", "THIS IS NOT SQL")
    monkeypatch.setattr(dbmod, "MIGRATIONS", (*dbmod.MIGRATIONS, broken_step))
    monkeypatch.setattr(dbmod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(sqlite3.OperationalError):
        open_database(tmp_path)
    conn = sqlite3.connect(tmp_path / DB_NAME)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "half_done" not in tables
    conn.close()


def test_transaction_rolls_back_on_error(tmp_path: Path) -> None:
    with open_database(tmp_path) as db:
        with pytest.raises(RuntimeError), db.transaction() as conn:
            conn.execute("INSERT INTO kv (key, value) VALUES ('k', '1')")
            raise RuntimeError("boom")
        with db.reading() as conn:
            assert conn.execute("SELECT count(*) FROM kv").fetchone()[0] == 0
        # Nested transactions join the outer one.
        with db.transaction() as outer:
            outer.execute("INSERT INTO kv (key, value) VALUES ('a', '1')")
            with db.transaction() as inner:
                inner.execute("INSERT INTO kv (key, value) VALUES ('b', '2')")
        with db.reading() as conn:
            assert conn.execute("SELECT count(*) FROM kv").fetchone()[0] == 2
