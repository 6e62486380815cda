"""store: SQLite state in the agent's state directory (outbox, state, jti registry, backups)."""

from agent.store.db import Database, StoreCorrupt, StoreError, open_database
from agent.store.outbox import Outbox
from agent.store.state import Backup, Grant, PendingApply, SecretInStatus, StateStore

__all__ = [
    "Backup",
    "Database",
    "Grant",
    "Outbox",
    "PendingApply",
    "SecretInStatus",
    "StateStore",
    "StoreCorrupt",
    "StoreError",
    "open_database",
]
