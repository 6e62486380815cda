"""agent.ssh.keys: validation, types, bits, fingerprints, certificates (keys made with `cryptography`)."""

from __future__ import annotations

import base64
import hashlib
import os
import struct

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from agent.ssh.keys import KEY_LABELS, InvalidKey, key_text, parse_public_blob, parse_public_key_text
from tests.sshwire import b64, mpint, s


def sha256_fp(blob: bytes) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


ED_PRIV = ed25519.Ed25519PrivateKey.generate()
ED_PUB = ED_PRIV.public_key().public_bytes_raw()
ED_BLOB = s("ssh-ed25519") + s(ED_PUB)
RSA_PRIV = rsa.generate_private_key(public_exponent=65537, key_size=1024)
RSA_NUM = RSA_PRIV.public_key().public_numbers()
RSA_BLOB = s("ssh-rsa") + mpint(RSA_NUM.e) + mpint(RSA_NUM.n)


def ec_blob(curve: ec.EllipticCurve, name: str) -> bytes:
    point = (
        ec.generate_private_key(curve)
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    return s(f"ecdsa-sha2-{name}") + s(name) + s(point)


def test_key_labels_cover_every_openssh_name() -> None:
    for plain in (
        "ssh-rsa",
        "ssh-dss",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "ssh-ed25519",
        "sk-ecdsa-sha2-nistp256@openssh.com",
        "sk-ssh-ed25519@openssh.com",
        "rsa-sha2-256",
        "rsa-sha2-512",
    ):
        assert plain in KEY_LABELS
        assert plain.replace("@openssh.com", "") + "-cert-v01@openssh.com" in KEY_LABELS
    assert "webauthn-sk-ecdsa-sha2-nistp256@openssh.com" in KEY_LABELS
    assert len(KEY_LABELS) == 21


def test_ed25519_fields_and_fingerprints() -> None:
    key, comment = parse_public_key_text(f"ssh-ed25519 {b64(ED_BLOB)}  alice@laptop \r")
    assert comment == "alice@laptop"
    assert (key.type, key.base_type, key.keygen_type, key.bits) == (
        "ssh-ed25519",
        "ssh-ed25519",
        "ED25519",
        256,
    )
    assert key.fingerprint == sha256_fp(ED_BLOB)
    assert key.fingerprint_md5 == "MD5:" + hashlib.md5(ED_BLOB).digest().hex(":")
    assert key.blob == key.plain_blob == ED_BLOB and key.certificate is None
    assert key_text(key) == f"ssh-ed25519 {b64(ED_BLOB)}"
    assert "AAAA" not in repr(key)


@pytest.mark.parametrize(
    ("curve", "name", "bits"),
    [(ec.SECP256R1(), "nistp256", 256), (ec.SECP384R1(), "nistp384", 384), (ec.SECP521R1(), "nistp521", 521)],
)
def test_ecdsa_bits(curve: ec.EllipticCurve, name: str, bits: int) -> None:
    key = parse_public_blob(ec_blob(curve, name), f"ecdsa-sha2-{name}")
    assert (key.keygen_type, key.bits, key.type) == ("ECDSA", bits, f"ecdsa-sha2-{name}")


def test_rsa_bits_and_canonical_fingerprint_of_padded_mpints() -> None:
    padded = s("ssh-rsa") + mpint(RSA_NUM.e, pad=3) + mpint(RSA_NUM.n, pad=1)
    key = parse_public_blob(padded, "ssh-rsa")
    assert key.bits == 1024 and key.plain_blob == RSA_BLOB and key.blob == padded
    assert key.fingerprint == sha256_fp(RSA_BLOB)
    assert key_text(key) == f"ssh-rsa {b64(RSA_BLOB)}"  # plain keys are written canonically


@pytest.mark.parametrize("label", ["ssh-rsa", "rsa-sha2-256", "rsa-sha2-512"])
def test_rsa_aliases(label: str) -> None:
    assert parse_public_key_text(f"{label} {b64(RSA_BLOB)}")[0].type == "ssh-rsa"


def test_dsa_bits_are_p_bits() -> None:
    numbers = dsa.generate_private_key(1024).public_key().public_numbers()
    p = numbers.parameter_numbers
    blob = s("ssh-dss") + mpint(p.p) + mpint(p.q) + mpint(p.g) + mpint(numbers.y)
    key = parse_public_blob(blob, "ssh-dss")
    assert (key.keygen_type, key.bits) == ("DSA", 1024)


def test_sk_types() -> None:
    sk_ed = s("sk-ssh-ed25519@openssh.com") + s(ED_PUB) + s("ssh:")
    point = ec_blob(ec.SECP256R1(), "nistp256")[-69:]
    sk_ec = s("sk-ecdsa-sha2-nistp256@openssh.com") + s("nistp256") + point + s("ssh:")
    assert parse_public_blob(sk_ed).keygen_type == "ED25519-SK"
    key = parse_public_blob(sk_ec, "webauthn-sk-ecdsa-sha2-nistp256@openssh.com")
    assert (key.keygen_type, key.bits, key.type) == ("ECDSA-SK", 256, "sk-ecdsa-sha2-nistp256@openssh.com")


def _cert(
    key_fields: bytes,
    ca_blob: bytes,
    sign: object,
    *,
    name: str = "ssh-ed25519-cert-v01@openssh.com",
    cert_type: int = 1,
    valid: tuple[int, int] = (0, 2**64 - 1),
    principals: tuple[str, ...] = ("alice", "bob"),
) -> bytes:
    tbs = (
        s(name)
        + s(os.urandom(32))
        + key_fields
        + struct.pack(">QI", 99, cert_type)
        + s("key-id")
        + s(b"".join(s(p) for p in principals))
        + struct.pack(">QQ", *valid)
        + s(b"")
        + s(s("permit-pty") + s(b""))
        + s(b"")
        + s(ca_blob)
    )
    assert callable(sign)
    return tbs + s(sign(tbs))


def _ed_sign(data: bytes) -> bytes:
    return s("ssh-ed25519") + s(ED_PRIV.sign(data))


def test_certificate_fields_and_ca_fingerprint() -> None:
    subject = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    blob = _cert(s(subject), ED_BLOB, _ed_sign, valid=(1_700_000_000, 1_800_000_000))
    key = parse_public_blob(blob, "ssh-ed25519-cert-v01@openssh.com")
    assert (key.type, key.base_type, key.keygen_type) == (
        "ssh-ed25519-cert-v01@openssh.com",
        "ssh-ed25519",
        "ED25519-CERT",
    )
    assert key.plain_blob == s("ssh-ed25519") + s(subject)
    assert key.fingerprint == sha256_fp(key.plain_blob)
    cert = key.certificate
    assert cert is not None
    assert cert.to_json() == {
        "cert_type": "user",
        "key_id": "key-id",
        "serial": 99,
        "principals": ["alice", "bob"],
        "valid_after": "2023-11-14T22:13:20Z",
        "valid_before": "2027-01-15T08:00:00Z",
        "ca_fingerprint": sha256_fp(ED_BLOB),
    }
    assert key_text(key) == f"ssh-ed25519-cert-v01@openssh.com {b64(blob)}"


def test_certificate_unbounded_validity_and_host_type() -> None:
    blob = _cert(s(ED_PUB), ED_BLOB, _ed_sign, cert_type=2, principals=())
    cert = parse_public_blob(blob).certificate
    assert cert is not None
    assert (cert.cert_type, cert.valid_after, cert.valid_before, cert.principals) == ("host", None, None, ())


def test_rsa_and_ecdsa_ca_signatures_verify() -> None:
    ca_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    n = ca_rsa.public_key().public_numbers()
    rsa_ca_blob = s("ssh-rsa") + mpint(n.e) + mpint(n.n)
    for alg, digest in (
        ("ssh-rsa", hashes.SHA1()),
        ("rsa-sha2-256", hashes.SHA256()),
        ("rsa-sha2-512", hashes.SHA512()),
    ):
        blob = _cert(
            s(ED_PUB), rsa_ca_blob, lambda d, a=alg, h=digest: s(a) + s(ca_rsa.sign(d, padding.PKCS1v15(), h))
        )
        assert parse_public_blob(blob).certificate is not None
    ca_ec = ec.generate_private_key(ec.SECP256R1())
    point = ca_ec.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    ec_ca_blob = s("ecdsa-sha2-nistp256") + s("nistp256") + s(point)

    def ec_sign(data: bytes) -> bytes:
        r, s_ = decode_dss_signature(ca_ec.sign(data, ec.ECDSA(hashes.SHA256())))
        return s("ecdsa-sha2-nistp256") + s(mpint(r) + mpint(s_))

    assert parse_public_blob(_cert(s(ED_PUB), ec_ca_blob, ec_sign)).certificate is not None
    # a signature of the wrong algorithm name for the CA key is refused
    with pytest.raises(InvalidKey, match="certificate signature invalid"):
        parse_public_blob(_cert(s(ED_PUB), ec_ca_blob, lambda d: s("ssh-ed25519") + s(b"\0" * 64)))


def _expect(reason: str, blob: bytes, label: str | None = None) -> None:
    with pytest.raises(InvalidKey) as info:
        parse_public_blob(blob, label)
    assert info.value.reason == reason
    assert str(info.value) == reason


def test_malformed_blobs() -> None:
    point = ec_blob(ec.SECP256R1(), "nistp256")
    bad_y = bytearray(point)
    bad_y[-1] ^= 1
    _expect("key type mismatch", ED_BLOB, "ssh-rsa")
    _expect("truncated key data", ED_BLOB[:-1])
    _expect("trailing bytes after key", ED_BLOB + b"\0")
    _expect("unknown key type", s("ssh-foo") + s(ED_PUB))
    _expect("unknown key type", ED_BLOB, "ssh-foo")
    _expect("invalid ed25519 key length", s("ssh-ed25519") + s(ED_PUB[:31]))
    _expect("ECDSA curve mismatch", point, "ecdsa-sha2-nistp384")
    _expect("ECDSA curve mismatch", s("ecdsa-sha2-nistp256") + s("nistp384") + point[-69:])
    _expect("ECDSA point not on curve", bytes(bad_y))
    _expect("invalid ECDSA point", s("ecdsa-sha2-nistp256") + s("nistp256") + s(b"\x02" + point[-64:-32]))
    _expect("RSA modulus too small", s("ssh-rsa") + mpint(65537) + mpint((1 << 1022) | 1))
    _expect("number too large in key", s("ssh-rsa") + mpint(65537) + mpint((1 << 16384) | 1))
    _expect("negative number in key", s("ssh-rsa") + s(b"\x80\x01") + mpint(RSA_NUM.n))
    _expect("invalid string in key data", s("ssh-ed\0" + "25519") + s(ED_PUB))


def test_rsa_16384_bits_is_the_maximum() -> None:
    assert parse_public_blob(s("ssh-rsa") + mpint(65537) + mpint((1 << 16383) | 1)).bits == 16384


def test_malformed_certificates() -> None:
    good = _cert(s(ED_PUB), ED_BLOB, _ed_sign)
    tampered = bytearray(good)
    tampered[-3] ^= 0xFF
    _expect("certificate signature invalid", bytes(tampered))
    _expect("unknown certificate type", _cert(s(ED_PUB), ED_BLOB, _ed_sign, cert_type=3))
    _expect("invalid certificate CA key", _cert(s(ED_PUB), good, _ed_sign))  # CA is a certificate
    _expect("trailing bytes after key", good + b"\0")
    _expect("too many certificate principals", _cert(s(ED_PUB), ED_BLOB, _ed_sign, principals=("p",) * 257))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("ssh-ed25519", "missing key data"),
        ("ssh-ed25519   ", "missing key data"),
        ("ssh-ed25519 " + b64(ED_BLOB)[:-1], "invalid base64"),
        ("ssh-ed25519 " + b64(ED_BLOB)[:5] + "*" + b64(ED_BLOB)[6:], "invalid base64"),
        ("ssh-ed25519 " + b64(ED_BLOB)[:-2] + "B=", "invalid base64"),  # non-zero pad bits
        ("ssh-ed25519 " + b64(ED_BLOB) + "====", "invalid base64"),
        ("SSH-ED25519 " + b64(ED_BLOB), "unknown key type"),  # labels are case-sensitive
    ],
    # Stable ids: the key is generated per run, and xdist workers must collect the same tests.
    ids=["label-only", "label-blanks", "short", "bad-char", "pad-bits", "extra-padding", "label-case"],
)
def test_malformed_text(text: str, reason: str) -> None:
    with pytest.raises(InvalidKey) as info:
        parse_public_key_text(text)
    assert info.value.reason == reason
    assert b64(ED_BLOB)[:8] not in str(info.value)


def test_whitespace_inside_base64_is_skipped_like_b64_pton() -> None:
    token = b64(ED_BLOB)
    key, comment = parse_public_key_text(f"ssh-ed25519 {token[:12]}\r\n{token[12:]}\x0c\tcomment")
    assert key.blob == ED_BLOB and comment == "comment"
