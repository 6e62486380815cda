"""Ed25519 instruction signing (compact JWS, alg EdDSA, kid), forged variants for tests, key pairs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .values import public_key_fingerprint

_HMAC = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class InstructionSigner:
    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        public = private_key.public_key()
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        # kid: a short, stable name derived from the public key itself.
        self.kid = "cp-" + _b64url(hashlib.sha256(raw).digest())[:16]
        self.public_key_openssh = (
            public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
            + " sshklm-control-plane"
        )
        self.public_key_pem = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    def sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self._key, algorithm="EdDSA", headers={"kid": self.kid})

    def forge(self, claims: dict[str, Any], *, sign: bool, alg: str, key: object | None) -> str:
        """A JWS that may be wrong on purpose (tests of the agent's verifier).

        sign=False or alg "none": empty signature. EdDSA: signed with `key` (an Ed25519PrivateKey) or the
        server key. HS256/384/512: HMAC with `key` (bytes/str) or, by default, the server's OpenSSH public
        key text -- the classic algorithm-confusion forgery.
        """
        if sign and alg == "EdDSA" and key is None:
            return self.sign(claims)
        header = {"alg": alg, "kid": self.kid, "typ": "JWT"}
        signing_input = f"{_b64url(_json_bytes(header))}.{_b64url(_json_bytes(claims))}"
        if not sign or alg == "none":
            return signing_input + "."
        if alg == "EdDSA":
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError("EdDSA forgery needs an Ed25519PrivateKey")
            return f"{signing_input}.{_b64url(key.sign(signing_input.encode()))}"
        if alg in _HMAC:
            secret = self.public_key_openssh.encode() if key is None else key
            if isinstance(secret, str):
                secret = secret.encode()
            if not isinstance(secret, bytes):
                raise ValueError("HMAC forgery needs a bytes or str key")
            mac = hmac.new(secret, signing_input.encode(), _HMAC[alg]).digest()
            return f"{signing_input}.{_b64url(mac)}"
        raise ValueError(f"unsupported alg for forgery: {alg}")


def load_or_create_signing_key(path: str) -> Ed25519PrivateKey:
    """Load an Ed25519 private key (PEM PKCS#8 or OpenSSH); create one (mode 0600) when the file is absent."""
    file = Path(path)
    if file.exists():
        data = file.read_bytes()
        key: object
        if b"OPENSSH PRIVATE KEY" in data:
            key = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path}: not an Ed25519 private key")
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    return key


def generate_ssh_keypair(comment: str) -> tuple[str, str, str]:
    """A fresh ed25519 pair: (private key in OpenSSH PEM, public key line, SHA256 fingerprint)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    line = f"{public.decode()} {comment}"
    return private, line, public_key_fingerprint(line)


def hmac_secret() -> bytes:
    return secrets.token_bytes(32)
