"""The contract's time format (RFC 3339, UTC, `Z`, whole seconds), both ways.

A bottom module: the certificate value, the inventory model, the store, the applier and the
daemon all speak this format, so it lives below all of them and imports nothing of the agent.
"""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(value: datetime | None) -> str | None:
    """RFC 3339 UTC with a `Z` suffix, second precision. None stays None; a naive time is a bug."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetime in a report")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> datetime:
    """Parse the contract's time format (an explicit offset is accepted too) -> aware UTC datetime."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError("time without a zone")
    return value.astimezone(UTC)


def duration(seconds: float) -> str:
    """A span for people: `45 s`, `13 min`, `1 h 14 min`, `3 days` (status, log lines)."""
    whole = int(seconds)
    if whole < 120:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min"
    if whole < 172800:
        return f"{whole // 3600} h {whole % 3600 // 60} min"
    return f"{whole // 86400} days"
