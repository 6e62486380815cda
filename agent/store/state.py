"""The daemon's persistent state besides the outbox (all in the same agent.db).

- status: the daemon's published status dict (never secrets: only e.g. token expiry);
- the last inventory snapshot (JSON), to diff across restarts;
- first_seen per (fingerprint, user, path) and last_used per (fingerprint, user);
- the instruction jti registry (applied/rejected...; replay protection), pruned after expiry;
- the pending-apply journal: written before a file changes, removed after, so a crash
  mid-apply is found and reconciled at the next start;
- ephemeral grants and when each expires;
- the backups index of files saved before a rotation rewrote them.

Times are timezone-aware datetimes in the API and epoch seconds (REAL) in the database.
A key with no user (host keys, trusted CAs) is stored with user '' and returned as None.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.redact import looks_like_secret
from agent.store.db import Database

JSON = dict[str, Any]

_GRANT_COLUMNS = "SELECT grant_id, user, path, fingerprint, expires_at, jti FROM grants"
_GRANTS_ALL = _GRANT_COLUMNS + " ORDER BY expires_at, grant_id"
_GRANTS_DUE = _GRANT_COLUMNS + " WHERE expires_at <= ? ORDER BY expires_at, grant_id"

_STATUS_KEY = "status"
_INVENTORY_KEY = "inventory"
_AUTH_HOLD_KEY = "auth_hold"

# Field names that would hold a secret. `*_expires_at` / `*_exp` style names are fine.
_SECRET_FIELD_NAMES = frozenset(
    {
        "api_key",
        "token",
        "access_token",
        "refresh_token",
        "bootstrap_token",
        "password",
        "passphrase",
        "secret",
        "private_key",
        "authorization",
    }
)


class SecretInStatus(ValueError):
    """A status dict held a secret-looking field or value. The message names the field only."""


def _check_no_secrets(value: object, where: str = "status") -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            name = str(key)
            if name.lower() in _SECRET_FIELD_NAMES:
                raise SecretInStatus(f"{where}.{name} is a secret field")
            _check_no_secrets(item, f"{where}.{name}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_no_secrets(item, f"{where}[{index}]")
    elif isinstance(value, str) and looks_like_secret(value):
        raise SecretInStatus(f"{where} looks like a secret")


def _epoch(value: datetime | float) -> float:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.timestamp()
    return float(value)


def _dt(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def _user_key(user: str | None) -> str:
    return "" if user is None else user


def _user_value(stored: str) -> str | None:
    return None if stored == "" else stored


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True)
class PendingApply:
    jti: str
    record: JSON
    started_at: datetime


@dataclass(frozen=True)
class Grant:
    grant_id: str
    user: str
    path: str
    fingerprint: str
    expires_at: datetime
    jti: str | None


@dataclass(frozen=True)
class Backup:
    rotation_id: str
    path: str
    backup_file: str
    sha256_after: str
    created_at: datetime


class StateStore:
    """Typed access to the state tables. Thread-safe through the Database lock."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

    # -- key/value --------------------------------------------------------------------

    def _put(self, key: str, value: object) -> None:
        self._put_text(key, _dumps(value))

    def _put_text(self, key: str, text: str) -> None:
        """Store JSON text as is (the caller encoded it)."""
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO kv (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, text),
            )

    def _get(self, key: str) -> Any:
        with self._db.reading() as conn:
            row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put_document(self, key: str, value: object) -> None:
        """Store a JSON document under `key`, for another module's own state (store/trust_state.py)."""
        self._put(key, value)

    def get_document(self, key: str) -> Any:
        """The JSON document stored under `key`, or None."""
        return self._get(key)

    def set_status(self, status: JSON) -> None:
        """Store the daemon status. Raises SecretInStatus (storing nothing) if any field is
        named like a secret or any string looks like a token/API key: the status is
        published (CLI, heartbeat), so a secret must never get into it."""
        _check_no_secrets(status)
        self._put(_STATUS_KEY, status)

    def get_status(self) -> JSON | None:
        value = self._get(_STATUS_KEY)
        return value if isinstance(value, dict) else None

    def save_auth_hold(self, key_id: str, until: float) -> None:
        """The server refused the API key `key_id` (a digest, never the key): no retry before `until`."""
        self._put(_AUTH_HOLD_KEY, {"key_id": key_id, "until": until})

    def auth_hold(self, key_id: str) -> float | None:
        """The pause saved for that key, or None (none saved, or saved for another key)."""
        value = self._get(_AUTH_HOLD_KEY)
        if not isinstance(value, dict) or value.get("key_id") != key_id:
            return None
        until = value.get("until")
        return float(until) if isinstance(until, int | float) else None

    def save_inventory(self, inventory: JSON | str) -> None:
        """Keep the last inventory snapshot (wire JSON, or its text) to diff against after a restart."""
        if isinstance(inventory, str):
            self._put_text(_INVENTORY_KEY, inventory)
        else:
            self._put(_INVENTORY_KEY, inventory)

    def load_inventory(self) -> JSON | None:
        value = self._get(_INVENTORY_KEY)
        return value if isinstance(value, dict) else None

    # -- first seen / last used -------------------------------------------------------

    def record_seen(self, keys: Iterable[tuple[str, str | None, str]], at: datetime) -> None:
        """Note (fingerprint, user, path) triples seen at `at`; an existing first_seen is kept."""
        when = _epoch(at)
        rows = [(fp, _user_key(user), path, when) for fp, user, path in keys]
        with self._db.transaction() as conn:
            conn.executemany(
                "INSERT INTO first_seen (fingerprint, user, path, at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT DO UPDATE SET at = min(at, excluded.at)",
                rows,
            )

    def retain_seen(self, present: Iterable[tuple[str, str | None, str]]) -> int:
        """Forget first_seen for triples not in `present` (call after a FULL scan only: a
        partial scan does not list every key). A key removed and re-added later gets a new
        first_seen. Returns how many were forgotten."""
        keep = {(fp, _user_key(user), path) for fp, user, path in present}
        with self._db.transaction() as conn:
            stored = conn.execute("SELECT fingerprint, user, path FROM first_seen").fetchall()
            gone = [row for row in stored if tuple(row) not in keep]
            conn.executemany("DELETE FROM first_seen WHERE fingerprint = ? AND user = ? AND path = ?", gone)
        return len(gone)

    def first_seen_map(self) -> dict[tuple[str, str | None, str], datetime]:
        with self._db.reading() as conn:
            rows = conn.execute("SELECT fingerprint, user, path, at FROM first_seen").fetchall()
        # Keys first seen by one scan share its time: one datetime per distinct time, not per key.
        times: dict[float, datetime] = {}
        return {
            (fp, _user_value(user), path): times.get(at) or times.setdefault(at, _dt(at))
            for fp, user, path, at in rows
        }

    def record_used(self, fingerprint: str, user: str | None, at: datetime) -> None:
        """Note a login with that key; the latest time wins (log lines may arrive out of order)."""
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO last_used (fingerprint, user, at) VALUES (?, ?, ?) "
                "ON CONFLICT DO UPDATE SET at = max(at, excluded.at)",
                (fingerprint, _user_key(user), _epoch(at)),
            )

    def last_used_map(self) -> dict[tuple[str, str | None], datetime]:
        with self._db.reading() as conn:
            rows = conn.execute("SELECT fingerprint, user, at FROM last_used").fetchall()
        return {(fp, _user_value(user)): _dt(at) for fp, user, at in rows}

    # -- instruction jti registry ------------------------------------------------------

    def jti_seen(self, jti: str) -> str | None:
        """The recorded status of an instruction (e.g. 'applied', 'rejected'), or None."""
        with self._db.reading() as conn:
            row = conn.execute("SELECT status FROM jti WHERE jti = ?", (jti,)).fetchone()
        return None if row is None else str(row[0])

    def record_jti(self, jti: str, status: str, exp: datetime | float) -> None:
        """Record an instruction's outcome (the last recorded status wins). `exp` is the
        instruction's expiry (the JWT `exp`, epoch seconds or datetime): the entry is kept
        until then so a replay is recognised for as long as the instruction is valid."""
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO jti (jti, status, exp, recorded_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (jti) DO UPDATE SET status = excluded.status, "
                "exp = max(exp, excluded.exp), recorded_at = excluded.recorded_at",
                (jti, status, _epoch(exp), self._clock()),
            )

    def prune_jtis(self, now: datetime, keep_after_exp: timedelta = timedelta(days=1)) -> int:
        """Drop jtis whose instruction expired more than `keep_after_exp` ago (an expired
        instruction is refused on its `exp` anyway; the margin covers verifier clock leeway).
        Returns how many were dropped."""
        cutoff = _epoch(now) - keep_after_exp.total_seconds()
        with self._db.transaction() as conn:
            return int(conn.execute("DELETE FROM jti WHERE exp < ?", (cutoff,)).rowcount)

    # -- pending-apply journal ---------------------------------------------------------

    def begin_apply(self, jti: str, record: JSON) -> None:
        """Journal an apply before touching any file. `record` says what is being done (paths,
        fingerprints, backup file...), enough to reconcile after a crash; never key material
        beyond public keys."""
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO pending_apply (jti, record, started_at) VALUES (?, ?, ?) "
                "ON CONFLICT (jti) DO UPDATE SET record = excluded.record, started_at = excluded.started_at",
                (jti, _dumps(record), self._clock()),
            )

    def finish_apply(self, jti: str) -> None:
        with self._db.transaction() as conn:
            conn.execute("DELETE FROM pending_apply WHERE jti = ?", (jti,))

    def complete_apply(
        self,
        journal_id: str,
        *,
        jti: tuple[str, str, datetime | float] | None = None,
        backups: Sequence[tuple[str, str, str, str]] = (),
    ) -> None:
        """Finish an apply in ONE transaction (one fsync instead of three): index its backups
        (rotation_id, path, backup_file, sha256_after), record the instruction's outcome
        (jti, status, exp) and drop the journal entry. A crash before this commit leaves the
        journal entry, and reconcile redoes exactly these steps."""
        now = self._clock()
        with self._db.transaction() as conn:
            for rotation_id, path, backup_file, sha256_after in backups:
                conn.execute(
                    "INSERT INTO backups (rotation_id, path, backup_file, sha256_after, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (rotation_id, path, backup_file, sha256_after, now),
                )
            if jti is not None:
                jti_id, status, exp = jti
                conn.execute(
                    "INSERT INTO jti (jti, status, exp, recorded_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (jti) DO UPDATE SET status = excluded.status, "
                    "exp = max(exp, excluded.exp), recorded_at = excluded.recorded_at",
                    (jti_id, status, _epoch(exp), now),
                )
            conn.execute("DELETE FROM pending_apply WHERE jti = ?", (journal_id,))

    def unfinished_applies(self) -> list[PendingApply]:
        """Applies begun but never finished (a crash in between), oldest first."""
        with self._db.reading() as conn:
            rows = conn.execute(
                "SELECT jti, record, started_at FROM pending_apply ORDER BY started_at, jti"
            ).fetchall()
        return [PendingApply(jti, json.loads(record), _dt(started)) for jti, record, started in rows]

    # -- ephemeral grants --------------------------------------------------------------

    def add_grant(
        self, grant_id: str, user: str, path: str, fingerprint: str, expires_at: datetime, jti: str | None
    ) -> None:
        """Remember a grant to remove at `expires_at` (re-adding the same grant_id replaces it)."""
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO grants (grant_id, user, path, fingerprint, expires_at, jti) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (grant_id, user, path, fingerprint, _epoch(expires_at), jti),
            )

    def _grants(self, query: str, params: tuple[object, ...]) -> list[Grant]:
        with self._db.reading() as conn:
            rows = conn.execute(query, params).fetchall()
        return [Grant(g, u, p, fp, _dt(exp), jti) for g, u, p, fp, exp, jti in rows]

    def due_grants(self, now: datetime) -> list[Grant]:
        """Grants whose expiry is at or before `now`, soonest first."""
        return self._grants(_GRANTS_DUE, (_epoch(now),))

    def all_grants(self) -> list[Grant]:
        return self._grants(_GRANTS_ALL, ())

    def remove_grant(self, grant_id: str) -> bool:
        with self._db.transaction() as conn:
            return conn.execute("DELETE FROM grants WHERE grant_id = ?", (grant_id,)).rowcount > 0

    # -- backups index -----------------------------------------------------------------

    def add_backup(self, rotation_id: str, path: str, backup_file: str, sha256_after: str) -> None:
        """Index a backup of `path` taken before rotation `rotation_id` rewrote it;
        `sha256_after` is the digest of the file as the rotation left it (to tell whether
        someone changed it since, before restoring)."""
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO backups (rotation_id, path, backup_file, sha256_after, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (rotation_id, path, backup_file, sha256_after, self._clock()),
            )

    @staticmethod
    def _backups(rows: list[Any]) -> list[Backup]:
        return [Backup(r, p, f, s, _dt(c)) for r, p, f, s, c in rows]

    def backups_for(self, rotation_id: str) -> list[Backup]:
        with self._db.reading() as conn:
            rows = conn.execute(
                "SELECT rotation_id, path, backup_file, sha256_after, created_at FROM backups "
                "WHERE rotation_id = ? ORDER BY id",
                (rotation_id,),
            ).fetchall()
        return self._backups(rows)

    def prune_backups(self, keep: int) -> list[Backup]:
        """Keep the newest `keep` backups per path; drop the rest from the index and return
        them so the caller deletes their files (the store does not touch them)."""
        if keep < 0:
            raise ValueError("keep must be >= 0")
        with self._db.transaction() as conn:
            rows = conn.execute(
                "SELECT id, rotation_id, path, backup_file, sha256_after, created_at FROM ("
                "  SELECT *, row_number() OVER (PARTITION BY path ORDER BY id DESC) AS rank FROM backups"
                ") WHERE rank > ? ORDER BY id",
                (keep,),
            ).fetchall()
            conn.executemany("DELETE FROM backups WHERE id = ?", [(row[0],) for row in rows])
        return self._backups([row[1:] for row in rows])
