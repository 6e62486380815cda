"""HS256 access/refresh JWTs (claims sub/typ/exp/iat/jti plus akid = the API key they came from).

The clock is passed in: expiry is checked against `now`, not the wall clock PyJWT would read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import jwt

from .values import new_id

TokenType = Literal["access", "refresh"]


class TokenError(Exception):
    """reason: "invalid", "expired" or "wrong_type". Never carries the token."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class TokenClaims:
    sub: str
    typ: str
    jti: str
    iat: int
    exp: int
    akid: str


class TokenIssuer:
    def __init__(self, secret: bytes, *, access_ttl: int, refresh_ttl: int) -> None:
        self._secret = secret
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl

    def issue(self, typ: TokenType, sub: str, akid: str, now: float) -> tuple[str, TokenClaims]:
        ttl = self.access_ttl if typ == "access" else self.refresh_ttl
        claims = TokenClaims(
            sub=sub, typ=typ, jti=new_id("tok", 12), iat=int(now), exp=int(now) + ttl, akid=akid
        )
        token = jwt.encode(claims.__dict__, self._secret, algorithm="HS256")
        return token, claims

    def decode(self, token: str, typ: TokenType, now: float) -> TokenClaims:
        try:
            raw = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                options={"verify_exp": False, "require": ["sub", "typ", "exp", "iat", "jti", "akid"]},
            )
        except jwt.PyJWTError:
            raise TokenError("invalid") from None
        try:
            claims = TokenClaims(
                sub=str(raw["sub"]),
                typ=str(raw["typ"]),
                jti=str(raw["jti"]),
                iat=int(raw["iat"]),
                exp=int(raw["exp"]),
                akid=str(raw["akid"]),
            )
        except (TypeError, ValueError):
            raise TokenError("invalid") from None
        if claims.typ != typ:
            raise TokenError("wrong_type")
        if now >= claims.exp:
            raise TokenError("expired")
        return claims
