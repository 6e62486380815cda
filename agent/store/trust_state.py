"""The agent's authoritative record of what it revokes and which CAs it trusts (kv documents in
agent.db: `trust.revocations`, `trust.cas`).

The files sshd reads (the KRL, the CA keys, the principals) are always rebuilt from this record,
never parsed back: a KRL cannot have an entry taken out, and a file changed by hand must not leak
into the next version the agent writes.

Each record has a `generation`, bumped when what the agent wants changes, and the generation and
sha256 of what it last installed. A change is recorded *before* the files are written: a crash in
between leaves `generation > installed_generation`, and the next start rebuilds the files from the
record (the instruction, never answered, comes again and finds its effect in place). A file whose
bytes are not the ones the agent installed was changed by someone else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.ssh.krl import KrlError, RevocationEntry
from agent.store.state import StateStore

REVOCATIONS_KEY = "trust.revocations"
CAS_KEY = "trust.cas"

JSON = dict[str, Any]


@dataclass(frozen=True)
class RevocationState:
    entries: frozenset[RevocationEntry] = frozenset()
    generation: int = 0
    installed_generation: int = 0
    installed_sha256: str | None = None

    @property
    def pending(self) -> bool:
        """A change recorded but not (known to be) installed: a crash, or a failed install."""
        return self.generation != self.installed_generation

    def to_json(self) -> JSON:
        return {
            "entries": [e.to_json() for e in sorted(self.entries)],
            "generation": self.generation,
            "installed_generation": self.installed_generation,
            "installed_sha256": self.installed_sha256,
        }

    @classmethod
    def from_json(cls, data: Any) -> RevocationState:
        if not isinstance(data, dict):
            return cls()
        return cls(
            entries=frozenset(RevocationEntry.from_json(e) for e in data.get("entries") or ()),
            generation=int(data.get("generation", 0)),
            installed_generation=int(data.get("installed_generation", 0)),
            installed_sha256=data.get("installed_sha256"),
        )


@dataclass(frozen=True)
class TrustedCa:
    ca_id: str
    public_key: str  # "type base64", canonical
    principals: tuple[tuple[str, tuple[str, ...]], ...]  # (account, principals), sorted

    def to_json(self) -> JSON:
        return {
            "ca_id": self.ca_id,
            "public_key": self.public_key,
            "principals": {user: list(names) for user, names in self.principals},
        }

    @classmethod
    def from_json(cls, data: JSON) -> TrustedCa:
        principals = data.get("principals") or {}
        return cls(
            ca_id=str(data["ca_id"]),
            public_key=str(data["public_key"]),
            principals=tuple(sorted((str(u), tuple(sorted(map(str, p)))) for u, p in principals.items())),
        )


@dataclass(frozen=True)
class CaTrustState:
    cas: tuple[TrustedCa, ...] = ()  # sorted by ca_id
    generation: int = 0
    installed_generation: int = 0
    # (file name relative to the trust directory, sha256 of the bytes the agent wrote there)
    installed: tuple[tuple[str, str], ...] = ()

    @property
    def pending(self) -> bool:
        return self.generation != self.installed_generation

    def to_json(self) -> JSON:
        return {
            "cas": [c.to_json() for c in self.cas],
            "generation": self.generation,
            "installed_generation": self.installed_generation,
            "installed": dict(self.installed),
        }

    @classmethod
    def from_json(cls, data: Any) -> CaTrustState:
        if not isinstance(data, dict):
            return cls()
        return cls(
            cas=tuple(sorted((TrustedCa.from_json(c) for c in data.get("cas") or ()), key=lambda c: c.ca_id)),
            generation=int(data.get("generation", 0)),
            installed_generation=int(data.get("installed_generation", 0)),
            installed=tuple(sorted((str(k), str(v)) for k, v in (data.get("installed") or {}).items())),
        )


class TrustState:
    """Typed access to the two documents (thread-safe through the store)."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def revocations(self) -> RevocationState:
        try:
            return RevocationState.from_json(self.store.get_document(REVOCATIONS_KEY))
        except (KrlError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"the stored revocation list is unreadable ({type(exc).__name__})") from None

    def save_revocations(self, state: RevocationState) -> None:
        self.store.put_document(REVOCATIONS_KEY, state.to_json())

    def cas(self) -> CaTrustState:
        try:
            return CaTrustState.from_json(self.store.get_document(CAS_KEY))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"the stored CA trust is unreadable ({type(exc).__name__})") from None

    def save_cas(self, state: CaTrustState) -> None:
        self.store.put_document(CAS_KEY, state.to_json())
