"""Small pure helpers: identifiers, RFC 3339 times, hashing of secrets, OpenSSH key fingerprints."""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from datetime import UTC, datetime


def new_id(prefix: str, nbytes: int = 8) -> str:
    return f"{prefix}_{secrets.token_hex(nbytes)}"


def new_secret(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def secret_hash(secret: str) -> str:
    """Secrets are stored only as hashes, so the database never holds a usable key."""
    return hashlib.sha256(secret.encode()).hexdigest()


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def public_key_fingerprint(text: str) -> str:
    """SHA256 fingerprint (as ssh-keygen -l prints it) of an OpenSSH public key line "type base64 [comment]".

    Raises ValueError naming the reason, never the key text.
    """
    fields = text.strip().split()
    if len(fields) < 2:
        raise ValueError("public key must be 'type base64 [comment]'")
    try:
        blob = base64.b64decode(fields[1], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("public key base64 is malformed") from None
    if len(blob) < 4:
        raise ValueError("public key blob is too short")
    name_len = int.from_bytes(blob[:4], "big")
    if blob[4 : 4 + name_len].decode("ascii", "replace") != fields[0]:
        raise ValueError("public key type does not match its blob")
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"
