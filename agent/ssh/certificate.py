"""OpenSSH certificate facts as reported (the contract's `certificate` object)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal


def rfc3339(value: datetime | None) -> str | None:
    """RFC 3339 UTC with a `Z` suffix, second precision (the contract's time format)."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetime in a report")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Certificate:
    cert_type: Literal["user", "host"]
    key_id: str
    serial: int
    principals: tuple[str, ...]
    valid_after: datetime | None  # None: valid since forever
    valid_before: datetime | None  # None: valid forever
    ca_fingerprint: str

    def to_json(self) -> dict[str, Any]:
        return {
            "cert_type": self.cert_type,
            "key_id": self.key_id,
            "serial": self.serial,
            "principals": list(self.principals),
            "valid_after": rfc3339(self.valid_after),
            "valid_before": rfc3339(self.valid_before),
            "ca_fingerprint": self.ca_fingerprint,
        }
