"""OpenSSH certificates: the reported facts (the contract's `certificate` object) and how the
certificate part of a blob is read and checked (sshkey.c cert_parse).

Pure. A certificate is accepted exactly when OpenSSH 9.2 accepts it: user or host type, at most
256 principals, well-formed critical-option and extension sections, a CA that is a plain key
(certificates may not sign certificates) and a CA signature that verifies.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from agent.ssh.keytypes import InvalidKey, KeyFields, fingerprint_sha256, key_fields, resolve_name, type_name
from agent.ssh.signature import verify_signature
from agent.ssh.wire import WireError, cstring, put_string, string, uint

# `as`: re-exported for agent.instructions.apply until it imports agent.timefmt (issue 10 applier split).
from agent.timefmt import rfc3339 as rfc3339

_MAX_PRINCIPALS: Final = 256  # SSHKEY_CERT_MAX_PRINCIPALS
_U64_MAX: Final = (1 << 64) - 1


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


def parse_certificate(blob: bytes, pos: int) -> tuple[Certificate, int]:
    """The certificate fields that follow the key's own fields in `blob`, from `pos` to the end of
    the signature -> (certificate, position after it). Raises InvalidKey or WireError."""
    serial, pos = uint(blob, pos, 8)
    ctype, pos = uint(blob, pos, 4)
    key_id, pos = cstring(blob, pos)
    principals_buf, pos = string(blob, pos)
    valid_after, pos = uint(blob, pos, 8)
    valid_before, pos = uint(blob, pos, 8)
    critical, pos = string(blob, pos)
    extensions, pos = string(blob, pos)
    _reserved, pos = string(blob, pos)
    ca_blob, pos = string(blob, pos)
    signed_len = pos
    signature, pos = string(blob, pos)
    if ctype not in (1, 2):
        raise InvalidKey("unknown certificate type")
    principals: list[str] = []
    ppos = 0
    while ppos < len(principals_buf):
        if len(principals) >= _MAX_PRINCIPALS:
            raise InvalidKey("too many certificate principals")
        principal, ppos = cstring(principals_buf, ppos)
        principals.append(principal.decode("utf-8", "replace"))
    _check_option_section(critical)
    _check_option_section(extensions)
    try:
        ca_fields, ca_plain = _parse_ca_key(ca_blob)
    except (InvalidKey, WireError):
        raise InvalidKey("invalid certificate CA key") from None
    if not verify_signature(ca_fields, signature, blob[:signed_len]):
        raise InvalidKey("certificate signature invalid")
    cert = Certificate(
        cert_type="user" if ctype == 1 else "host",
        key_id=key_id.decode("utf-8", "replace"),
        serial=serial,
        principals=tuple(principals),
        valid_after=None if valid_after == 0 else _datetime(valid_after),
        valid_before=None if valid_before == _U64_MAX else _datetime(valid_before),
        ca_fingerprint=fingerprint_sha256(ca_plain),
    )
    return cert, pos


def _parse_ca_key(blob: bytes) -> tuple[KeyFields, bytes]:
    """A CA key: plain (certificates may not sign certificates), fully validated, no trailing bytes."""
    raw_name, pos = cstring(blob, 0)
    family, is_cert, curve = resolve_name(raw_name)
    if is_cert:
        raise InvalidKey("certificate CA is a certificate")
    fields, enc, _, pos = key_fields(family, curve, blob, pos)
    if pos != len(blob):
        raise InvalidKey("trailing bytes in CA key")
    return fields, put_string(type_name(family, curve).encode()) + enc


def _check_option_section(section: bytes) -> None:
    pos = 0
    while pos < len(section):
        _, pos = string(section, pos)
        _, pos = string(section, pos)


def _datetime(value: int) -> datetime:
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        return datetime.max.replace(tzinfo=UTC)
