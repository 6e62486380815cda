"""SQLite state: one connection (check_same_thread=False) guarded by one re-entrant lock.

Callers that need several statements to be atomic hold `store.lock` and use `store.transaction()`.
Secrets are stored only as hashes. Resources without their own query needs (scans, rotations,
ephemeral grants) share one `objects` table of JSON documents.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hosts (
    host_id TEXT PRIMARY KEY, agent_id TEXT NOT NULL, machine_id TEXT NOT NULL UNIQUE,
    hostname TEXT NOT NULL, info TEXT NOT NULL, enrolled_at REAL NOT NULL,
    heartbeat TEXT, heartbeat_at REAL, inventory TEXT, inventory_at REAL);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY, key_hash TEXT NOT NULL UNIQUE, subject TEXT NOT NULL, role TEXT NOT NULL,
    host_id TEXT, created_at REAL NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS tokens (
    jti TEXT PRIMARY KEY, typ TEXT NOT NULL, subject TEXT NOT NULL, key_id TEXT NOT NULL,
    exp INTEGER NOT NULL, revoked TEXT);
CREATE TABLE IF NOT EXISTS events (
    n INTEGER PRIMARY KEY AUTOINCREMENT, host_id TEXT NOT NULL, event_id TEXT NOT NULL, body TEXT NOT NULL,
    UNIQUE (host_id, event_id));
CREATE TABLE IF NOT EXISTS duplicates (host_id TEXT PRIMARY KEY, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS instructions (
    n INTEGER PRIMARY KEY AUTOINCREMENT, jti TEXT NOT NULL UNIQUE, host_id TEXT NOT NULL, kind TEXT NOT NULL,
    body TEXT NOT NULL, jws TEXT NOT NULL, iat INTEGER NOT NULL, exp INTEGER NOT NULL,
    status TEXT NOT NULL, result TEXT, result_at REAL, result_n INTEGER);
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL, id TEXT NOT NULL, host_id TEXT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (kind, id));
CREATE TABLE IF NOT EXISTS policies (target TEXT PRIMARY KEY, body TEXT NOT NULL, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (
    subject TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL, status INTEGER NOT NULL,
    body TEXT, headers TEXT NOT NULL, PRIMARY KEY (subject, key));
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
"""


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


class Store:
    def __init__(self, path: str) -> None:
        self.lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._depth = 0
        with self.lock:
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self.lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN/COMMIT, or ROLLBACK on an exception; nested calls join the outer transaction."""
        with self.lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")
            finally:
                self._depth = 0

    def _one(self, sql: str, *args: Any) -> sqlite3.Row | None:
        with self.lock:
            row: sqlite3.Row | None = self._db.execute(sql, args).fetchone()
            return row

    def _all(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        with self.lock:
            return list(self._db.execute(sql, args).fetchall())

    def _run(self, sql: str, *args: Any) -> int:
        with self.lock:
            return self._db.execute(sql, args).rowcount

    # -- meta ---------------------------------------------------------------------------------------
    def next_counter(self, name: str) -> int:
        with self.lock:
            row = self._one("SELECT v FROM meta WHERE k = ?", name)
            value = int(row["v"]) + 1 if row else 1
            self._run("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", name, str(value))
            return value

    # -- hosts --------------------------------------------------------------------------------------
    @staticmethod
    def _host(row: sqlite3.Row | None) -> dict[str, Any] | None:
        if row is None:
            return None
        return {
            "host_id": row["host_id"],
            "agent_id": row["agent_id"],
            "machine_id": row["machine_id"],
            "hostname": row["hostname"],
            "info": _loads(row["info"]),
            "enrolled_at": row["enrolled_at"],
            "heartbeat": _loads(row["heartbeat"]),
            "heartbeat_at": row["heartbeat_at"],
            "inventory": _loads(row["inventory"]),
            "inventory_at": row["inventory_at"],
        }

    def host(self, host_id: str) -> dict[str, Any] | None:
        return self._host(self._one("SELECT * FROM hosts WHERE host_id = ?", host_id))

    def host_by_machine(self, machine_id: str) -> dict[str, Any] | None:
        return self._host(self._one("SELECT * FROM hosts WHERE machine_id = ?", machine_id))

    def hosts(self, hostname: str | None = None) -> list[dict[str, Any]]:
        if hostname is None:
            rows = self._all("SELECT * FROM hosts ORDER BY enrolled_at, host_id")
        else:
            rows = self._all("SELECT * FROM hosts WHERE hostname = ? ORDER BY enrolled_at", hostname)
        return [h for h in map(self._host, rows) if h is not None]

    def upsert_host(
        self, host_id: str, agent_id: str, machine_id: str, hostname: str, info: Any, now: float
    ) -> None:
        self._run(
            "INSERT INTO hosts (host_id, agent_id, machine_id, hostname, info, enrolled_at) "
            "VALUES (?,?,?,?,?,?) "
            "ON CONFLICT(host_id) DO UPDATE SET hostname = excluded.hostname, info = excluded.info",
            host_id,
            agent_id,
            machine_id,
            hostname,
            _dumps(info),
            now,
        )

    def delete_host(self, host_id: str) -> bool:
        return self._run("DELETE FROM hosts WHERE host_id = ?", host_id) > 0

    def set_heartbeat(self, host_id: str, body: Any, now: float) -> None:
        self._run(
            "UPDATE hosts SET heartbeat = ?, heartbeat_at = ? WHERE host_id = ?", _dumps(body), now, host_id
        )

    def set_inventory(self, host_id: str, inventory: Any, now: float) -> None:
        self._run(
            "UPDATE hosts SET inventory = ?, inventory_at = ? WHERE host_id = ?",
            _dumps(inventory),
            now,
            host_id,
        )

    # -- API keys and tokens ------------------------------------------------------------------------
    def add_api_key(
        self, key_id: str, key_hash: str, subject: str, role: str, host_id: str | None, now: float
    ) -> None:
        self._run(
            "INSERT INTO api_keys (key_id, key_hash, subject, role, host_id, created_at) "
            "VALUES (?,?,?,?,?,?)",
            key_id,
            key_hash,
            subject,
            role,
            host_id,
            now,
        )

    def api_key_by_hash(self, key_hash: str) -> sqlite3.Row | None:
        return self._one("SELECT * FROM api_keys WHERE key_hash = ?", key_hash)

    def api_key(self, key_id: str) -> sqlite3.Row | None:
        return self._one("SELECT * FROM api_keys WHERE key_id = ?", key_id)

    def revoke_api_keys(self, *, key_hash: str | None = None, subject: str | None = None) -> int:
        if key_hash is not None:
            return self._run("UPDATE api_keys SET revoked = 1 WHERE key_hash = ? AND revoked = 0", key_hash)
        return self._run("UPDATE api_keys SET revoked = 1 WHERE subject = ? AND revoked = 0", subject)

    def add_token(self, jti: str, typ: str, subject: str, key_id: str, exp: int) -> None:
        self._run(
            "INSERT INTO tokens (jti, typ, subject, key_id, exp) VALUES (?,?,?,?,?)",
            jti,
            typ,
            subject,
            key_id,
            exp,
        )

    def token_revocation(self, jti: str) -> str | None:
        """None when the token is live; else why not ("unknown", "expired", "rotated")."""
        row = self._one("SELECT revoked FROM tokens WHERE jti = ?", jti)
        if row is None:
            return "unknown"
        return str(row["revoked"]) if row["revoked"] is not None else None

    def revoke_token(self, jti: str, reason: str) -> None:
        self._run("UPDATE tokens SET revoked = ? WHERE jti = ? AND revoked IS NULL", reason, jti)

    def revoke_tokens_of_type(self, typ: str, reason: str) -> int:
        return self._run("UPDATE tokens SET revoked = ? WHERE typ = ? AND revoked IS NULL", reason, typ)

    # -- events -------------------------------------------------------------------------------------
    def event_seen(self, host_id: str, event_id: str) -> bool:
        return (
            self._one("SELECT 1 FROM events WHERE host_id = ? AND event_id = ?", host_id, event_id)
            is not None
        )

    def add_event(self, host_id: str, event: dict[str, Any]) -> None:
        self._run(
            "INSERT INTO events (host_id, event_id, body) VALUES (?,?,?)", host_id, event["id"], _dumps(event)
        )

    def add_duplicates(self, host_id: str, count: int) -> None:
        self._run(
            "INSERT INTO duplicates (host_id, count) VALUES (?, ?) "
            "ON CONFLICT(host_id) DO UPDATE SET count = count + excluded.count",
            host_id,
            count,
        )

    def events(self, host_id: str) -> list[dict[str, Any]]:
        return [
            json.loads(r["body"])
            for r in self._all("SELECT body FROM events WHERE host_id = ? ORDER BY n", host_id)
        ]

    def duplicate_count(self, host_id: str) -> int:
        row = self._one("SELECT count FROM duplicates WHERE host_id = ?", host_id)
        return int(row["count"]) if row else 0

    # -- instructions -------------------------------------------------------------------------------
    @staticmethod
    def _instruction(row: sqlite3.Row | None) -> dict[str, Any] | None:
        if row is None:
            return None
        return {
            "jti": row["jti"],
            "host_id": row["host_id"],
            "kind": row["kind"],
            "body": _loads(row["body"]),
            "jws": row["jws"],
            "iat": row["iat"],
            "exp": row["exp"],
            "status": row["status"],
            "result": _loads(row["result"]),
            "result_at": row["result_at"],
        }

    def add_instruction(
        self, jti: str, host_id: str, kind: str, body: Any, jws: str, iat: int, exp: int
    ) -> None:
        self._run(
            "INSERT INTO instructions (jti, host_id, kind, body, jws, iat, exp, status) "
            "VALUES (?,?,?,?,?,?,?,?)",
            jti,
            host_id,
            kind,
            _dumps(body),
            jws,
            iat,
            exp,
            "pending",
        )

    def instruction(self, jti: str) -> dict[str, Any] | None:
        return self._instruction(self._one("SELECT * FROM instructions WHERE jti = ?", jti))

    def pending_instructions(self, host_id: str) -> list[dict[str, Any]]:
        rows = self._all(
            "SELECT * FROM instructions WHERE host_id = ? AND status = 'pending' ORDER BY n", host_id
        )
        return [i for i in map(self._instruction, rows) if i is not None]

    def set_instruction_result(self, jti: str, status: str, result: Any, now: float) -> None:
        n = self.next_counter("result_n")
        self._run(
            "UPDATE instructions SET status = ?, result = ?, result_at = ?, result_n = ? WHERE jti = ?",
            status,
            _dumps(result),
            now,
            n,
            jti,
        )

    def instruction_results(self) -> list[dict[str, Any]]:
        rows = self._all("SELECT * FROM instructions WHERE result IS NOT NULL ORDER BY result_n")
        return [i for i in map(self._instruction, rows) if i is not None]

    # -- scans, rotations, ephemeral grants ---------------------------------------------------------
    def put_object(self, kind: str, object_id: str, host_id: str, doc: dict[str, Any]) -> None:
        self._run(
            "INSERT OR REPLACE INTO objects (kind, id, host_id, doc) VALUES (?,?,?,?)",
            kind,
            object_id,
            host_id,
            _dumps(doc),
        )

    def get_object(self, kind: str, object_id: str) -> dict[str, Any] | None:
        row = self._one("SELECT doc FROM objects WHERE kind = ? AND id = ?", kind, object_id)
        return None if row is None else dict(json.loads(row["doc"]))

    # -- policies -----------------------------------------------------------------------------------
    def policy(self, target: str) -> tuple[dict[str, Any], int] | None:
        row = self._one("SELECT body, version FROM policies WHERE target = ?", target)
        return None if row is None else (dict(json.loads(row["body"])), int(row["version"]))

    def set_policy(self, target: str, body: dict[str, Any], version: int) -> None:
        self._run(
            "INSERT OR REPLACE INTO policies (target, body, version) VALUES (?,?,?)",
            target,
            _dumps(body),
            version,
        )

    # -- idempotency --------------------------------------------------------------------------------
    def idempotent_answer(self, subject: str, key: str) -> tuple[str, int, Any, dict[str, str]] | None:
        row = self._one("SELECT * FROM idempotency WHERE subject = ? AND key = ?", subject, key)
        if row is None:
            return None
        return (
            str(row["fingerprint"]),
            int(row["status"]),
            _loads(row["body"]),
            dict(json.loads(row["headers"])),
        )

    def save_idempotent_answer(
        self, subject: str, key: str, fingerprint: str, status: int, body: Any, headers: dict[str, str]
    ) -> None:
        self._run(
            "INSERT OR REPLACE INTO idempotency (subject, key, fingerprint, status, body, headers) "
            "VALUES (?,?,?,?,?,?)",
            subject,
            key,
            fingerprint,
            status,
            None if body is None else _dumps(body),
            _dumps(headers),
        )
