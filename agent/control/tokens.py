"""Token lifecycle: API key -> access + refresh token, refresh before expiry, re-authenticate.

The TokenManager owns the secrets (API key, access and refresh tokens) and never exposes them in
repr/str or logs. It talks to the server only through the injected ``post`` callable (the
ApiClient's unauthenticated request path, which does its own retries), so it is testable with a
fake. One lock serialises every token exchange: a thread that finds the token stale takes the lock,
checks again (another thread may have refreshed meanwhile) and only then calls the server, so
concurrent callers share one refresh.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import jwt

from agent.control.answers import credential, number_in
from agent.control.errors import AUTH_FORBIDDEN, AUTH_INVALID, SERVER_ERROR, ApiError

log = logging.getLogger("sshklm.control")

AuthState = Literal["unauthenticated", "ok", "auth_invalid"]
PostFn = Callable[[str, Mapping[str, Any]], Mapping[str, Any]]

TOKEN_PATH = "/v1/auth/token"  # noqa: S105 - a URL path, not a secret
REFRESH_PATH = "/v1/auth/refresh"
REFRESH_MARGIN_S = 60.0
AUTH_INVALID_RETRY_S = 15 * 60.0
DEFAULT_ACCESS_LIFETIME_S = 900.0  # the contract's access token lifetime, when the answer's is not usable
MAX_LIFETIME_S = 366 * 86_400.0  # a lifetime past a year is not believed (the refresh token's is 7 days)


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim (epoch seconds) of a JWT, read without verifying it.

    Only used to schedule a refresh: the signature is the server's business. None when the token
    is not a JWT or carries no ``exp`` that is a time (a finite number up to year 9999).
    """
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except (jwt.PyJWTError, ValueError, RecursionError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if not number_in(exp, 0, 253_402_300_799):
        return None
    return float(exp)  # type: ignore[arg-type]


def _lifetime(value: object) -> float | None:
    """An `expires_in` from the server: seconds in (0, a year], else None (not believed)."""
    if not number_in(value, 0, MAX_LIFETIME_S) or value == 0:
        return None
    return float(value)  # type: ignore[arg-type]


@dataclass(frozen=True)
class TokenSet:
    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    access_expires_at: float  # epoch seconds
    refresh_expires_at: float | None
    obtained_at: float = 0.0  # epoch seconds, for the token's lifetime


def token_set_from_response(
    body: Mapping[str, Any], now: float, previous_refresh: str | None = None
) -> TokenSet:
    """Parse a /v1/auth/token or /v1/auth/refresh answer (pure).

    The access token's own ``exp`` wins over ``expires_in`` (it is what the server enforces).
    A refresh answer without a refresh token keeps the previous one; with one, the newest wins.
    A token that cannot go into an Authorization header (not visible ASCII, blanks, line breaks)
    fails the answer; a lifetime that is not a number of seconds up to a year is not believed.
    """
    access = credential(body.get("access_token"))
    if access is None:
        raise ApiError(SERVER_ERROR, "token answer has no usable access_token")
    refresh = body.get("refresh_token")
    if refresh is not None and credential(refresh) is None:
        raise ApiError(SERVER_ERROR, "token answer has an unusable refresh_token")
    access_exp = jwt_expiry(access) or now + (_lifetime(body.get("expires_in")) or DEFAULT_ACCESS_LIFETIME_S)
    refresh_token = credential(refresh) or previous_refresh
    refresh_exp: float | None = None
    if isinstance(refresh_token, str):
        refresh_exp = jwt_expiry(refresh_token)
        refresh_in = _lifetime(body.get("refresh_expires_in"))
        if refresh_exp is None and refresh_in is not None:
            refresh_exp = now + refresh_in
    return TokenSet(access, refresh_token, access_exp, refresh_exp, now)


def stale_at(tokens: TokenSet, margin: float, early: float = 0.0) -> float:
    """When the access token should be renewed (pure): about `margin` before it expires, plus `early`
    (a random spread, see `renewal_spread`), but never more than half its lifetime early, so a
    short-lived token (tests, a strict server) is not renewed on every call."""
    lifetime = max(tokens.access_expires_at - tokens.obtained_at, 0.0)
    return tokens.access_expires_at - min(margin + early, lifetime / 2)


def renewal_spread(tokens: TokenSet, fraction: float, rng: random.Random) -> float:
    """How much earlier than `margin` this token is renewed: uniform in [0, fraction x lifetime].
    A fleet that obtained its tokens together (a mass restart, the end of an outage) would otherwise
    renew them together every lifetime, a burst the fleet simulator showed fourteen minutes after
    each such event; a fresh draw at each renewal spreads them out."""
    lifetime = max(tokens.access_expires_at - tokens.obtained_at, 0.0)
    return rng.uniform(0.0, fraction * lifetime) if fraction > 0 else 0.0


class TokenManager:
    def __init__(
        self,
        api_key: str | None,
        post: PostFn,
        *,
        clock: Callable[[], float],
        refresh_margin: float = REFRESH_MARGIN_S,
        auth_invalid_retry: float = AUTH_INVALID_RETRY_S,
        on_auth_invalid: Callable[[float], None] | None = None,
        renewal_spread: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        """``on_auth_invalid(until)`` hears of each refusal of the API key, with the wall time the
        pause ends (the daemon keeps it across restarts; see ``hold``)."""
        self._api_key = api_key
        self._on_auth_invalid = on_auth_invalid
        self._post = post
        self._clock = clock
        self._refresh_margin = refresh_margin
        self._auth_invalid_retry = auth_invalid_retry
        self._tokens: TokenSet | None = None
        self._spread = renewal_spread  # a fraction of the token's lifetime (renewal_spread())
        self._rng = rng or random.Random()
        self._early = 0.0  # the current token's draw
        self._state: AuthState = "unauthenticated"
        self._auth_invalid_until = 0.0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TokenManager(state={self._state!r}, expires_at={self.token_expires_at!r})"

    @property
    def state(self) -> AuthState:
        return self._state

    @property
    def token_expires_at(self) -> datetime | None:
        tokens = self._tokens
        return None if tokens is None else datetime.fromtimestamp(tokens.access_expires_at, UTC)

    @property
    def stale_at(self) -> float | None:
        """When the current access token is due for renewal (wall time); None without one."""
        tokens = self._tokens
        return None if tokens is None else stale_at(tokens, self._refresh_margin, self._early)

    def secrets(self) -> tuple[str, ...]:
        """Every secret currently held, so error messages from the server can be scrubbed of them."""
        tokens = self._tokens
        found = [self._api_key] if self._api_key else []
        if tokens is not None:
            found.append(tokens.access_token)
            if tokens.refresh_token:
                found.append(tokens.refresh_token)
        return tuple(found)

    def set_api_key(self, api_key: str) -> None:
        """A new key (re-enrollment): forget tokens and any auth_invalid pause from the old one."""
        with self._lock:
            self._api_key = api_key
            self._tokens = None
            self._state = "unauthenticated"
            self._auth_invalid_until = 0.0

    def hold(self, until: float) -> None:
        """Resume a pause a previous process began: the key was refused and ``until`` (wall time)
        has not come; no authentication before it (a restart must not retry the key at once)."""
        with self._lock:
            if until > self._clock():
                self._tokens = None
                self._state = "auth_invalid"
                self._auth_invalid_until = until

    def access_token(self) -> str:
        """A valid access token, exchanging tokens with the server only when needed."""
        tokens = self._tokens
        if tokens is not None and not self._stale(tokens):
            return tokens.access_token
        with self._lock:
            tokens = self._tokens  # someone may have refreshed while we waited for the lock
            if tokens is not None and not self._stale(tokens):
                return tokens.access_token
            return self._renew(tokens).access_token

    def reject(self, access_token: str) -> str:
        """The server answered 401 to ``access_token``: renew it once (shared) and return the new one."""
        with self._lock:
            tokens = self._tokens
            if tokens is not None and tokens.access_token != access_token:
                return tokens.access_token  # another caller already replaced the rejected token
            return self._renew(tokens).access_token

    # -- internals (called with the lock held) --

    def _stale(self, tokens: TokenSet) -> bool:
        return self._clock() >= stale_at(tokens, self._refresh_margin, self._early)

    def _renew(self, tokens: TokenSet | None) -> TokenSet:
        if tokens is not None and tokens.refresh_token and self._refresh_usable(tokens):
            try:
                return self._exchange(REFRESH_PATH, {"refresh_token": tokens.refresh_token}, tokens)
            except ApiError as err:
                if err.code not in (AUTH_INVALID, AUTH_FORBIDDEN):
                    raise
                log.info("refresh token refused (%s); re-authenticating with the API key", err.code)
        return self._authenticate()

    def _refresh_usable(self, tokens: TokenSet) -> bool:
        return tokens.refresh_expires_at is None or self._clock() < tokens.refresh_expires_at

    def _authenticate(self) -> TokenSet:
        now = self._clock()
        if self._state == "auth_invalid" and now < self._auth_invalid_until:
            raise ApiError(
                AUTH_INVALID,
                "API key was refused; not retrying before the pause ends",
                {"retry_after": round(self._auth_invalid_until - now, 1)},
            )
        if not self._api_key:
            raise ApiError(AUTH_INVALID, "no API key configured (enroll first)")
        try:
            return self._exchange(TOKEN_PATH, {"api_key": self._api_key}, None)
        except ApiError as err:
            if err.code in (AUTH_INVALID, AUTH_FORBIDDEN):
                self._tokens = None
                self._state = "auth_invalid"
                self._auth_invalid_until = self._clock() + self._auth_invalid_retry
                log.error(
                    "the control plane refused this host's API key (%s); authentication paused for %d s "
                    "- re-enroll or install a new key",
                    err.code,
                    int(self._auth_invalid_retry),
                )
                if self._on_auth_invalid is not None:
                    self._on_auth_invalid(self._auth_invalid_until)
            raise

    def _exchange(self, path: str, body: Mapping[str, Any], previous: TokenSet | None) -> TokenSet:
        answer = self._post(path, body)
        previous_refresh = previous.refresh_token if previous is not None else None
        tokens = token_set_from_response(answer, self._clock(), previous_refresh)
        self._early = renewal_spread(tokens, self._spread, self._rng)
        self._tokens = tokens
        self._state = "ok"
        log.debug("obtained access token via %s, expires %s", path, self.token_expires_at)
        return tokens
