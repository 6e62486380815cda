"""Key revocation lists (KRL, sshd's `RevokedKeys`) as OpenSSH 9.2 reads them. Pure.

The agent never writes or decodes the binary KRL format itself. OpenSSH's own tool does both:
`ssh-keygen -k` builds a KRL from a text spec (`render_specs` writes that spec from the agent's
list of entries) and `ssh-keygen -Q -l` prints a KRL back in the spec's vocabulary (`parse_dump`
reads that). What a KRL revokes is then a `KrlContents` value, and `KrlContents.revokes` answers
for one key the way `ssh_krl_check_key` (krl.c) does:

* the key's SHA1 or SHA256 fingerprint, or the key itself, is listed ("explicit" keys are
  printed by `-Q -l` as `hash: SHA256:<base64> # <type>`, SHA256 hashes as `hash: SHA256:<hex>`,
  SHA1 hashes as the comment `# hash SHA1:<hex>`);
* for a certificate: its key id, or its serial (never serial 0), is listed under its CA (or under
  the wildcard CA), or the CA key itself is revoked.

sshd's fallback is kept too: a `RevokedKeys` file that does not start with the KRL magic is read as
a plain list of public keys (`sshkey_in_file`): `flat_list_contents`. A line there that does not
parse makes sshd refuse every key it has not matched yet, i.e. every key: `FlatListInvalid`.

SHA1 entries cannot be matched against an inventory record (a record keeps the SHA256 fingerprint,
not the key blob): they are reported as part of the KRL's content and not applied to records
(`ssh-keygen -k` writes them only from hand-made `sha1:` spec lines).
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal

from agent.ssh.certificate import Certificate
from agent.ssh.keys import InvalidKey, PublicKey, key_text, parse_key_bytes, parse_public_key_text

KRL_MAGIC: Final = b"SSHKRL\n\0"
U64_MAX: Final = (1 << 64) - 1
MAX_KEY_ID: Final = 256

EntryKind = Literal["key", "hash", "serial", "key_id"]
ENTRY_KINDS: Final = ("key", "hash", "serial", "key_id")
JSON = dict[str, Any]

_SHA256_B64 = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")
_SHA256_HEX = re.compile(r"^SHA256:[0-9a-f]{64}$")
# A key id the spec grammar carries unchanged both ways: printable ASCII without '#' (the
# spec's comment), without leading or trailing blanks (trimmed by ssh-keygen's spec reader).
_KEY_ID = re.compile(r"^[\x21-\x22\x24-\x7e](?:[\x20-\x22\x24-\x7e]*[\x21-\x22\x24-\x7e])?$")


class KrlError(ValueError):
    """A KRL dump, entry or key id the agent cannot use. Messages never carry key material."""


def is_krl(data: bytes) -> bool:
    """Does sshd read this `RevokedKeys` file as a KRL (else: as a plain list of keys)?"""
    return data.startswith(KRL_MAGIC)


def valid_key_id(key_id: str) -> bool:
    return len(key_id) <= MAX_KEY_ID and _KEY_ID.match(key_id) is not None


# -- the agent's entries ----------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class RevocationEntry:
    """One thing the agent revokes. `value`: for `key` the canonical "type base64" (no comment),
    for `hash` "SHA256:<base64>", for `serial` the decimal serial, for `key_id` the key id.
    `ca_key` ("type base64") is the CA of a `serial` / `key_id` entry, "" otherwise."""

    kind: EntryKind
    value: str
    ca_key: str = ""

    def fingerprint(self) -> str | None:
        """The SHA256 fingerprint this entry revokes (key and hash entries), else None."""
        if self.kind == "hash":
            return self.value
        if self.kind == "key":
            return parse_public_key_text(self.value)[0].fingerprint
        return None

    def to_json(self) -> JSON:
        out: JSON = {"kind": self.kind, "value": self.value}
        if self.ca_key:
            out["ca_key"] = self.ca_key
        return out

    @classmethod
    def from_json(cls, data: JSON) -> RevocationEntry:
        kind = data.get("kind")
        value = data.get("value")
        ca_key = data.get("ca_key", "")
        if kind not in ENTRY_KINDS or not isinstance(value, str) or not isinstance(ca_key, str):
            raise KrlError("malformed revocation entry")
        return cls(kind, value, ca_key)


def key_entry(key: PublicKey) -> RevocationEntry:
    """The entry revoking `key` itself (plain keys; a certificate's CA is revoked the same way)."""
    return RevocationEntry("key", key_text(key))


def render_specs(entries: Iterable[RevocationEntry]) -> tuple[str, dict[str, str]]:
    """The `ssh-keygen -k` spec text of `entries`: (spec of the keys and hashes, {CA key: spec of
    that CA's serials and key ids}). `ssh-keygen -k -s CA` takes one CA per run, so each CA's
    certificate entries are a spec of their own, added with `-u`. Sorted: same entries, same text."""
    plain: list[str] = []
    per_ca: dict[str, list[str]] = {}
    for entry in sorted(set(entries)):
        if entry.kind == "key":
            plain.append(f"key: {entry.value}")
        elif entry.kind == "hash":
            plain.append(f"hash: {entry.value}")
        elif entry.kind == "serial":
            per_ca.setdefault(entry.ca_key, []).append(f"serial: {int(entry.value)}")
        else:
            if not valid_key_id(entry.value):
                raise KrlError("key id cannot be written to a KRL spec")
            per_ca.setdefault(entry.ca_key, []).append(f"id: {entry.value}")
    return _text(plain), {ca: _text(lines) for ca, lines in sorted(per_ca.items())}


def _text(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


# -- what a KRL revokes -----------------------------------------------------------------------------


Ranges = tuple[tuple[int, int], ...]


def merge_serials(ranges: Iterable[tuple[int, int]]) -> Ranges:
    """Serial ranges sorted and merged (adjacent or overlapping ones joined), as krl.c keeps them."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return tuple(out)


@dataclass(frozen=True)
class CertRevocations:
    """Certificates revoked under one CA (`ca_fingerprint` None: under any CA, "wildcard")."""

    ca_fingerprint: str | None
    ca_type: str | None
    serials: Ranges = ()
    key_ids: frozenset[str] = frozenset()

    def revokes(self, cert: Certificate) -> bool:
        if cert.key_id in self.key_ids:
            return True
        if cert.serial == 0:  # krl.c: zero serials are ignored (a CA's default)
            return False
        return any(lo <= cert.serial <= hi for lo, hi in self.serials)

    def to_json(self) -> JSON:
        return {
            "ca_fingerprint": self.ca_fingerprint,
            "ca_type": self.ca_type,
            "serials": [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in self.serials],
            "key_ids": sorted(self.key_ids),
        }


@dataclass(frozen=True)
class KrlContents:
    """What a `RevokedKeys` file revokes. `format`: "krl" or "key_list" (sshd's plain-list fallback)."""

    format: Literal["krl", "key_list"] = "krl"
    version: int | None = None
    generated_at: str | None = None
    comment: str | None = None
    sha256: frozenset[str] = frozenset()  # "SHA256:<base64>" of explicit keys and SHA256 hashes
    sha1: frozenset[str] = frozenset()  # hex SHA1 hashes (reported, not matched: see the module doc)
    certificates: tuple[CertRevocations, ...] = ()

    @property
    def entries(self) -> int:
        return (
            len(self.sha256)
            + len(self.sha1)
            + sum(len(c.serials) + len(c.key_ids) for c in self.certificates)
        )

    def revokes(self, fingerprint: str, certificate: Certificate | None) -> bool:
        """Would sshd refuse a key with this (plain-key SHA256) fingerprint and certificate?"""
        if fingerprint in self.sha256:
            return True
        if certificate is None:
            return False
        if certificate.ca_fingerprint in self.sha256:  # the CA key itself is revoked
            return True
        return any(
            c.ca_fingerprint in (None, certificate.ca_fingerprint) and c.revokes(certificate)
            for c in self.certificates
        )

    def same_revocations(self, other: KrlContents) -> bool:
        """Do both revoke exactly the same things (header fields aside)?"""
        return (self.sha256, self.sha1, _cert_map(self.certificates)) == (
            other.sha256,
            other.sha1,
            _cert_map(other.certificates),
        )

    def to_json(self) -> JSON:
        return {
            "format": self.format,
            "version": self.version,
            "generated_at": self.generated_at,
            "comment": self.comment,
            "entries": self.entries,
            "fingerprints": sorted(self.sha256),
            "sha1": sorted(self.sha1),
            "certificates": [c.to_json() for c in self.certificates],
        }

    @classmethod
    def from_json(cls, data: JSON) -> KrlContents:
        certs = []
        for c in data.get("certificates") or ():
            serials = []
            for text in c.get("serials") or ():
                lo, _, hi = str(text).partition("-")
                serials.append((int(lo), int(hi or lo)))
            certs.append(
                CertRevocations(
                    c.get("ca_fingerprint"),
                    c.get("ca_type"),
                    tuple(serials),
                    frozenset(c.get("key_ids") or ()),
                )
            )
        return cls(
            format="key_list" if data.get("format") == "key_list" else "krl",
            version=data.get("version"),
            generated_at=data.get("generated_at"),
            comment=data.get("comment"),
            sha256=frozenset(data.get("fingerprints") or ()),
            sha1=frozenset(data.get("sha1") or ()),
            certificates=tuple(certs),
        )


def _cert_map(certs: Iterable[CertRevocations]) -> dict[str | None, tuple[Ranges, frozenset[str]]]:
    merged: dict[str | None, tuple[list[tuple[int, int]], set[str]]] = {}
    for c in certs:
        serials, ids = merged.setdefault(c.ca_fingerprint, ([], set()))
        serials.extend(c.serials)
        ids.update(c.key_ids)
    return {ca: (merge_serials(s), frozenset(i)) for ca, (s, i) in merged.items() if s or i}


def expected_contents(entries: Iterable[RevocationEntry]) -> KrlContents:
    """What a KRL built from `entries` must revoke (to check ssh-keygen's output against)."""
    sha256: set[str] = set()
    certs: dict[str, tuple[list[tuple[int, int]], set[str]]] = {}
    ca_fingerprints: dict[str, str] = {}
    for entry in entries:
        fingerprint = entry.fingerprint()
        if fingerprint is not None:
            sha256.add(fingerprint)
            continue
        ca = ca_fingerprints.get(entry.ca_key)
        if ca is None:
            ca = ca_fingerprints[entry.ca_key] = parse_public_key_text(entry.ca_key)[0].fingerprint
        serials, ids = certs.setdefault(ca, ([], set()))
        if entry.kind == "serial":
            serials.append((int(entry.value), int(entry.value)))
        else:
            ids.add(entry.value)
    return KrlContents(
        sha256=frozenset(sha256),
        certificates=tuple(
            CertRevocations(ca, None, merge_serials(s), frozenset(i)) for ca, (s, i) in sorted(certs.items())
        ),
    )


# -- reading `ssh-keygen -Q -l` ---------------------------------------------------------------------

_HEADER_VERSION = re.compile(r"^# KRL version (\d+)$")
_HEADER_DATE = re.compile(r"^# Generated at (\S+)$")
_HEADER_COMMENT = re.compile(r"^# Comment: (.*)$")
_CA_HEADER = re.compile(r"^# CA key (\S+) (SHA256:[A-Za-z0-9+/]{43})$")
_SHA1_LINE = re.compile(r"^# hash SHA1:([0-9a-f]{40})$")
_SERIAL = re.compile(r"^serial: (\d+)(?:-(\d+))?$")


def _sha256_fingerprint(text: str) -> str:
    """`SHA256:<base64>` (explicit keys) or `SHA256:<hex>` (hashes, as krl_dump prints them)."""
    fp = text.split(" #", 1)[0].strip()
    if _SHA256_B64.match(fp):
        return fp
    if _SHA256_HEX.match(fp):
        raw = bytes.fromhex(fp[7:])
        return "SHA256:" + binascii.b2a_base64(raw, newline=False).decode("ascii").rstrip("=")
    raise KrlError("unexpected hash line in the KRL listing")


def parse_dump(text: str) -> KrlContents:
    """`ssh-keygen -Q -l -f KRL` output (krl_dump, OpenSSH 9.2) -> what the KRL revokes.
    Raises KrlError on a line it does not understand (never silently ignores an entry)."""
    version: int | None = None
    generated: str | None = None
    comment: str | None = None
    sha256: set[str] = set()
    sha1: set[str] = set()
    certs: list[CertRevocations] = []
    current: tuple[str | None, str | None, list[tuple[int, int]], set[str]] | None = None

    def close() -> None:
        if current is not None:
            ca_fp, ca_type, serials, ids = current
            certs.append(CertRevocations(ca_fp, ca_type, merge_serials(serials), frozenset(ids)))

    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip()
        if not line:
            continue
        if m := _HEADER_VERSION.match(line):
            version = int(m[1])
        elif m := _HEADER_DATE.match(line):
            generated = m[1]
        elif m := _HEADER_COMMENT.match(line):
            comment = m[1]
        elif line == "# Wildcard CA":
            close()
            current = (None, None, [], set())
        elif m := _CA_HEADER.match(line):
            close()
            current = (m[2], m[1], [], set())
        elif m := _SHA1_LINE.match(line):
            sha1.add(m[1])
        elif line.startswith("hash: ") and current is None:
            sha256.add(_sha256_fingerprint(line[6:]))
        elif (m := _SERIAL.match(line)) and current is not None:
            lo, hi = int(m[1]), int(m[2] or m[1])
            if lo > hi or hi > U64_MAX:
                raise KrlError(f"KRL listing line {number}: bad serial range")
            current[2].append((lo, hi))
        elif line.startswith("id: ") and current is not None:
            current[3].add(line[4:])
        else:
            raise KrlError(f"KRL listing line {number}: not understood")
    close()
    return KrlContents(
        format="krl",
        version=version,
        generated_at=generated,
        comment=comment,
        sha256=frozenset(sha256),
        sha1=frozenset(sha1),
        certificates=tuple(certs),
    )


# -- sshd's fallback: a plain list of keys ----------------------------------------------------------


class FlatListInvalid(KrlError):
    """A plain key list with a line sshd cannot read: sshd refuses every key it has not matched
    before that line, i.e. in effect every key."""

    def __init__(self, line: int) -> None:
        super().__init__(f"line {line} is not a public key: sshd refuses every key")
        self.line = line


def flat_list_contents(data: bytes) -> KrlContents:
    """A `RevokedKeys` file without the KRL magic, read as `sshkey_in_file` reads it: blank lines
    and lines starting with '#' (after blanks) skipped, every other line a public key. A listed
    CA key revokes its certificates too (sshd checks the certificate's CA against the list)."""
    fingerprints: set[str] = set()
    for number, raw in enumerate(data.split(b"\n"), start=1):
        line = raw.lstrip(b" \t")
        if not line or line[:1] in (b"#", b"\r", b"\0"):
            continue
        try:
            key, _, _ = parse_key_bytes(line.rstrip(b"\r"))
        except InvalidKey as exc:
            if exc.reason == "RSA modulus too small":  # SSH_ERR_KEY_LENGTH: skipped by sshd
                continue
            raise FlatListInvalid(number) from None
        fingerprints.add(key.fingerprint)
    return KrlContents(format="key_list", sha256=frozenset(fingerprints))
