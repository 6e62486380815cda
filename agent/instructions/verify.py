"""Verify a server-issued instruction (a compact JWS, agent-api.md section 6). Pure.

Only EdDSA over the Ed25519 keys pinned in the configuration is accepted; `aud` must be this
host, `exp` is required and honoured against the *injected* time (PyJWT would read the clock
itself, so its own exp/iat/nbf checks are turned off and done here), `jti` is returned for the
caller's replay registry. Every failure is a `Rejected` with a short reason and nothing else:
the token's content never reaches the message.

Times (`exp`, `iat`, `nbf`) are integer seconds since the epoch from 0 to 9999-12-31T23:59:59Z,
what a datetime, SQLite and RFC 3339 can carry: a float, a boolean, a string, null, a negative
number or 10**400 is refused here, before anything downstream does arithmetic with it. `nbf`
(not before) in the future beyond the leeway is `NOT_YET_VALID`: rejected, not kept pending
(the server would re-send it on every poll; docs/rotation.md, "Trust model").
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key, load_ssh_public_key

MAX_TOKEN_BYTES = 64 * 1024
MAX_CLAIM_TIME = 253_402_300_799  # 9999-12-31T23:59:59Z
NOT_YET_VALID = "NOT_YET_VALID"
KINDS = frozenset(
    {"rotation", "ephemeral", "revoke_ephemeral", "scan"}
    | {"revoke_keys", "unrevoke_keys", "trust_ca", "untrust_ca"}  # section 6.2 (validate_trust.py)
)
_JTI = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class Rejected(Exception):
    """An instruction that must not be applied. `code` is the contract's error code."""

    def __init__(
        self,
        reason: str,
        code: str = "VALIDATION_ERROR",
        jti: str | None = None,
        *,
        status: str = "rejected",
        final_until: int | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.jti = jti
        # The result status to report: "rejected", or "expired" for an instruction past its exp.
        self.status = status
        # Set when the signature verified and the answer must not change for this jti (record it
        # in the replay registry, kept until this `exp`): an instruction not valid yet.
        self.final_until = final_until


@dataclass(frozen=True)
class Instruction:
    jti: str
    aud: str
    iat: int | None
    exp: int
    kind: str
    body: dict[str, Any]
    kid: str | None
    signed: bool
    nbf: int | None = None


def load_public_keys(texts: Sequence[str]) -> list[Ed25519PublicKey]:
    """Pinned keys from configuration: OpenSSH (`ssh-ed25519 AAAA...`) or PEM. Raises ValueError."""
    keys: list[Ed25519PublicKey] = []
    for index, text in enumerate(texts):
        raw = text.strip().encode("ascii", "replace")
        try:
            key = load_pem_public_key(raw) if raw.startswith(b"-----BEGIN") else load_ssh_public_key(raw)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise ValueError(f"instructions.public_keys[{index}]: not a public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"instructions.public_keys[{index}]: not an Ed25519 key")
        keys.append(key)
    return keys


def _b64url_json(segment: str) -> dict[str, Any]:
    try:
        padded = segment + "=" * (-len(segment) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeError, RecursionError):
        # RecursionError: deeply nested JSON ("[[[[...") must be a rejection, not a crash.
        raise Rejected("malformed token") from None
    if not isinstance(value, dict):
        raise Rejected("malformed token")
    return value


def peek_jti(token: str) -> str | None:
    """The jti of a token without trusting it (to report a rejection against the right id)."""
    try:
        parts = token.split(".")
        if len(parts) != 3 or len(token) > MAX_TOKEN_BYTES:
            return None
        jti = _b64url_json(parts[1]).get("jti")
    except Rejected:
        return None
    return jti if isinstance(jti, str) and _JTI.match(jti) else None


def verify_instruction(
    token: str,
    *,
    keys: Sequence[Ed25519PublicKey],
    host_id: str,
    now: float,
    leeway: float = 30.0,
    require_signature: bool = True,
) -> Instruction:
    if not isinstance(token, str) or len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
        raise Rejected("malformed token")
    header = _b64url_json(token.split(".", 1)[0])
    alg = header.get("alg")
    jti_hint = peek_jti(token)
    if alg == "EdDSA":
        claims = _verify_signed(token, keys, jti_hint)
        signed = True
    elif alg == "none" and not require_signature:
        if token.split(".")[2]:
            raise Rejected("unsigned token carries a signature", jti=jti_hint)
        claims = _b64url_json(token.split(".")[1])
        signed = False
    elif alg == "none":
        raise Rejected(
            "unsigned instruction refused (instructions.require_signature)", "AUTH_INVALID", jti_hint
        )
    else:
        raise Rejected("algorithm not allowed (only EdDSA)", "AUTH_INVALID", jti_hint)
    return _check_claims(claims, header, host_id=host_id, now=now, leeway=leeway, signed=signed)


def _verify_signed(token: str, keys: Sequence[Ed25519PublicKey], jti_hint: str | None) -> dict[str, Any]:
    if not keys:
        raise Rejected("no instruction signing key configured", "AUTH_INVALID", jti_hint)
    for key in keys:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=["EdDSA"],
                options={"verify_exp": False, "verify_iat": False, "verify_nbf": False, "verify_aud": False},
            )
        except jwt.InvalidSignatureError:
            continue
        except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
            raise Rejected("malformed token", jti=jti_hint) from None
        return claims
    raise Rejected("signature does not verify with any pinned key", "AUTH_INVALID", jti_hint)


def _check_claims(
    claims: dict[str, Any], header: dict[str, Any], *, host_id: str, now: float, leeway: float, signed: bool
) -> Instruction:
    jti = claims.get("jti")
    if not isinstance(jti, str) or not _JTI.match(jti):
        raise Rejected("missing or malformed jti")
    aud = claims.get("aud")
    if aud != host_id:
        raise Rejected("instruction is for another host (aud)", "AUTH_INVALID", jti)
    exp = _time_claim(claims, "exp", jti)
    iat = _time_claim(claims, "iat", jti)
    nbf = _time_claim(claims, "nbf", jti)
    if exp is None:
        raise Rejected("missing exp", jti=jti)
    if exp + leeway < now:
        raise Rejected("instruction expired (exp)", "EXPIRED", jti, status="expired")
    if iat is not None and iat - leeway > now:
        raise Rejected("iat in the future", jti=jti)
    if nbf is not None and nbf - leeway > now:
        raise Rejected(
            "instruction not valid yet (nbf)", NOT_YET_VALID, jti, final_until=exp if signed else None
        )
    kind = claims.get("kind")
    if kind not in KINDS:
        raise Rejected("unknown instruction kind", jti=jti)
    body = claims.get("body")
    if not isinstance(body, dict):
        raise Rejected("instruction body is not an object", jti=jti)
    kid = header.get("kid")
    return Instruction(
        jti=jti,
        aud=aud,
        iat=iat,
        exp=exp,
        kind=str(kind),
        body=body,
        kid=kid if isinstance(kid, str) else None,
        signed=signed,
        nbf=nbf,
    )


def _time_claim(claims: dict[str, Any], name: str, jti: str) -> int | None:
    """An optional time claim: None when absent, else integer seconds in 0..MAX_CLAIM_TIME."""
    if name not in claims:
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_CLAIM_TIME:
        what = "missing exp" if name == "exp" else f"{name} is not a time"
        raise Rejected(f"{what} (integer seconds from 1970 to 9999)", jti=jti)
    return value
