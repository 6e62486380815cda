"""verify_instruction: EdDSA only, pinned keys, aud/exp/iat/jti against an injected time."""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.instructions.verify import (
    MAX_TOKEN_BYTES,
    Rejected,
    load_public_keys,
    peek_jti,
    verify_instruction,
)

NOW = 1_800_000_000
HOST = "hst_abc"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**over: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "jti": "ins_1",
        "aud": HOST,
        "iat": NOW - 10,
        "exp": NOW + 600,
        "kind": "scan",
        "body": {"scan_id": "scn_1"},
    }
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _verify(token: str, key: Ed25519PrivateKey, **kw: Any) -> Any:
    return verify_instruction(token, keys=[key.public_key()], host_id=HOST, now=NOW, leeway=30, **kw)


def test_valid_token(key: Ed25519PrivateKey) -> None:
    token = jwt.encode(_claims(), key, algorithm="EdDSA", headers={"kid": "k1"})
    ins = _verify(token, key)
    assert (ins.jti, ins.aud, ins.kind, ins.body, ins.kid, ins.signed) == (
        "ins_1",
        HOST,
        "scan",
        {"scan_id": "scn_1"},
        "k1",
        True,
    )


def test_second_pinned_key_verifies(key: Ed25519PrivateKey) -> None:
    other = Ed25519PrivateKey.generate()
    token = jwt.encode(_claims(), key, algorithm="EdDSA")
    ins = verify_instruction(token, keys=[other.public_key(), key.public_key()], host_id=HOST, now=NOW)
    assert ins.jti == "ins_1"


@pytest.mark.parametrize(
    ("claims", "reason", "status"),
    [
        (_claims(aud="hst_other"), "aud", "rejected"),
        (_claims(aud=[HOST]), "aud", "rejected"),
        (_claims(exp=None), "missing exp", "rejected"),
        (_claims(exp=float(NOW + 600)), "missing exp", "rejected"),
        (_claims(exp=NOW - 31), "expired", "expired"),
        (_claims(iat=NOW + 120), "iat", "rejected"),
        (_claims(jti=None), "jti", "rejected"),
        (_claims(jti="../x"), "jti", "rejected"),
        (_claims(kind="exec"), "kind", "rejected"),
        (_claims(body=["x"]), "body", "rejected"),
    ],
)
def test_claims_checks(key: Ed25519PrivateKey, claims: dict[str, Any], reason: str, status: str) -> None:
    token = jwt.encode(claims, key, algorithm="EdDSA")
    with pytest.raises(Rejected) as info:
        _verify(token, key)
    assert reason in info.value.reason
    assert info.value.status == status


def test_leeway_accepts_just_expired(key: Ed25519PrivateKey) -> None:
    token = jwt.encode(_claims(exp=NOW - 29), key, algorithm="EdDSA")
    assert _verify(token, key).exp == NOW - 29


def test_wrong_key_and_other_algorithms(key: Ed25519PrivateKey) -> None:
    other = Ed25519PrivateKey.generate()
    forged = jwt.encode(_claims(), other, algorithm="EdDSA")
    with pytest.raises(Rejected, match="signature"):
        _verify(forged, key)
    es = jwt.encode(_claims(), generate_private_key(SECP256R1()), algorithm="ES256")
    with pytest.raises(Rejected, match="algorithm"):
        _verify(es, key)
    hs = jwt.encode(_claims(), b"x" * 32, algorithm="HS256")
    with pytest.raises(Rejected, match="algorithm"):
        _verify(hs, key)


def test_alg_none_only_when_signatures_not_required(key: Ed25519PrivateKey) -> None:
    token = f"{_b64(json.dumps({'alg': 'none'}).encode())}.{_b64(json.dumps(_claims()).encode())}."
    with pytest.raises(Rejected, match="unsigned"):
        _verify(token, key)
    ins = _verify(token, key, require_signature=False)
    assert ins.signed is False
    with pytest.raises(Rejected):
        _verify(token + "c2ln", key, require_signature=False)


def test_no_keys_configured(key: Ed25519PrivateKey) -> None:
    token = jwt.encode(_claims(), key, algorithm="EdDSA")
    with pytest.raises(Rejected, match="no instruction signing key"):
        verify_instruction(token, keys=[], host_id=HOST, now=NOW)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a.b",
        "a.b.c.d",
        "x" * (MAX_TOKEN_BYTES + 1),
        "!!!.###.$$$",
        _b64(b"[" * 5000) + ".e30.",
        _b64(b'"str"') + ".e30.",
        _b64(b"\xff\xfe") + ".e30.",
    ],
)
def test_malformed_tokens(key: Ed25519PrivateKey, token: str) -> None:
    with pytest.raises(Rejected):
        _verify(token, key)


def test_rejection_messages_never_carry_the_token(key: Ed25519PrivateKey) -> None:
    secret_body = {"rotation_id": "rot_1", "new_key": "ssh-ed25519 SECRETSECRET"}
    token = jwt.encode(_claims(aud="other", body=secret_body), key, algorithm="EdDSA")
    with pytest.raises(Rejected) as info:
        _verify(token, key)
    assert "SECRET" not in str(info.value)
    assert info.value.jti == "ins_1"


def test_peek_jti(key: Ed25519PrivateKey) -> None:
    assert peek_jti(jwt.encode(_claims(), key, algorithm="EdDSA")) == "ins_1"
    assert peek_jti(jwt.encode(_claims(jti="bad jti!"), key, algorithm="EdDSA")) is None
    assert peek_jti("garbage") is None


def test_load_public_keys(key: Ed25519PrivateKey) -> None:
    pub = key.public_key()
    openssh = pub.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    pem = pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    loaded = load_public_keys([openssh + " comment", pem])
    assert len(loaded) == 2
    with pytest.raises(ValueError, match=r"public_keys\[0\]"):
        load_public_keys(["not a key"])
    ec_pem = (
        generate_private_key(SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    with pytest.raises(ValueError, match="not an Ed25519"):
        load_public_keys([ec_pem])
