"""The daemon's in-memory first_seen / last_used maps, re-keyed after a full scan. Pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agent.daemon.history import first_seen_of, last_used_of
from agent.inventory.model import KeyRecord

T0 = datetime(2026, 11, 27, tzinfo=UTC)


def rec(fp: str, user: str | None, path: str) -> KeyRecord:
    return KeyRecord("authorized_key", user, 1000, path, 1, "ssh-ed25519", 256, fp, "MD5:x", "")


def test_first_seen_keeps_known_times_adds_fresh_ones_and_forgets_absent_keys() -> None:
    a, b = rec("SHA256:a", "alice", "/home/alice/.ssh/authorized_keys"), rec("SHA256:b", None, "/etc/x")
    known = {
        ("SHA256:a", "alice", "/home/alice/.ssh/authorized_keys"): T0,
        ("SHA256:gone", "bob", "/home/bob/.ssh/authorized_keys"): T0,
    }
    now = T0 + timedelta(days=1)
    seen, fresh = first_seen_of([a, b], known, now)
    assert seen == {(a.fingerprint, a.user, a.path): T0, ("SHA256:b", None, "/etc/x"): now}
    assert fresh == [("SHA256:b", None, "/etc/x")]
    # The keys are built from the records' own strings (the store's copies are dropped).
    key = next(k for k in seen if k[0] == "SHA256:a")
    assert key[0] is a.fingerprint and key[2] is a.path


def test_last_used_keeps_every_entry_and_shares_the_records_strings() -> None:
    a = rec("SHA256:a", "alice", "/p")
    fingerprint_copy = "".join(["SHA256:", "a"])  # an equal string that is another object
    known = {(fingerprint_copy, "alice"): T0, ("SHA256:gone", "bob"): T0 - timedelta(days=3)}
    out = last_used_of([a], known)
    assert out == known
    assert next(k for k in out if k[1] == "alice")[0] is a.fingerprint
    assert last_used_of([a], {}) == {}
