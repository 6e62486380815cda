"""What a secret looks like, and masking it: the one place that decides.

Used by the logging shell (`agent.log`'s redacting filter masks every record) and by the state
store (`agent.store.state` refuses to persist a status that holds a secret). A bottom module:
it imports nothing of the agent, so any layer may ask "is this a secret?".

Two sources of truth:
* shapes: anything shaped like a JWT / compact JWS (three base64url segments starting `eyJ`),
  an `sk_agent_...` API key, or a PEM private key block;
* registered values (`register_secret`): the API key and tokens this process holds. Values
  shorter than 8 characters are ignored: they would mask ordinary words.

The registry is process-wide on purpose: a token registered by the control-plane client must be
masked in every log line and refused in every status, whichever thread writes them.
"""

from __future__ import annotations

import re
import threading

REDACTED = "[REDACTED]"
MIN_SECRET_LENGTH = 8

_SECRET_SHAPES = re.compile(
    r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"  # JWT / compact JWS
    r"|sk_agent_[A-Za-z0-9_-]+"  # agent API keys
    r"|-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
    re.DOTALL,
)

_secrets_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()
_secrets_pattern: re.Pattern[str] | None = None


def register_secret(value: str | None) -> None:
    """Treat `value` as a secret from now on. Values under 8 characters are ignored."""
    global _secrets, _secrets_pattern
    if not value or len(value) < MIN_SECRET_LENGTH:
        return
    with _secrets_lock:
        if value in _secrets:
            return
        _secrets = _secrets | {value}
        # Longest first, so a secret containing another is masked whole.
        ordered = sorted(_secrets, key=len, reverse=True)
        _secrets_pattern = re.compile("|".join(re.escape(s) for s in ordered))


def clear_secrets() -> None:
    """Forget registered secrets (tests; a replaced API key is better left registered)."""
    global _secrets, _secrets_pattern
    with _secrets_lock:
        _secrets = frozenset()
        _secrets_pattern = None


def looks_like_secret(text: str) -> bool:
    """True if `text` contains a registered secret or a JWT / API-key / private-key shape."""
    pattern = _secrets_pattern
    return bool(_SECRET_SHAPES.search(text) or (pattern is not None and pattern.search(text)))


def redact(text: str) -> str:
    """`text` with every registered secret and every secret shape replaced by REDACTED."""
    pattern = _secrets_pattern
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    return _SECRET_SHAPES.sub(REDACTED, text)
