"""What the daemon remembers about each key between scans: when it was first seen, when it was last
used (from sshd's log), and which lines the agent wrote itself (managed_by, until when).

The scan context reads these maps (each KeyRecord carries first_seen, last_used, managed_by); the
state store keeps first_seen and last_used across restarts. first_seen_of and last_used_of are the
pure parts.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from datetime import datetime

from agent.inventory.model import Inventory, KeyRecord
from agent.store.state import StateStore

FirstSeenKey = tuple[str, str | None, str]  # (fingerprint, user, path)
LastUsedKey = tuple[str, str | None]  # (fingerprint, user)
ManagedKey = tuple[str, str | None, str]  # (fingerprint, user, path)


class KeyHistory:
    def __init__(self, store: StateStore) -> None:
        self._store = store
        self.first_seen: dict[FirstSeenKey, datetime] = dict(store.first_seen_map())
        self.last_used: dict[LastUsedKey, datetime] = dict(store.last_used_map())
        self.managed: dict[ManagedKey, tuple[str, datetime | None]] = {}
        self._last_used_lock = threading.Lock()  # the usage follower adds while a scan re-keys

    def after_scan(self, inventory: Inventory, now: datetime, *, full: bool) -> None:
        """Keys new in `inventory` are first seen `now` (and stored). After a full scan only the keys
        present are remembered; a key removed and re-added is new again."""
        if full:
            # Keyed by the records' own strings: maps loaded from the store hold a copy of every
            # string (~4 MB at 10,000 keys).
            self.first_seen, fresh = first_seen_of(inventory.keys, self.first_seen, now)
            with self._last_used_lock:
                self.last_used = last_used_of(inventory.keys, self.last_used)
        else:
            fresh = [
                (k.fingerprint, k.user, k.path)
                for k in inventory.keys
                if (k.fingerprint, k.user, k.path) not in self.first_seen
            ]
            for ident in fresh:
                self.first_seen[ident] = now
        if fresh:
            self._store.record_seen(fresh, now)
        if full:
            self._store.retain_seen(self.first_seen)

    def note_used(self, fingerprint: str, user: str | None, at: datetime) -> None:
        with self._last_used_lock:
            self.last_used[(fingerprint, user)] = at
        self._store.record_used(fingerprint, user, at)

    def note_managed(
        self, fingerprint: str, user: str | None, path: str, managed_by: str, expires_at: datetime | None
    ) -> None:
        self.managed[(fingerprint, user, path)] = (managed_by, expires_at)


def first_seen_of(
    keys: Iterable[KeyRecord], known: Mapping[FirstSeenKey, datetime], now: datetime
) -> tuple[dict[FirstSeenKey, datetime], list[FirstSeenKey]]:
    """(first_seen of every key in `keys`, the ones not in `known`, which get `now`). Pure."""
    out: dict[FirstSeenKey, datetime] = {}
    fresh: list[FirstSeenKey] = []
    for k in keys:
        ident = (k.fingerprint, k.user, k.path)
        at = known.get(ident)
        if at is None:
            fresh.append(ident)
            at = now
        out[ident] = at
    return out, fresh


def last_used_of(
    keys: Iterable[KeyRecord], known: Mapping[LastUsedKey, datetime]
) -> dict[LastUsedKey, datetime]:
    """`known` again, keyed by the records' strings where a record has that key (entries of keys
    not present stay: such a key may come back, and its last use with it). Pure."""
    out = dict(known)
    if known:
        for k in keys:
            ident = (k.fingerprint, k.user)
            at = out.pop(ident, None)
            if at is not None:
                out[ident] = at
    return out
