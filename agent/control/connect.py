"""From configuration to a client of the control plane: which URLs may be used, the one way to build
the HTTP client, and the host's credentials (used by the daemon's server link and by `enroll`)."""

from __future__ import annotations

import hashlib
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from agent.config import Config
from agent.control.backoff import BackoffPolicy, RequestClass
from agent.control.client import ApiClient, Timeouts
from agent.control.enroll import load_credentials, read_api_key
from agent.control.retry import Attempt

PLAIN_HTTP_REFUSED = "server.url must be https (plain http only to loopback with allow_plain_http_loopback)"
# Access tokens are renewed up to this fraction of their lifetime earlier than a minute before expiry,
# drawn afresh for each token: a fleet's renewals do not stay in step (agent/control/tokens.py).
TOKEN_RENEWAL_SPREAD = 0.2
NOT_ENROLLED = "not enrolled: run `sshklm-agent enroll --server URL --token-file FILE`"


def plain_http_allowed(url: str, allow_loopback: bool) -> bool:
    """True for https, and for http to a loopback address when the configuration allows it."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return True
    if not allow_loopback or parts.scheme != "http":
        return False
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_client(
    config: Config,
    url: str,
    api_key: str | None = None,
    *,
    sleep: Callable[[float], None] = time.sleep,
    on_auth_invalid: Callable[[float], None] | None = None,
    on_attempt: Callable[[RequestClass, Attempt], None] | None = None,
) -> ApiClient:
    """The one way the agent builds its HTTP client from configuration (daemon and `enroll`).
    `sleep` waits between retries (the daemon's can be interrupted when it stops);
    `on_auth_invalid(until)` hears when the server refuses the API key; `on_attempt(class,
    attempt)` hears every attempt's outcome (the daemon's metrics count them)."""
    s = config.server
    return ApiClient(
        url,
        api_key=api_key,
        backoff=BackoffPolicy(max_attempts=s.max_attempts),
        sleep=sleep,
        on_auth_invalid=on_auth_invalid,
        timeouts=Timeouts(
            connect=s.connect_timeout_s,
            read=s.read_timeout_s,
            write=s.read_timeout_s,
            pool=s.connect_timeout_s,
            total=s.deadline_s,
        ),
        ca_file=s.ca_file or None,
        max_connections=s.max_connections,
        token_renewal_spread=TOKEN_RENEWAL_SPREAD,
        on_attempt=on_attempt,
    )


@dataclass(frozen=True)
class HostCredentials:
    host_id: str
    api_key: str = field(repr=False)


def host_credentials(config: Config) -> HostCredentials | None:
    """`server.api_key_file` + `server.host_id` when both are configured, else what `enroll`
    stored in the state directory; None when neither. OSError/ValueError: unreadable files."""
    cfg = config.server
    if cfg.api_key_file and cfg.host_id:
        return HostCredentials(cfg.host_id, read_api_key(cfg.api_key_file))
    stored = load_credentials(config.state.dir)
    if stored is None or not stored.api_key or not stored.host_id:
        return None
    return HostCredentials(stored.host_id, stored.api_key)


def api_key_id(api_key: str) -> str:
    """Names a key in the state store without storing it: a truncated SHA-256 (the key is a
    high-entropy secret; 64 bits of its digest reveal nothing usable)."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()[:16]
