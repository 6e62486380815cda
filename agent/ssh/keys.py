"""Public key blobs exactly as OpenSSH 9.2 (`sshkey.c`, `ssh-keygen -l`) treats them.

Pure functions over bytes. A blob is accepted exactly when OpenSSH accepts it:

* the type string inside the blob is resolved like `sshkey_type_from_name` (exact names, and for plain
  types also the case-insensitive short names "RSA", "ED25519", ...), a trailing NUL in a wire
  "cstring" is tolerated and an embedded one refused (`sshbuf_get_cstring`);
* mpints: negative refused, at most 16384 bits (`SSHBUF_MAX_BIGNUM` + one leading zero byte),
  redundant leading zero bytes accepted (they are stripped before fingerprinting);
* RSA modulus >= 1024 bits; ed25519 keys 32 bytes; ECDSA: curve name matches the type, the point is an
  uncompressed point on the curve, and passes `sshkey_ec_validate_public`;
* certificates: user/host type, at most 256 principals, well-formed option sections, a CA that is not
  itself a certificate, and a CA signature that verifies (`cert_parse` -> `sshkey_verify`);
* no trailing bytes.

The hot path (plain keys) uses only `binascii`/`hashlib`; `cryptography` is imported only to verify a
certificate's CA signature. Error messages are fixed phrases and never contain input bytes.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, NamedTuple

from agent.ssh.certificate import Certificate

__all__ = [
    "KEY_LABELS",
    "InvalidKey",
    "PublicKey",
    "key_text",
    "parse_public_blob",
    "parse_public_key_text",
]


class InvalidKey(ValueError):
    """A key OpenSSH would refuse. The message is a short reason, never key bytes."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class PublicKey:
    type: str  # canonical OpenSSH name of the key's type ("ssh-rsa", "ssh-ed25519-cert-v01@openssh.com")
    base_type: str  # plain type ("ssh-rsa" for an RSA certificate)
    keygen_type: str  # ssh-keygen -l's label: RSA, DSA, ECDSA, ED25519, ECDSA-SK, ED25519-SK, +"-CERT"
    bits: int  # as ssh-keygen -l prints
    blob: bytes  # as given
    plain_blob: bytes  # canonical plain public key (what is fingerprinted)
    certificate: Certificate | None

    # Fingerprints are derived from plain_blob and cached in the instance: SHA256 is filled in when the
    # key is parsed, MD5 (rarely wanted) on first use.
    @functools.cached_property
    def fingerprint(self) -> str:
        """ "SHA256:<base64 without padding>" of the canonical plain key, as ssh-keygen -l prints it."""
        return _fingerprint(self.plain_blob)

    @functools.cached_property
    def fingerprint_md5(self) -> str:
        """ "MD5:aa:bb:..." of the canonical plain key."""
        return _fingerprint_md5(self.plain_blob)

    def __repr__(self) -> str:  # keep blobs out of logs and tracebacks
        return f"PublicKey(type={self.type!r}, bits={self.bits}, fingerprint={self.fingerprint!r})"


# --- key type table (sshkey.c keyimpls[]) ----------------------------------------------------------

_RSA, _DSA, _ECDSA, _ECDSA_SK, _ED25519, _ED25519_SK = range(6)
_P256, _P384, _P521 = "nistp256", "nistp384", "nistp521"

_CANONICAL: Final[dict[int, str]] = {
    _RSA: "ssh-rsa",
    _DSA: "ssh-dss",
    _ED25519: "ssh-ed25519",
    _ED25519_SK: "sk-ssh-ed25519@openssh.com",
    _ECDSA_SK: "sk-ecdsa-sha2-nistp256@openssh.com",
}
_ECDSA_NAMES: Final[dict[str, str]] = {c: f"ecdsa-sha2-{c}" for c in (_P256, _P384, _P521)}
_KEYGEN_LABEL: Final[dict[int, str]] = {
    _RSA: "RSA",
    _DSA: "DSA",
    _ECDSA: "ECDSA",
    _ECDSA_SK: "ECDSA-SK",
    _ED25519: "ED25519",
    _ED25519_SK: "ED25519-SK",
}


def _cert_name(plain: str) -> str:
    return plain.replace("@openssh.com", "") + "-cert-v01@openssh.com"


# name -> (family, is_cert, curve or None). Includes the signature-only aliases (rsa-sha2-*,
# webauthn-sk-ecdsa-*) which sshkey_read and sshkey_type_from_name accept as names of the same type.
_NAMES: dict[str, tuple[int, bool, str | None]] = {}
for _fam, _nm in _CANONICAL.items():
    _curve = _P256 if _fam == _ECDSA_SK else None
    _NAMES[_nm] = (_fam, False, _curve)
    _NAMES[_cert_name(_nm)] = (_fam, True, _curve)
for _c, _nm in _ECDSA_NAMES.items():
    _NAMES[_nm] = (_ECDSA, False, _c)
    _NAMES[_cert_name(_nm)] = (_ECDSA, True, _c)
for _nm in ("rsa-sha2-256", "rsa-sha2-512"):
    _NAMES[_nm] = (_RSA, False, None)
    _NAMES[_cert_name(_nm)] = (_RSA, True, None)
_NAMES["webauthn-sk-ecdsa-sha2-nistp256@openssh.com"] = (_ECDSA_SK, False, _P256)

KEY_LABELS: Final[frozenset[str]] = frozenset(_NAMES)

# Short names match plain types case-insensitively inside a blob (sshkey_type_from_name). ECDSA
# short names resolve to a type but carry no curve, so such blobs are refused later, as in OpenSSH.
_SHORT_NAMES: Final[dict[str, tuple[int, bool, str | None]]] = {
    "rsa": (_RSA, False, None),
    "dsa": (_DSA, False, None),
    "ed25519": (_ED25519, False, None),
    "ed25519-sk": (_ED25519_SK, False, None),
    "ecdsa": (_ECDSA, False, None),
    "ecdsa-sk": (_ECDSA_SK, False, None),
}

# --- curves (SEC 2 / FIPS 186-4 parameters) --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Curve:
    p: int
    a: int
    b: int
    n: int
    bits: int
    field_bytes: int


_CURVES: Final[dict[str, _Curve]] = {
    _P256: _Curve(
        p=0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF,
        a=-3,
        b=0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B,
        n=0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
        bits=256,
        field_bytes=32,
    ),
    _P384: _Curve(
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
    _P521: _Curve(
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

_MAX_BIGNUM_BYTES: Final = 16384 // 8  # SSHBUF_MAX_BIGNUM
_RSA_MIN_BITS: Final = 1024  # SSH_RSA_MINIMUM_MODULUS_SIZE
_MAX_PRINCIPALS: Final = 256  # SSHKEY_CERT_MAX_PRINCIPALS
_U64_MAX: Final = (1 << 64) - 1


# --- wire primitives (inline for speed; all raise InvalidKey) --------------------------------------


def _string(buf: bytes, pos: int) -> tuple[bytes, int]:
    end = pos + 4
    if end > len(buf):
        raise InvalidKey("truncated key data")
    n = int.from_bytes(buf[pos:end], "big")
    stop = end + n
    if stop > len(buf):
        raise InvalidKey("truncated key data")
    return buf[end:stop], stop


def _cstring(buf: bytes, pos: int) -> tuple[bytes, int]:
    """sshbuf_get_cstring: a NUL is allowed only as the very last byte (and is then dropped)."""
    data, pos = _string(buf, pos)
    z = data.find(b"\0")
    if z != -1:
        if z != len(data) - 1:
            raise InvalidKey("invalid string in key data")
        data = data[:-1]
    return data, pos


def _uint(buf: bytes, pos: int, size: int) -> tuple[int, int]:
    end = pos + size
    if end > len(buf):
        raise InvalidKey("truncated key data")
    return int.from_bytes(buf[pos:end], "big"), end


def _bignum(buf: bytes, pos: int) -> tuple[int, int]:
    """sshbuf_get_bignum2: non-negative, <= 16384 bits, redundant leading zeros tolerated."""
    raw, pos = _mpint_bytes(buf, pos)
    return int.from_bytes(raw, "big"), pos


def _mpint_bytes(buf: bytes, pos: int) -> tuple[bytes, int]:
    """The raw two's-complement bytes of a bignum, checked as sshbuf_get_bignum2 checks them."""
    raw, pos = _string(buf, pos)
    if raw:
        if raw[0] & 0x80:
            raise InvalidKey("negative number in key")
        n = len(raw)
        if n > _MAX_BIGNUM_BYTES + 1 or (n == _MAX_BIGNUM_BYTES + 1 and raw[0] != 0):
            raise InvalidKey("number too large in key")
    return raw, pos


def _canonical_mpint(raw: bytes) -> bool:
    """Minimal encoding: no leading zero byte unless the next byte's top bit needs it."""
    return not raw or raw[0] != 0 or (len(raw) > 1 and raw[1] >= 0x80)


def _put_string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _put_mpint(value: int) -> bytes:
    if value == 0:
        return b"\0\0\0\0"
    raw = value.to_bytes((value.bit_length() + 8) // 8, "big")  # one spare bit keeps the sign clear
    return len(raw).to_bytes(4, "big") + raw


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _decode_base64(token: bytes) -> bytes:
    """OpenSSH's b64_pton: padding required, zero pad bits, other whitespace inside ignored."""
    try:
        data = binascii.a2b_base64(token, strict_mode=True)
    except (binascii.Error, ValueError):
        # b64_pton skips isspace() characters anywhere; blanks already ended the token.
        stripped = token.translate(None, b"\r\n\x0b\x0c")
        if stripped == token:
            raise InvalidKey("invalid base64") from None
        return _decode_base64(stripped)
    # strict_mode still accepts non-zero pad bits; OpenSSH refuses them (a subliminal channel).
    if binascii.b2a_base64(data, newline=False) != token:
        raise InvalidKey("invalid base64")
    return data


# --- per-family public key fields ------------------------------------------------------------------


def _ec_point(q: bytes, curve: _Curve) -> tuple[int, int]:
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


class _Fields(NamedTuple):
    """Parsed public fields of one key (what sshkey_verify needs for a CA). A tuple: cheap to build."""

    family: int
    curve: str | None
    ints: tuple[int, ...]  # RSA (e, n); DSA (p, q, g, y); ECDSA (x, y)
    raw: bytes  # ed25519 public key / ECDSA point
    application: bytes  # sk keys


def _key_fields(family: int, name_curve: str | None, buf: bytes, pos: int) -> tuple[_Fields, bytes, int, int]:
    """Parse the family's fields -> (fields, canonical plain encoding sans type, bits, pos)."""
    if family in (_ED25519, _ED25519_SK):
        pk, pos = _string(buf, pos)
        if len(pk) != 32:
            raise InvalidKey("invalid ed25519 key length")
        enc = _put_string(pk)
        app = b""
        if family == _ED25519_SK:
            app, pos = _cstring(buf, pos)
            enc += _put_string(app)
        return _Fields(family, None, (), pk, app), enc, 256, pos
    if family == _RSA:
        e_raw, pos = _mpint_bytes(buf, pos)
        n_raw, pos = _mpint_bytes(buf, pos)
        n = int.from_bytes(n_raw, "big")
        bits = n.bit_length()
        if bits < _RSA_MIN_BITS:
            raise InvalidKey("RSA modulus too small")
        e = int.from_bytes(e_raw, "big")
        if _canonical_mpint(e_raw) and _canonical_mpint(n_raw):
            enc = _put_string(e_raw) + _put_string(n_raw)
        else:
            enc = _put_mpint(e) + _put_mpint(n)
        return _Fields(family, None, (e, n), b"", b""), enc, bits, pos
    if family == _DSA:
        p, pos = _bignum(buf, pos)
        q, pos = _bignum(buf, pos)
        g, pos = _bignum(buf, pos)
        y, pos = _bignum(buf, pos)
        enc = _put_mpint(p) + _put_mpint(q) + _put_mpint(g) + _put_mpint(y)
        return _Fields(family, None, (p, q, g, y), b"", b""), enc, p.bit_length(), pos
    # ECDSA / ECDSA-SK
    if name_curve is None:
        raise InvalidKey("unknown key type")
    curve_name, pos = _cstring(buf, pos)
    if curve_name.decode("latin-1") != name_curve:
        raise InvalidKey("ECDSA curve mismatch")
    curve = _CURVES[name_curve]
    point, pos = _string(buf, pos)
    x, y = _ec_point(point, curve)
    enc = _put_string(curve_name) + _put_string(point)
    app = b""
    if family == _ECDSA_SK:
        app, pos = _cstring(buf, pos)
        enc += _put_string(app)
    return _Fields(family, name_curve, (x, y), point, app), enc, curve.bits, pos


def _resolve_name(raw: bytes) -> tuple[int, bool, str | None]:
    name = raw.decode("latin-1")
    found = _NAMES.get(name)
    if found is None:
        found = _SHORT_NAMES.get(name.lower()) if name.isascii() else None
        if found is None:
            raise InvalidKey("unknown key type")
    return found


def _type_name(family: int, curve: str | None) -> str:
    return _ECDSA_NAMES[curve] if family == _ECDSA and curve is not None else _CANONICAL[family]


def _parse_plain_for_ca(blob: bytes) -> tuple[_Fields, bytes]:
    """A CA key: plain (certificates may not sign certificates), fully validated, no trailing bytes."""
    raw_name, pos = _cstring(blob, 0)
    family, is_cert, curve = _resolve_name(raw_name)
    if is_cert:
        raise InvalidKey("certificate CA is a certificate")
    fields, enc, _, pos = _key_fields(family, curve, blob, pos)
    if pos != len(blob):
        raise InvalidKey("trailing bytes in CA key")
    return fields, _put_string(_type_name(family, curve).encode()) + enc


def _fingerprint(plain: bytes) -> str:
    # a 32-byte digest encodes to 43 characters and one "=" of padding
    return "SHA256:" + binascii.b2a_base64(_sha256(plain).digest(), newline=False)[:43].decode("ascii")


_sha256 = hashlib.sha256


def _fingerprint_md5(plain: bytes) -> str:
    return "MD5:" + _md5(plain, usedforsecurity=False).digest().hex(":")


_md5 = hashlib.md5


def _datetime(value: int) -> datetime:
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        return datetime.max.replace(tzinfo=UTC)


def _check_option_section(section: bytes) -> None:
    pos = 0
    while pos < len(section):
        _, pos = _string(section, pos)
        _, pos = _string(section, pos)


def _parse_certificate(blob: bytes, pos: int) -> tuple[Certificate, int]:
    serial, pos = _uint(blob, pos, 8)
    ctype, pos = _uint(blob, pos, 4)
    key_id, pos = _cstring(blob, pos)
    principals_buf, pos = _string(blob, pos)
    valid_after, pos = _uint(blob, pos, 8)
    valid_before, pos = _uint(blob, pos, 8)
    critical, pos = _string(blob, pos)
    extensions, pos = _string(blob, pos)
    _reserved, pos = _string(blob, pos)
    ca_blob, pos = _string(blob, pos)
    signed_len = pos
    signature, pos = _string(blob, pos)
    if ctype not in (1, 2):
        raise InvalidKey("unknown certificate type")
    principals: list[str] = []
    ppos = 0
    while ppos < len(principals_buf):
        if len(principals) >= _MAX_PRINCIPALS:
            raise InvalidKey("too many certificate principals")
        principal, ppos = _cstring(principals_buf, ppos)
        principals.append(principal.decode("utf-8", "replace"))
    _check_option_section(critical)
    _check_option_section(extensions)
    try:
        ca_fields, ca_plain = _parse_plain_for_ca(ca_blob)
    except InvalidKey:
        raise InvalidKey("invalid certificate CA key") from None
    if not _verify_signature(ca_fields, signature, blob[:signed_len]):
        raise InvalidKey("certificate signature invalid")
    cert = Certificate(
        cert_type="user" if ctype == 1 else "host",
        key_id=key_id.decode("utf-8", "replace"),
        serial=serial,
        principals=tuple(principals),
        valid_after=None if valid_after == 0 else _datetime(valid_after),
        valid_before=None if valid_before == _U64_MAX else _datetime(valid_before),
        ca_fingerprint=_fingerprint(ca_plain),
    )
    return cert, pos


# --- CA signature verification (sshkey_verify with alg=NULL) ---------------------------------------

_RSA_SIG_HASHES: Final = {"ssh-rsa": "sha1", "rsa-sha2-256": "sha256", "rsa-sha2-512": "sha512"}
_EC_HASHES: Final = {_P256: "sha256", _P384: "sha384", _P521: "sha512"}


def _verify_signature(ca: _Fields, signature: bytes, data: bytes) -> bool:
    """Verify a certificate's CA signature exactly as far as OpenSSH's per-type verify functions parse it.

    Supported: ssh-ed25519, ecdsa-sha2-*, ssh-rsa/rsa-sha2-256/rsa-sha2-512, ssh-dss and the security-key
    types sk-ssh-ed25519@openssh.com and sk-ecdsa-sha2-nistp256@openssh.com. A webauthn-sk signature
    (only produced by browsers, never by ssh-keygen) is treated as invalid.
    """
    try:
        return _verify(ca, signature, data)
    except InvalidKey:
        return False
    except ValueError:  # cryptography refusing degenerate key numbers
        return False


def _verify(ca: _Fields, signature: bytes, data: bytes) -> bool:
    # Imported here: plain keys (the hot path) never need `cryptography`.
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    hash_by_name: dict[str, hashes.HashAlgorithm] = {
        "sha1": hashes.SHA1(),  # noqa: S303 - ssh-rsa/ssh-dss certificates are SHA-1 by definition
        "sha256": hashes.SHA256(),
        "sha384": hashes.SHA384(),
        "sha512": hashes.SHA512(),
    }
    sig_type_raw, pos = _cstring(signature, 0)
    sig_type = sig_type_raw.decode("latin-1")
    family = ca.family
    try:
        if family == _RSA:
            hash_name = _RSA_SIG_HASHES.get(sig_type)
            if hash_name is None:
                return False
            sig, pos = _string(signature, pos)
            if pos != len(signature):
                return False
            e, n = ca.ints
            modlen = (n.bit_length() + 7) // 8
            if len(sig) > modlen:
                return False
            rsa.RSAPublicNumbers(e, n).public_key().verify(
                sig.rjust(modlen, b"\0"), data, padding.PKCS1v15(), hash_by_name[hash_name]
            )
            return True
        if family in (_ED25519, _ED25519_SK):
            expected = "ssh-ed25519" if family == _ED25519 else "sk-ssh-ed25519@openssh.com"
            if sig_type != expected:
                return False
            sig, pos = _string(signature, pos)
            message = data
            if family == _ED25519_SK:
                message, pos = _sk_message(ca, signature, pos, data)
            if pos != len(signature) or len(sig) != 64:
                return False
            ed25519.Ed25519PublicKey.from_public_bytes(ca.raw).verify(sig, message)
            return True
        if family in (_ECDSA, _ECDSA_SK):
            assert ca.curve is not None
            if sig_type != (_ECDSA_NAMES[ca.curve] if family == _ECDSA else _CANONICAL[_ECDSA_SK]):
                return False
            inner, pos = _string(signature, pos)
            r, ipos = _bignum(inner, 0)
            s, ipos = _bignum(inner, ipos)
            if ipos != len(inner):
                return False
            message = data
            if family == _ECDSA_SK:
                message, pos = _sk_message(ca, signature, pos, data)
            if pos != len(signature):
                return False
            curve: ec.EllipticCurve = {_P256: ec.SECP256R1(), _P384: ec.SECP384R1(), _P521: ec.SECP521R1()}[
                ca.curve
            ]
            x, y = ca.ints
            ec.EllipticCurvePublicNumbers(x, y, curve).public_key().verify(
                encode_dss_signature(r, s), message, ec.ECDSA(hash_by_name[_EC_HASHES[ca.curve]])
            )
            return True
        if family == _DSA:
            if sig_type != "ssh-dss":
                return False
            sig, pos = _string(signature, pos)
            if pos != len(signature) or len(sig) != 40:
                return False
            p, q, g, y = ca.ints
            key = dsa.DSAPublicNumbers(y, dsa.DSAParameterNumbers(p, q, g)).public_key()
            der = encode_dss_signature(int.from_bytes(sig[:20], "big"), int.from_bytes(sig[20:], "big"))
            key.verify(der, data, hash_by_name["sha1"])
            return True
    except InvalidSignature:
        return False
    return False


def _sk_message(ca: _Fields, signature: bytes, pos: int, data: bytes) -> tuple[bytes, int]:
    """FIDO signatures cover sha256(application) || flags || counter || sha256(data)."""
    flags, pos = _uint(signature, pos, 1)
    counter, pos = _uint(signature, pos, 4)
    message = (
        hashlib.sha256(ca.application).digest()
        + bytes([flags])
        + counter.to_bytes(4, "big")
        + hashlib.sha256(data).digest()
    )
    return message, pos


# --- public API ------------------------------------------------------------------------------------


def parse_public_blob(blob: bytes, label: str | None = None) -> PublicKey:
    """Validate a wire-format public key (or certificate) blob as sshkey_fromb + sshkey_read do.

    `label` is the type word written before the base64 in a text line; when given, the blob's type
    must be the same key type (and for ECDSA the same curve) as sshkey_read requires.
    """
    if len(blob) == 51 and blob.startswith(_ED25519_PREFIX) and (label is None or label == "ssh-ed25519"):
        # The overwhelmingly common key: canonical by construction, nothing left to validate.
        return _public_key("ssh-ed25519", "ssh-ed25519", "ED25519", 256, blob, blob, None)
    want: tuple[int, bool, str | None] | None = None
    if label is not None:
        want = _NAMES.get(label)
        if want is None:
            raise InvalidKey("unknown key type")
    raw_name, pos = _cstring(blob, 0)
    family, is_cert, curve = _resolve_name(raw_name)
    if want is not None and (want[0] != family or want[1] != is_cert):
        raise InvalidKey("key type mismatch")
    if is_cert:
        _nonce, pos = _string(blob, pos)
    _fields, enc, bits, pos = _key_fields(family, curve, blob, pos)
    certificate: Certificate | None = None
    if is_cert:
        certificate, pos = _parse_certificate(blob, pos)
    if pos != len(blob):
        raise InvalidKey("trailing bytes after key")
    if want is not None and family in (_ECDSA, _ECDSA_SK) and want[2] != curve:
        raise InvalidKey("ECDSA curve mismatch")
    base_type = _type_name(family, curve)
    plain = _put_string(base_type.encode()) + enc
    if not is_cert and plain == blob:
        plain = blob  # share the buffer in the common canonical case
    keygen_type = _KEYGEN_LABEL[family]
    if is_cert:
        return _public_key(
            _cert_name(base_type), base_type, keygen_type + "-CERT", bits, blob, plain, certificate
        )
    return _public_key(base_type, base_type, keygen_type, bits, blob, plain, None)


_ED25519_PREFIX: Final = b"\0\0\0\x0bssh-ed25519\0\0\0\x20"
_RSA_PREFIX: Final = b"\0\0\0\x07ssh-rsa"
_FAST_LABELS: Final = {b"ssh-ed25519": "ssh-ed25519", b"ssh-rsa": "ssh-rsa"}
_a2b = binascii.a2b_base64
_b2a = binascii.b2a_base64


def fast_plain_key(label: bytes, token: bytes) -> PublicKey | None:
    """The hot path for the two common, canonical cases: a plain ssh-ed25519 or ssh-rsa key.

    Returns None whenever anything is unusual (other types, whitespace in the token, non-canonical
    or invalid data); the caller then takes the complete path, which gives the exact verdict.
    """
    name = _FAST_LABELS.get(label)
    if name is None:
        return None
    try:
        blob = _a2b(token, strict_mode=True)
    except (binascii.Error, ValueError):
        return None
    if _b2a(blob, newline=False) != token:
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
        or n_len > _MAX_BIGNUM_BYTES + 1
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
            "fingerprint": _fingerprint(plain),
            "fingerprint_md5": _fingerprint_md5(plain),
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
    if label not in _NAMES:
        raise InvalidKey("unknown key type")
    return parse_public_blob(_decode_base64(token), label), label, rest


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
    return f"{key.type} {_b64(key.blob if key.certificate is not None else key.plain_blob)}"


# label, blanks, base64 token (may be followed by blanks): sshkey_read's strcspn(" \\t") walk.
_KEY_WORDS: Final = re.compile(rb"([^ \t]*)[ \t]+([^ \t]+)[ \t]*").match
