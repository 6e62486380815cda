"""The contract's data shapes: KeyRecord, Inventory, Event (agent-api.md sections 5.3-5.4).

Plain frozen dataclasses with `to_json()` producing exactly the wire dictionaries.
No I/O here; times are timezone-aware UTC datetimes and are rendered RFC 3339 with `Z`.
"""

from __future__ import annotations

import functools
import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final, Literal, NamedTuple

from agent.ssh.certificate import Certificate
from agent.ssh.krl import KrlContents
from agent.timefmt import parse_rfc3339, rfc3339

# Re-exported: the model is where callers meet the wire shapes and their time format.
__all__ = ["Certificate", "KrlContents", "parse_rfc3339", "rfc3339"]

KeyKind = Literal["authorized_key", "authorized_principal_ca", "host_key", "identity_key", "trusted_user_ca"]
KEY_KINDS: tuple[KeyKind, ...] = typing.get_args(KeyKind)

EventType = Literal[
    "key_added",
    "key_removed",
    "key_changed",
    "file_unreadable",
    "sshd_config_changed",
    "key_used",
    "instruction_applied",
    "instruction_failed",
]

JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Risk:
    score: int
    factors: tuple[str, ...]

    def to_json(self) -> JSON:
        return {"score": self.score, "factors": list(self.factors)}


NO_RISK = Risk(0, ())

# Few distinct risks exist on a host (a score and a handful of factor names), but one per record
# would be built: share equal ones. Bounded: past the cap, new risks are simply not shared.
_RISKS: dict[Risk, Risk] = {NO_RISK: NO_RISK}
_MAX_SHARED_RISKS: Final = 4096


def intern_risk(risk: Risk) -> Risk:
    """The shared Risk equal to `risk` (thread-safe: dict operations are atomic)."""
    shared = _RISKS.get(risk)
    if shared is not None:
        return shared
    if len(_RISKS) < _MAX_SHARED_RISKS:
        _RISKS[risk] = risk
    return risk


# The records of one file share its mtime, and are rendered one after another: format it once.
_file_time: Final = functools.lru_cache(maxsize=64)(rfc3339)


def _time(value: Any) -> datetime | None:
    return parse_rfc3339(value) if isinstance(value, str) else None


def _certificate_from_json(data: Any) -> Certificate | None:
    if not isinstance(data, dict):
        return None
    return Certificate(
        cert_type=data["cert_type"],
        key_id=data["key_id"],
        serial=int(data["serial"]),
        principals=tuple(data.get("principals", ())),
        valid_after=_time(data.get("valid_after")),
        valid_before=_time(data.get("valid_before")),
        ca_fingerprint=data["ca_fingerprint"],
    )


# Records carry an options mapping each; most keys have none, and an empty dict per record costs
# 64 bytes at 100,000s of records. Read-only, so it can be shared.
NO_OPTIONS: Final[Mapping[str, Any]] = MappingProxyType({})


class KeyRecord(NamedTuple):
    """One key in one place. A named tuple, not a dataclass: discovery builds 100,000s of them and
    the daemon keeps them all; a tuple is a quarter of the size of an instance with a __dict__ (225
    against 960 bytes) and several times faster to build. Immutable; `with_risk` / `_replace` copy."""

    kind: KeyKind
    user: str | None
    uid: int | None
    path: str
    line: int | None
    type: str
    bits: int
    fingerprint: str
    fingerprint_md5: str
    comment: str
    options: Mapping[str, Any] = NO_OPTIONS
    certificate: Certificate | None = None
    effective: bool = True
    ineffective_reason: str | None = None
    file_mtime: datetime | None = None
    first_seen: datetime | None = None
    last_used: datetime | None = None
    managed_by: str | None = None
    expires_at: datetime | None = None
    encrypted: bool | None = None
    # The KRL (sshd's RevokedKeys) lists this key: sshd refuses it whatever file holds it.
    revoked: bool = False
    risk: Risk = NO_RISK  # last, so that with_risk is a slice and one item

    @property
    def identity(self) -> tuple[str, str | None, str, str]:
        """What makes two records 'the same key in the same place' for diffing."""
        return (self.kind, self.user, self.path, self.fingerprint)

    def with_risk(self, risk: Risk) -> KeyRecord:
        """self._replace(risk=risk), fast: assembling sets the risk of every record."""
        return _tuple_new(KeyRecord, (*self[:-1], risk))

    def to_json(self) -> JSON:
        return {
            "kind": self.kind,
            "user": self.user,
            "uid": self.uid,
            "path": self.path,
            "line": self.line,
            "type": self.type,
            "bits": self.bits,
            "fingerprint": self.fingerprint,
            "fingerprint_md5": self.fingerprint_md5,
            "comment": self.comment,
            "options": dict(self.options),
            "certificate": self.certificate.to_json() if self.certificate else None,
            "effective": self.effective,
            "ineffective_reason": self.ineffective_reason,
            "file_mtime": _file_time(self.file_mtime),
            "first_seen": rfc3339(self.first_seen),
            "last_used": rfc3339(self.last_used),
            "managed_by": self.managed_by,
            "expires_at": rfc3339(self.expires_at),
            "encrypted": self.encrypted,
            "revoked": self.revoked,
            "risk": self.risk.to_json(),
        }

    @classmethod
    def from_json(cls, d: JSON) -> KeyRecord:
        """The inverse of to_json (for the snapshot kept across restarts)."""
        risk = d.get("risk") or {}
        return cls(
            kind=d["kind"],
            user=d.get("user"),
            uid=d.get("uid"),
            path=d["path"],
            line=d.get("line"),
            type=d["type"],
            bits=int(d["bits"]),
            fingerprint=d["fingerprint"],
            fingerprint_md5=d.get("fingerprint_md5", ""),
            comment=d.get("comment", ""),
            options=dict(d.get("options") or {}) or NO_OPTIONS,
            certificate=_certificate_from_json(d.get("certificate")),
            effective=bool(d.get("effective", True)),
            ineffective_reason=d.get("ineffective_reason"),
            file_mtime=_time(d.get("file_mtime")),
            first_seen=_time(d.get("first_seen")),
            last_used=_time(d.get("last_used")),
            managed_by=d.get("managed_by"),
            expires_at=_time(d.get("expires_at")),
            encrypted=d.get("encrypted"),
            revoked=bool(d.get("revoked", False)),
            risk=intern_risk(Risk(int(risk.get("score", 0)), tuple(risk.get("factors", ())))),
        )


_tuple_new = tuple.__new__


@dataclass(frozen=True)
class ScanError:
    """A file or line that could not be used. `error` is a reason, never file content."""

    path: str
    user: str | None
    error: str
    line: int | None = None

    @classmethod
    def from_json(cls, d: JSON) -> ScanError:
        return cls(path=d["path"], user=d.get("user"), error=d["error"], line=d.get("line"))

    def to_json(self) -> JSON:
        out: JSON = {"path": self.path, "user": self.user, "error": self.error}
        if self.line is not None:
            out["line"] = self.line
        return out


@dataclass(frozen=True)
class SshdSummary:
    version: str | None
    authorized_keys_file: tuple[str, ...]
    authorized_keys_command: str | None
    trusted_user_ca_keys: str | None
    permit_root_login: str
    password_authentication: bool
    pubkey_authentication: bool
    strict_modes: bool
    revoked_keys: str | None = None  # RevokedKeys (global), None when not set
    authorized_principals_file: str | None = None  # AuthorizedPrincipalsFile template (global)

    def to_json(self) -> JSON:
        return {
            "version": self.version,
            "authorized_keys_file": list(self.authorized_keys_file),
            "authorized_keys_command": self.authorized_keys_command,
            "trusted_user_ca_keys": self.trusted_user_ca_keys,
            "permit_root_login": self.permit_root_login,
            "password_authentication": self.password_authentication,
            "pubkey_authentication": self.pubkey_authentication,
            "strict_modes": self.strict_modes,
            "revoked_keys": self.revoked_keys,
            "authorized_principals_file": self.authorized_principals_file,
        }

    @classmethod
    def from_json(cls, d: JSON) -> SshdSummary:
        return cls(
            version=d.get("version"),
            authorized_keys_file=tuple(d.get("authorized_keys_file", ())),
            authorized_keys_command=d.get("authorized_keys_command"),
            trusted_user_ca_keys=d.get("trusted_user_ca_keys"),
            permit_root_login=d.get("permit_root_login", "prohibit-password"),
            password_authentication=bool(d.get("password_authentication", True)),
            pubkey_authentication=bool(d.get("pubkey_authentication", True)),
            strict_modes=bool(d.get("strict_modes", True)),
            revoked_keys=d.get("revoked_keys"),
            authorized_principals_file=d.get("authorized_principals_file"),
        )


# "unchecked": the file could not be evaluated here (larger than discovery.max_file_bytes); sshd
# may well use it, so no key is called ineffective because of it.
KrlStatus = Literal["ok", "missing", "invalid", "unreadable", "unchecked"]


@dataclass(frozen=True)
class KrlSummary:
    """The KRL sshd reads (`RevokedKeys`): where, whether sshd can use it, and what it revokes
    (`ssh-keygen -Q -l`). "missing", "invalid" and "unreadable" mean sshd refuses every public key."""

    path: str
    status: KrlStatus
    contents: KrlContents | None = None  # None unless status is "ok"
    problem: str | None = None  # why it is not "ok" (a reason, never content)

    def to_json(self) -> JSON:
        out: JSON = {"path": self.path, "status": self.status, "problem": self.problem}
        out.update(self.contents.to_json() if self.contents else {"entries": 0})
        return out

    @classmethod
    def from_json(cls, d: JSON) -> KrlSummary:
        status = d.get("status", "ok")
        return cls(
            path=d["path"],
            status=status if status in ("ok", "missing", "invalid", "unreadable", "unchecked") else "invalid",
            contents=KrlContents.from_json(d) if status == "ok" else None,
            problem=d.get("problem"),
        )


@dataclass(frozen=True, slots=True)
class PrincipalLine:
    """One principal in an account's AuthorizedPrincipalsFile (`options`: the line's options, raw)."""

    user: str
    path: str
    line: int
    principal: str
    options: str | None = None

    def to_json(self) -> JSON:
        return {
            "user": self.user,
            "path": self.path,
            "line": self.line,
            "principal": self.principal,
            "options": self.options,
        }

    @classmethod
    def from_json(cls, d: JSON) -> PrincipalLine:
        return cls(d["user"], d["path"], int(d["line"]), d["principal"], d.get("options"))


_encode: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
_RECORDS_PER_CHUNK: Final = 256


@dataclass(frozen=True)
class Inventory:
    snapshot_id: str
    generation: int
    collected_at: datetime
    host_id: str | None
    sshd: SshdSummary
    keys: tuple[KeyRecord, ...]
    errors: tuple[ScanError, ...]
    # sshd's KRL (None: RevokedKeys not set) and the accounts' authorized principals.
    krl: KrlSummary | None = None
    principals: tuple[PrincipalLine, ...] = ()
    # Not on the wire: what the scan read, for the watcher and the summary line.
    users_scanned: int = 0
    files_read: tuple[str, ...] = ()

    def to_json(self) -> JSON:
        return {**self._head_json(), "keys": [k.to_json() for k in self.keys], "errors": self._errors_json()}

    def to_json_text(self, **overrides: Any) -> str:
        """The compact JSON text of `{**self.to_json(), **overrides}`, encoded a chunk of records
        at a time. Equal once parsed; but the dictionaries of every record at once (the store
        and the report take the whole inventory) would leave ~7 MB at 10,000 keys behind them,
        free but held by the allocator between longer-lived objects."""
        head = {**self._head_json(), **overrides}
        parts = [_encode(head)[:-1], ',"keys":[']
        keys = self.keys
        for start in range(0, len(keys), _RECORDS_PER_CHUNK):
            chunk = [k.to_json() for k in keys[start : start + _RECORDS_PER_CHUNK]]
            parts.append(("," if start else "") + _encode(chunk)[1:-1])
        parts.append('],"errors":' + _encode(self._errors_json()) + "}")
        return "".join(parts)

    def _head_json(self) -> JSON:
        return {
            "snapshot_id": self.snapshot_id,
            "generation": self.generation,
            "collected_at": rfc3339(self.collected_at),
            "host_id": self.host_id,
            "sshd": self.sshd.to_json(),
            "krl": self.krl.to_json() if self.krl else None,
            "authorized_principals": [p.to_json() for p in self.principals],
        }

    def _errors_json(self) -> list[JSON]:
        return [e.to_json() for e in self.errors]

    @classmethod
    def from_json(cls, d: JSON) -> Inventory:
        return cls(
            snapshot_id=d["snapshot_id"],
            generation=int(d.get("generation", 0)),
            collected_at=parse_rfc3339(d["collected_at"]),
            host_id=d.get("host_id"),
            sshd=SshdSummary.from_json(d["sshd"]),
            keys=tuple(KeyRecord.from_json(k) for k in d.get("keys", ())),
            errors=tuple(ScanError.from_json(e) for e in d.get("errors", ())),
            krl=KrlSummary.from_json(d["krl"]) if isinstance(d.get("krl"), dict) else None,
            principals=tuple(PrincipalLine.from_json(p) for p in d.get("authorized_principals") or ()),
        )


@dataclass(frozen=True)
class Event:
    id: str
    seq: int
    at: datetime
    type: EventType
    user: str | None
    path: str | None
    fingerprint: str | None
    key: KeyRecord | None
    detail: JSON = field(default_factory=dict)

    def to_json(self) -> JSON:
        return {
            "id": self.id,
            "seq": self.seq,
            "at": rfc3339(self.at),
            "type": self.type,
            "user": self.user,
            "path": self.path,
            "fingerprint": self.fingerprint,
            "key": self.key.to_json() if self.key else None,
            "detail": dict(self.detail),
        }
