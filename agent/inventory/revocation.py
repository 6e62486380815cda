"""sshd's key revocation list applied to discovered keys, and its changes as events. Pure.

A key the KRL lists is refused by sshd whatever file holds it: its record says `revoked: true`,
`effective: false`, `ineffective_reason: "revoked"` (a reason found first, e.g. StrictModes, is
kept). A KRL sshd cannot use (missing, unreadable, corrupt) makes sshd refuse every public key:
every record of a key used to log in here is then ineffective with `UNUSABLE`.

`with_krl` is idempotent over its own output (the daemon re-assembles from the records of the last
assembly): the two reasons it sets are taken back before the current verdict is applied.

Records of every kind but host keys are checked: the keys sshd authenticates users with
(authorized keys, `cert-authority` lines, TrustedUserCAKeys), and identity keys, whose revocation
here says their owner's key was withdrawn.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from agent.inventory.model import KeyRecord, KrlSummary, PrincipalLine

REVOKED: Final = "revoked"
UNUSABLE: Final = "RevokedKeys file unusable: sshd refuses every public key"
_CHECKED_KINDS: Final = frozenset(
    {"authorized_key", "authorized_principal_ca", "trusted_user_ca", "identity_key"}
)
_LOGIN_KINDS: Final = frozenset({"authorized_key", "authorized_principal_ca", "trusted_user_ca"})


def with_krl(record: KeyRecord, krl: KrlSummary | None) -> KeyRecord:
    """The record as sshd would treat it under `krl` (None: no RevokedKeys for this account)."""
    effective, reason = record.effective, record.ineffective_reason
    if reason in (REVOKED, UNUSABLE):
        effective, reason = True, None
    revoked = False
    if krl is not None and record.kind in _CHECKED_KINDS:
        if krl.contents is not None:
            revoked = krl.contents.revokes(record.fingerprint, record.certificate)
            if revoked and effective:
                effective, reason = False, REVOKED
        elif krl.status != "unchecked" and record.kind in _LOGIN_KINDS and effective:
            effective, reason = False, UNUSABLE
    if (effective, reason, revoked) == (record.effective, record.ineffective_reason, record.revoked):
        return record
    return record._replace(effective=effective, ineffective_reason=reason, revoked=revoked)


# -- changes ----------------------------------------------------------------------------------------

JSON = dict[str, Any]


def krl_change(old: KrlSummary | None, new: KrlSummary | None) -> JSON | None:
    """The detail of an `sshd_config_changed` event for the KRL, or None when nothing changed."""
    if old == new:
        return None
    before = set(old.contents.sha256) if old and old.contents else set()
    after = set(new.contents.sha256) if new and new.contents else set()
    certs_before = [c.to_json() for c in old.contents.certificates] if old and old.contents else []
    certs_after = [c.to_json() for c in new.contents.certificates] if new and new.contents else []
    return {
        "directive": "RevokedKeys",
        "before": _krl_state(old),
        "after": _krl_state(new),
        "revoked_added": sorted(after - before),
        "revoked_removed": sorted(before - after),
        "certificates_changed": certs_before != certs_after,
    }


def _krl_state(krl: KrlSummary | None) -> JSON | None:
    if krl is None:
        return None
    return {
        "path": krl.path,
        "status": krl.status,
        "problem": krl.problem,
        "version": krl.contents.version if krl.contents else None,
        "entries": krl.contents.entries if krl.contents else 0,
    }


def principals_changes(
    old: Iterable[PrincipalLine], new: Iterable[PrincipalLine]
) -> list[tuple[str, str, JSON]]:
    """(user, path, detail) for each principals file whose principals changed."""

    def group(lines: Iterable[PrincipalLine]) -> dict[tuple[str, str], set[tuple[str, str | None]]]:
        out: dict[tuple[str, str], set[tuple[str, str | None]]] = {}
        for p in lines:
            out.setdefault((p.user, p.path), set()).add((p.principal, p.options))
        return out

    before, after = group(old), group(new)
    changes = []
    for user, path in sorted(set(before) | set(after)):
        was, now = before.get((user, path), set()), after.get((user, path), set())
        if was != now:
            detail: JSON = {
                "directive": "AuthorizedPrincipalsFile",
                "added": sorted(p for p, _ in now - was),
                "removed": sorted(p for p, _ in was - now),
            }
            changes.append((user, path, detail))
    return changes
