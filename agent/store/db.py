"""The agent's SQLite database: `<state_dir>/agent.db`, opened safely and migrated.

Durability: WAL journal with `synchronous=FULL`, so every committed transaction has been
fsync'ed to the WAL before `commit` returns and survives kill -9 and power loss.

Threading: one connection shared by every thread, guarded by a re-entrant lock. Each unit of
work runs inside `Database.transaction()`, which holds the lock for the whole
`BEGIN IMMEDIATE ... COMMIT`, so the watcher thread and scheduler threads never interleave
statements of different transactions. SQLite writes are serialised anyway; the agent's
transactions are small, so one connection costs nothing measurable.

Schema: versioned with `PRAGMA user_version`; `MIGRATIONS[i]` takes the schema from version
`i` to `i + 1`, each step in its own transaction. A database newer than this agent is refused
rather than guessed at.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from agent.host.safefs import UnsafePath, open_private_dir

DB_NAME = "agent.db"
DB_FILE_MODE = 0o600


class StoreError(Exception):
    """The state directory or database cannot be used. Messages name paths, never contents."""


class StoreCorrupt(StoreError):
    """The database failed SQLite's integrity check."""


# Each step is a tuple of single statements (not a script: `executescript` would commit
# the surrounding transaction and make the step non-atomic).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # AUTOINCREMENT: a seq is never reused, even after the newest rows are acked/deleted.
        """CREATE TABLE outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL CHECK (kind IN ('event', 'full_inventory')),
            type TEXT,
            body TEXT NOT NULL,
            created_at REAL NOT NULL
        )""",
        "CREATE INDEX outbox_kind_seq ON outbox (kind, seq)",
        "CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
        # user '' stands for "no user" (host keys): NULLs would defeat the primary key.
        """CREATE TABLE first_seen (
            fingerprint TEXT NOT NULL, user TEXT NOT NULL, path TEXT NOT NULL, at REAL NOT NULL,
            PRIMARY KEY (fingerprint, user, path)
        ) WITHOUT ROWID""",
        """CREATE TABLE last_used (
            fingerprint TEXT NOT NULL, user TEXT NOT NULL, at REAL NOT NULL,
            PRIMARY KEY (fingerprint, user)
        ) WITHOUT ROWID""",
        """CREATE TABLE jti (
            jti TEXT PRIMARY KEY, status TEXT NOT NULL, exp REAL NOT NULL, recorded_at REAL NOT NULL
        ) WITHOUT ROWID""",
        "CREATE INDEX jti_exp ON jti (exp)",
        """CREATE TABLE pending_apply (
            jti TEXT PRIMARY KEY, record TEXT NOT NULL, started_at REAL NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE grants (
            grant_id TEXT PRIMARY KEY, user TEXT NOT NULL, path TEXT NOT NULL,
            fingerprint TEXT NOT NULL, expires_at REAL NOT NULL, jti TEXT
        ) WITHOUT ROWID""",
        "CREATE INDEX grants_expires ON grants (expires_at)",
        """CREATE TABLE backups (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            rotation_id TEXT NOT NULL, path TEXT NOT NULL, backup_file TEXT NOT NULL,
            sha256_after TEXT NOT NULL, created_at REAL NOT NULL
        )""",
        "CREATE INDEX backups_rotation ON backups (rotation_id)",
        "CREATE INDEX backups_path ON backups (path, id)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


def state_dir_problem(path: str, st: os.stat_result) -> str | None:
    """Why an existing state directory (its lstat) cannot be used, or None. Also `check-config`'s."""
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        return f"state directory {path} is not a plain directory"
    if st.st_uid != os.geteuid():
        return f"state directory {path} is owned by uid {st.st_uid}, not by us"
    return None


def prepare_state_dir(state_dir: str | os.PathLike[str]) -> Path:
    """Create the state directory 0700 if absent; refuse a symlink, a non-directory, or a
    directory owned by another uid (we run as root: a directory someone else controls could
    be swapped under us); tighten looser permissions to 0700. The safe file layer's rule for
    the agent's own directories (``open_private_dir``), shared with enrollment and backups."""
    path = Path(state_dir)
    try:
        os.close(open_private_dir(str(path)))
    except UnsafePath as exc:
        raise StoreError(f"state directory {path} {exc.reason}") from None
    except OSError as exc:
        raise StoreError(f"cannot create state directory {path}: {exc.strerror}") from None
    return path


def _create_db_file(path: Path) -> None:
    """Create (or check) the database file before SQLite opens it, so it is 0600 from its
    first byte; SQLite gives its -wal and -shm files the database file's mode."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, DB_FILE_MODE)
    except OSError as exc:
        raise StoreError(f"cannot open database {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"database {path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise StoreError(f"database {path} is owned by uid {st.st_uid}, not by us")
        if stat.S_IMODE(st.st_mode) != DB_FILE_MODE:
            os.fchmod(fd, DB_FILE_MODE)
    finally:
        os.close(fd)


class Database:
    """One SQLite connection plus the lock that serialises its use across threads."""

    def __init__(self, path: str | os.PathLike[str], *, check_integrity: bool = True) -> None:
        self.path = Path(path)
        _create_db_file(self.path)
        self._lock = threading.RLock()
        # isolation_level=None: no implicit transactions; `transaction()` issues BEGIN itself.
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        try:
            try:
                self._configure()
                if check_integrity:
                    self._check_integrity()
            except sqlite3.DatabaseError as exc:  # e.g. "file is not a database"
                raise StoreCorrupt(f"database {self.path} is unreadable: {exc}") from None
            self._migrate()
        except BaseException:
            self._conn.close()
            raise

    def _configure(self) -> None:
        mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"database {self.path}: WAL journal mode unavailable (got {mode})")
        # FULL in WAL mode: the WAL is fsync'ed at every commit (NORMAL would only sync at
        # checkpoints, losing the last commits on power loss).
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.execute("PRAGMA busy_timeout=30000")
        # A 512 KiB page cache, not the default 2 MiB: the state is written far more than read, and
        # the daemon's idle footprint counts (the saved inventory alone would fill 2 MiB).
        self._conn.execute("PRAGMA cache_size=-512")

    def _check_integrity(self) -> None:
        rows = self._conn.execute("PRAGMA quick_check").fetchall()
        if rows != [("ok",)]:
            raise StoreCorrupt(f"database {self.path} failed its integrity check")

    def _migrate(self) -> None:
        with self._lock:
            current = self.schema_version()
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"database {self.path} has schema version {current}; this agent knows up to "
                    f"{SCHEMA_VERSION} (downgrade?)"
                )
            for version in range(current, SCHEMA_VERSION):
                with self.transaction() as conn:
                    for statement in MIGRATIONS[version]:
                        conn.execute(statement)
                    # user_version lives in the database header and is transactional.
                    conn.execute(f"PRAGMA user_version = {version + 1}")

    def schema_version(self) -> int:
        with self._lock:
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        """Hold the lock for one transaction; commit on success, roll back on error.

        `write=True` takes SQLite's write lock up front (BEGIN IMMEDIATE) so a transaction
        never fails half-way on a lock upgrade; readers use a deferred BEGIN so another
        process (e.g. the `status` command) reading the database does not block writers.
        Re-entrant: a nested call joins the outer transaction (the lock is an RLock and the
        inner call issues no BEGIN/COMMIT of its own).
        """
        with self._lock:
            if self._conn.in_transaction:
                yield self._conn
                return
            self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """Hold the lock for reads (a consistent view of several SELECTs)."""
        with self.transaction(write=False) as conn:
            yield conn

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_database(state_dir: str | os.PathLike[str], *, check_integrity: bool = True) -> Database:
    """Prepare `state_dir` (0700) and open `<state_dir>/agent.db` (0600), migrated to the
    current schema. Raises StoreError (or StoreCorrupt) with a message safe to log."""
    directory = prepare_state_dir(state_dir)
    return Database(directory / DB_NAME, check_integrity=check_integrity)
