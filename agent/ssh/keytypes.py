"""The key types OpenSSH 9.2 knows (sshkey.c keyimpls[]), their public fields, and fingerprints.

Pure functions over bytes. This is the part of key parsing shared by plain keys (agent.ssh.keys),
certificate CAs (agent.ssh.certificate) and signature checks (agent.ssh.signature):

* names: every type and certificate name, the signature-only aliases sshkey_read accepts as names
  of the same type (rsa-sha2-*, webauthn-sk-ecdsa-*), and the case-insensitive short names
  ("RSA", "ED25519", ...) that `sshkey_type_from_name` accepts inside a blob;
* fields: per family, the public fields as `sshkey_from_blob_internal` reads and checks them
  (RSA modulus >= 1024 bits; ed25519 keys 32 bytes; ECDSA: curve name matches the type, the point
  is an uncompressed point on the curve and passes `sshkey_ec_validate_public`), and the canonical
  plain encoding that is fingerprinted;
* fingerprints: SHA256 / MD5 of the canonical plain key, as `ssh-keygen -l` prints them.
"""

from __future__ import annotations

import binascii
import hashlib
from dataclasses import dataclass
from typing import Final, NamedTuple

from agent.ssh.wire import bignum, canonical_mpint, cstring, mpint_bytes, put_mpint, put_string, string

__all__ = [
    "CANONICAL",
    "CURVES",
    "DSA",
    "ECDSA",
    "ECDSA_NAMES",
    "ECDSA_SK",
    "ED25519",
    "ED25519_SK",
    "KEYGEN_LABEL",
    "KEY_LABELS",
    "NAMES",
    "P256",
    "P384",
    "P521",
    "RSA",
    "Curve",
    "InvalidKey",
    "KeyFields",
    "cert_name",
    "fingerprint_md5",
    "fingerprint_sha256",
    "key_fields",
    "resolve_name",
    "type_name",
]


class InvalidKey(ValueError):
    """A key OpenSSH would refuse. The message is a short reason, never key bytes."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- key type table (sshkey.c keyimpls[]) ----------------------------------------------------------

RSA, DSA, ECDSA, ECDSA_SK, ED25519, ED25519_SK = range(6)
P256, P384, P521 = "nistp256", "nistp384", "nistp521"

CANONICAL: Final[dict[int, str]] = {
    RSA: "ssh-rsa",
    DSA: "ssh-dss",
    ED25519: "ssh-ed25519",
    ED25519_SK: "sk-ssh-ed25519@openssh.com",
    ECDSA_SK: "sk-ecdsa-sha2-nistp256@openssh.com",
}
ECDSA_NAMES: Final[dict[str, str]] = {c: f"ecdsa-sha2-{c}" for c in (P256, P384, P521)}
KEYGEN_LABEL: Final[dict[int, str]] = {
    RSA: "RSA",
    DSA: "DSA",
    ECDSA: "ECDSA",
    ECDSA_SK: "ECDSA-SK",
    ED25519: "ED25519",
    ED25519_SK: "ED25519-SK",
}


def cert_name(plain: str) -> str:
    return plain.replace("@openssh.com", "") + "-cert-v01@openssh.com"


# name -> (family, is_cert, curve or None). Includes the signature-only aliases (rsa-sha2-*,
# webauthn-sk-ecdsa-*) which sshkey_read and sshkey_type_from_name accept as names of the same type.
NAMES: dict[str, tuple[int, bool, str | None]] = {}
for _fam, _nm in CANONICAL.items():
    _curve = P256 if _fam == ECDSA_SK else None
    NAMES[_nm] = (_fam, False, _curve)
    NAMES[cert_name(_nm)] = (_fam, True, _curve)
for _c, _nm in ECDSA_NAMES.items():
    NAMES[_nm] = (ECDSA, False, _c)
    NAMES[cert_name(_nm)] = (ECDSA, True, _c)
for _nm in ("rsa-sha2-256", "rsa-sha2-512"):
    NAMES[_nm] = (RSA, False, None)
    NAMES[cert_name(_nm)] = (RSA, True, None)
NAMES["webauthn-sk-ecdsa-sha2-nistp256@openssh.com"] = (ECDSA_SK, False, P256)

KEY_LABELS: Final[frozenset[str]] = frozenset(NAMES)

# Short names match plain types case-insensitively inside a blob (sshkey_type_from_name). ECDSA
# short names resolve to a type but carry no curve, so such blobs are refused later, as in OpenSSH.
_SHORT_NAMES: Final[dict[str, tuple[int, bool, str | None]]] = {
    "rsa": (RSA, False, None),
    "dsa": (DSA, False, None),
    "ed25519": (ED25519, False, None),
    "ed25519-sk": (ED25519_SK, False, None),
    "ecdsa": (ECDSA, False, None),
    "ecdsa-sk": (ECDSA_SK, False, None),
}


def resolve_name(raw: bytes) -> tuple[int, bool, str | None]:
    """The type a blob's own type string names -> (family, is_cert, curve)."""
    name = raw.decode("latin-1")
    found = NAMES.get(name)
    if found is None:
        found = _SHORT_NAMES.get(name.lower()) if name.isascii() else None
        if found is None:
            raise InvalidKey("unknown key type")
    return found


def type_name(family: int, curve: str | None) -> str:
    """The canonical name of a plain key of this family (and curve)."""
    return ECDSA_NAMES[curve] if family == ECDSA and curve is not None else CANONICAL[family]


# --- curves (SEC 2 / FIPS 186-4 parameters) --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Curve:
    p: int
    a: int
    b: int
    n: int
    bits: int
    field_bytes: int


CURVES: Final[dict[str, Curve]] = {
    P256: Curve(
        p=0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF,
        a=-3,
        b=0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B,
        n=0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
        bits=256,
        field_bytes=32,
    ),
    P384: Curve(
        p=int(
            "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFE"
            "FFFFFFFF0000000000000000FFFFFFFF",
            16,
        ),
        a=-3,
        b=int(
            "B3312FA7E23EE7E4988E056BE3F82D19181D9C6EFE8141120314088F5013875A"
            "C656398D8A2ED19D2A85C8EDD3EC2AEF",
            16,
        ),
        n=int(
            "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF"
            "581A0DB248B0A77AECEC196ACCC52973",
            16,
        ),
        bits=384,
        field_bytes=48,
    ),
    P521: Curve(
        p=(1 << 521) - 1,
        a=-3,
        b=int(
            "0051953EB9618E1C9A1F929A21A0B68540EEA2DA725B99B315F3B8B489918EF1"
            "09E156193951EC7E937B1652C0BD3BB1BF073573DF883D2C34F1EF451FD46B50"
            "3F00",
            16,
        ),
        n=int(
            "01FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"
            "FFFA51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E9138"
            "6409",
            16,
        ),
        bits=521,
        field_bytes=66,
    ),
}

_RSA_MIN_BITS: Final = 1024  # SSH_RSA_MINIMUM_MODULUS_SIZE


def _ec_point(q: bytes, curve: Curve) -> tuple[int, int]:
    """sshbuf_get_eckey + EC_POINT_oct2point + sshkey_ec_validate_public."""
    fb = curve.field_bytes
    if len(q) != 1 + 2 * fb or q[0] != 4:
        raise InvalidKey("invalid ECDSA point")
    x = int.from_bytes(q[1 : 1 + fb], "big")
    y = int.from_bytes(q[1 + fb :], "big")
    p = curve.p
    if x >= p or y >= p or (y * y - (x * x * x + curve.a * x + curve.b)) % p:
        raise InvalidKey("ECDSA point not on curve")
    half = curve.n.bit_length() // 2
    if x.bit_length() <= half or y.bit_length() <= half or x >= curve.n - 1 or y >= curve.n - 1:
        raise InvalidKey("invalid ECDSA point")
    # NIST curves have cofactor 1: every point on the curve has order n, so nQ == infinity holds.
    return x, y


# --- per-family public key fields ------------------------------------------------------------------


class KeyFields(NamedTuple):
    """Parsed public fields of one key (what a signature check needs). A tuple: cheap to build."""

    family: int
    curve: str | None
    ints: tuple[int, ...]  # RSA (e, n); DSA (p, q, g, y); ECDSA (x, y)
    raw: bytes  # ed25519 public key / ECDSA point
    application: bytes  # sk keys


def key_fields(
    family: int, name_curve: str | None, buf: bytes, pos: int
) -> tuple[KeyFields, bytes, int, int]:
    """Parse the family's fields -> (fields, canonical plain encoding sans type, bits, pos).

    Raises InvalidKey for a key OpenSSH refuses, WireError for malformed wire data.
    """
    if family in (ED25519, ED25519_SK):
        pk, pos = string(buf, pos)
        if len(pk) != 32:
            raise InvalidKey("invalid ed25519 key length")
        enc = put_string(pk)
        app = b""
        if family == ED25519_SK:
            app, pos = cstring(buf, pos)
            enc += put_string(app)
        return KeyFields(family, None, (), pk, app), enc, 256, pos
    if family == RSA:
        e_raw, pos = mpint_bytes(buf, pos)
        n_raw, pos = mpint_bytes(buf, pos)
        n = int.from_bytes(n_raw, "big")
        bits = n.bit_length()
        if bits < _RSA_MIN_BITS:
            raise InvalidKey("RSA modulus too small")
        e = int.from_bytes(e_raw, "big")
        if canonical_mpint(e_raw) and canonical_mpint(n_raw):
            enc = put_string(e_raw) + put_string(n_raw)
        else:
            enc = put_mpint(e) + put_mpint(n)
        return KeyFields(family, None, (e, n), b"", b""), enc, bits, pos
    if family == DSA:
        p, pos = bignum(buf, pos)
        q, pos = bignum(buf, pos)
        g, pos = bignum(buf, pos)
        y, pos = bignum(buf, pos)
        enc = put_mpint(p) + put_mpint(q) + put_mpint(g) + put_mpint(y)
        return KeyFields(family, None, (p, q, g, y), b"", b""), enc, p.bit_length(), pos
    # ECDSA / ECDSA-SK
    if name_curve is None:
        raise InvalidKey("unknown key type")
    curve_name, pos = cstring(buf, pos)
    if curve_name.decode("latin-1") != name_curve:
        raise InvalidKey("ECDSA curve mismatch")
    curve = CURVES[name_curve]
    point, pos = string(buf, pos)
    x, y = _ec_point(point, curve)
    enc = put_string(curve_name) + put_string(point)
    app = b""
    if family == ECDSA_SK:
        app, pos = cstring(buf, pos)
        enc += put_string(app)
    return KeyFields(family, name_curve, (x, y), point, app), enc, curve.bits, pos


# --- fingerprints ----------------------------------------------------------------------------------

_sha256 = hashlib.sha256
_md5 = hashlib.md5
_b2a = binascii.b2a_base64


def fingerprint_sha256(plain: bytes) -> str:
    """ "SHA256:<base64 without padding>" of a canonical plain key, as ssh-keygen -l prints it."""
    # a 32-byte digest encodes to 43 characters and one "=" of padding
    return "SHA256:" + _b2a(_sha256(plain).digest(), newline=False)[:43].decode("ascii")


def fingerprint_md5(plain: bytes) -> str:
    """ "MD5:aa:bb:..." of a canonical plain key."""
    return "MD5:" + _md5(plain, usedforsecurity=False).digest().hex(":")
