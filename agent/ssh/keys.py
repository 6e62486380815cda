"""Public keys exactly as OpenSSH 9.2 (`sshkey.c`, `ssh-keygen -l`) reads them: the public API.

Pure functions over bytes. A blob is accepted exactly when OpenSSH accepts it:

* the type string inside the blob is resolved like `sshkey_type_from_name` (exact names, and for plain
  types also the case-insensitive short names "RSA", "ED25519", ...), a trailing NUL in a wire
  "cstring" is tolerated and an embedded one refused (`sshbuf_get_cstring`);
* mpints: negative refused, at most 16384 bits (`SSHBUF_MAX_BIGNUM` + one leading zero byte),
  redundant leading zero bytes accepted (they are stripped before fingerprinting);
* the per-type public fields (agent.ssh.keytypes), and for certificates the certificate part and
  its CA signature (agent.ssh.certificate, agent.ssh.signature);
* no trailing bytes.

Wire data and base64 are decoded by agent.ssh.wire (the one decoder). The hot path (plain
ed25519/RSA keys in their canonical form, `fast_plain_key`) uses only `binascii`/`hashlib`;
`cryptography` is imported only to verify a certificate's CA signature. Every refusal is an
`InvalidKey` with a fixed phrase that never contains input bytes.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Final

from agent.ssh.certificate import Certificate, parse_certificate
from agent.ssh.keytypes import (
    ECDSA,
    ECDSA_SK,
    KEY_LABELS,
    KEYGEN_LABEL,
    NAMES,
    InvalidKey,
    cert_name,
    fingerprint_md5,
    fingerprint_sha256,
    key_fields,
    resolve_name,
    type_name,
)
from agent.ssh.wire import MAX_BIGNUM_BYTES, WireError, b64decode, b64encode, cstring, put_string, string

__all__ = [
    "KEY_LABELS",
    "InvalidKey",
    "PublicKey",
    "fast_plain_key",
    "key_text",
    "parse_key_bytes",
    "parse_public_blob",
    "parse_public_key_text",
]


@dataclass(frozen=True)
class PublicKey:
    type: str  # canonical OpenSSH name of the key's type ("ssh-rsa", "ssh-ed25519-cert-v01@openssh.com")
    base_type: str  # plain type ("ssh-rsa" for an RSA certificate)
    keygen_type: str  # ssh-keygen -l's label: RSA, DSA, ECDSA, ED25519, ECDSA-SK, ED25519-SK, +"-CERT"
    bits: int  # as ssh-keygen -l prints
    blob: bytes  # as given
    plain_blob: bytes  # canonical plain public key (what is fingerprinted)
    certificate: Certificate | None

    # Both fingerprints are filled in when a key is parsed (`_public_key`); these properties
    # compute them for an instance built any other way.
    @functools.cached_property
    def fingerprint(self) -> str:
        """ "SHA256:<base64 without padding>" of the canonical plain key, as ssh-keygen -l prints it."""
        return fingerprint_sha256(self.plain_blob)

    @functools.cached_property
    def fingerprint_md5(self) -> str:
        """ "MD5:aa:bb:..." of the canonical plain key."""
        return fingerprint_md5(self.plain_blob)

    def __repr__(self) -> str:  # keep blobs out of logs and tracebacks
        return f"PublicKey(type={self.type!r}, bits={self.bits}, fingerprint={self.fingerprint!r})"


# --- parsing ----------------------------------------------------------------------------------------


def parse_public_blob(blob: bytes, label: str | None = None) -> PublicKey:
    """Validate a wire-format public key (or certificate) blob as sshkey_fromb + sshkey_read do.

    `label` is the type word written before the base64 in a text line; when given, the blob's type
    must be the same key type (and for ECDSA the same curve) as sshkey_read requires.
    """
    if len(blob) == 51 and blob.startswith(_ED25519_PREFIX) and (label is None or label == "ssh-ed25519"):
        # The overwhelmingly common key: canonical by construction, nothing left to validate.
        return _public_key("ssh-ed25519", "ssh-ed25519", "ED25519", 256, blob, blob, None)
    try:
        return _parse_blob(blob, label)
    except WireError as exc:  # malformed wire data: refused like any other invalid key
        raise InvalidKey(exc.reason) from None


def _parse_blob(blob: bytes, label: str | None) -> PublicKey:
    want: tuple[int, bool, str | None] | None = None
    if label is not None:
        want = NAMES.get(label)
        if want is None:
            raise InvalidKey("unknown key type")
    raw_name, pos = cstring(blob, 0)
    family, is_cert, curve = resolve_name(raw_name)
    if want is not None and (want[0] != family or want[1] != is_cert):
        raise InvalidKey("key type mismatch")
    if is_cert:
        _nonce, pos = string(blob, pos)
    _fields, enc, bits, pos = key_fields(family, curve, blob, pos)
    certificate: Certificate | None = None
    if is_cert:
        certificate, pos = parse_certificate(blob, pos)
    if pos != len(blob):
        raise InvalidKey("trailing bytes after key")
    if want is not None and family in (ECDSA, ECDSA_SK) and want[2] != curve:
        raise InvalidKey("ECDSA curve mismatch")
    base_type = type_name(family, curve)
    plain = put_string(base_type.encode()) + enc
    if not is_cert and plain == blob:
        plain = blob  # share the buffer in the common canonical case
    keygen_type = KEYGEN_LABEL[family]
    if is_cert:
        return _public_key(
            cert_name(base_type), base_type, keygen_type + "-CERT", bits, blob, plain, certificate
        )
    return _public_key(base_type, base_type, keygen_type, bits, blob, plain, None)


_ED25519_PREFIX: Final = b"\0\0\0\x0bssh-ed25519\0\0\0\x20"
_RSA_PREFIX: Final = b"\0\0\0\x07ssh-rsa"
_FAST_LABELS: Final = {b"ssh-ed25519": "ssh-ed25519", b"ssh-rsa": "ssh-rsa"}


def fast_plain_key(label: bytes, token: bytes) -> PublicKey | None:
    """The hot path for the two common, canonical cases: a plain ssh-ed25519 or ssh-rsa key.

    Returns None whenever anything is unusual (other types, non-canonical or invalid data); the
    caller then takes the complete path, which gives the exact verdict.
    """
    name = _FAST_LABELS.get(label)
    if name is None:
        return None
    try:
        blob = b64decode(token)
    except WireError:
        return None
    if name == "ssh-ed25519":
        if len(blob) != 51 or not blob.startswith(_ED25519_PREFIX):
            return None
        return _public_key("ssh-ed25519", "ssh-ed25519", "ED25519", 256, blob, blob, None)
    if not blob.startswith(_RSA_PREFIX) or len(blob) < 20:
        return None
    e_len = int.from_bytes(blob[11:15], "big")
    n_at = 15 + e_len
    n_len = int.from_bytes(blob[n_at : n_at + 4], "big")
    n_start = n_at + 4
    if (
        n_start + n_len != len(blob)
        or e_len == 0
        or blob[15] == 0
        or blob[15] >= 0x80
        or n_len < 129
        or n_len > MAX_BIGNUM_BYTES + 1
        or blob[n_start] != 0
        or blob[n_start + 1] < 0x80
    ):
        return None  # anything but the usual canonical shape (modulus with its sign byte)
    bits = (n_len - 1) * 8
    return _public_key("ssh-rsa", "ssh-rsa", "RSA", bits, blob, blob, None)


def _public_key(
    type_: str,
    base_type: str,
    keygen_type: str,
    bits: int,
    blob: bytes,
    plain: bytes,
    certificate: Certificate | None,
) -> PublicKey:
    # Bypass the frozen dataclass __init__ (one object.__setattr__ per field): this is the hot path.
    key = _new_object(PublicKey)
    _set_attr(
        key,
        "__dict__",
        {
            "type": type_,
            "base_type": base_type,
            "keygen_type": keygen_type,
            "bits": bits,
            "blob": blob,
            "plain_blob": plain,
            "certificate": certificate,
            # Every report carries both fingerprints: fill the cached_properties' slots now, in the
            # caller's GC-paused bulk parse, rather than later one by one (cached_property takes a
            # lock on first access in Python 3.11).
            "fingerprint": fingerprint_sha256(plain),
            "fingerprint_md5": fingerprint_md5(plain),
        },
    )
    return key


_new_object = object.__new__
_set_attr = object.__setattr__


def parse_key_bytes(line: bytes) -> tuple[PublicKey, str, bytes]:
    """sshkey_read over bytes: "label<SP|TAB>base64[<SP|TAB>rest]" -> (key, label, rest).

    `rest` is what follows the base64 and its separating blank (the comment, raw, not stripped).
    """
    words = line.split(b" ", 2)
    if len(words) > 1 and words[1] and b"\t" not in words[0] and b"\t" not in words[1]:
        # fast path: single spaces; `rest` may keep leading blanks, callers strip comments anyway
        label = words[0].decode("latin-1")
        token, rest = words[1], (words[2] if len(words) > 2 else b"")
    else:
        m = _KEY_WORDS(line)
        if m is None:
            raise InvalidKey("missing key data")
        label = m[1].decode("latin-1")
        token, rest = m[2], line[m.end() :]
    if label not in NAMES:
        raise InvalidKey("unknown key type")
    try:
        blob = b64decode(token)
    except WireError as exc:
        raise InvalidKey(exc.reason) from None
    return parse_public_blob(blob, label), label, rest


def parse_public_key_text(text: str) -> tuple[PublicKey, str]:
    """ "label base64 [comment]" -> (key, comment stripped). Raises InvalidKey."""
    raw = text.encode("utf-8", "surrogateescape")
    nul = raw.find(b"\0")
    if nul != -1:  # C strings end at NUL
        raw = raw[:nul]
    key, _, rest = parse_key_bytes(raw.lstrip(b" \t"))
    return key, rest.decode("utf-8", "replace").strip()


def key_text(key: PublicKey) -> str:
    """ "type base64" as sshkey_write prints it: certificates as given, plain keys canonical."""
    return f"{key.type} {b64encode(key.blob if key.certificate is not None else key.plain_blob)}"


# label, blanks, base64 token (may be followed by blanks): sshkey_read's strcspn(" \\t") walk.
_KEY_WORDS: Final = re.compile(rb"([^ \t]*)[ \t]+([^ \t]+)[ \t]*").match
