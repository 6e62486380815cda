"""authorized_keys options, exactly as sshd 9.2 parses them (`sshauthopt_parse`, auth-options.c).

The options grammar of an authorized_keys line (agent.ssh.authorized_keys splits lines and finds
the options string): flags tried in sshd's order as case-insensitive prefix matches, quoted values
with `\\"` as the only escape, sshd's limits on environment and permit entries, `tunnel`, and
`expiry-time` as misc.c parse_absolute_time reads it. An unknown option or a bad value is an
`OptionError` carrying sshd's reason phrase, never the option text.

Pure. The only host lookup is the services database for `permitopen="host:service"` (sshd's
a2port calls getservbyname), cached and side-effect free.
"""

from __future__ import annotations

import functools
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Final

__all__ = [
    "DEFAULT_OPTIONS",
    "TUNNEL_ANY",
    "KeyOptions",
    "OptionError",
    "expiry_time_utc",
    "latin1_text",
    "parse_options",
    "parse_options_latin1",
]

TUNNEL_ANY: Final = 0x7FFFFFFF  # tunnel="any" (SSH_TUNID_ANY)
_TUNNEL_MAX: Final = TUNNEL_ANY - 2  # SSH_TUNID_MAX
_MAX_ENV: Final = 1024
_MAX_PERMITS: Final = 4096
_NI_MAXHOST: Final = 1025


class OptionError(ValueError):
    """An options string sshd refuses. The message is sshd's reason phrase, never the option text."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class KeyOptions:
    """State after applying the options left to right (defaults: everything permitted)."""

    items: tuple[tuple[str, str | None], ...] = ()  # as written: lower-cased names, unquoted values
    restrict: bool = False
    pty: bool = True
    port_forwarding: bool = True
    agent_forwarding: bool = True
    x11_forwarding: bool = True
    user_rc: bool = True
    cert_authority: bool = False
    no_touch_required: bool = False
    verify_required: bool = False
    command: str | None = None
    from_: str | None = None
    principals: str | None = None
    environment: tuple[str, ...] = ()  # effective entries (first one of a name wins)
    permitopen: tuple[str, ...] = ()
    permitlisten: tuple[str, ...] = ()
    tunnel: int | None = None  # TUNNEL_ANY for "any"
    expiry_time: str | None = None  # the earliest expiry-time value as written

    def to_json(self) -> dict[str, object]:
        """{"from": "10.0.0.0/8", "no-pty": True, "environment": ["A=1"], ...} in written order."""
        out: dict[str, object] = {}
        for name, value in self.items:
            if name in _LIST_OPTIONS:
                entries = out.setdefault(name, [])
                assert isinstance(entries, list)
                entries.append(value)
            elif value is None:
                out[name] = True
            elif name == "expiry-time":
                out[name] = self.expiry_time
            else:
                out[name] = value
        return out

    def __repr__(self) -> str:  # option values may carry secrets (commands, environment)
        return f"KeyOptions(names={[name for name, _ in self.items]!r})"


_LIST_OPTIONS: Final = frozenset({"environment", "permitopen", "permitlisten"})
DEFAULT_OPTIONS: Final = KeyOptions()

# sshauthopt_parse tries the flags in this order, each as a case-insensitive *prefix* match.
_FLAGS: Final[tuple[tuple[str, bool], ...]] = (
    ("restrict", False),
    ("cert-authority", False),
    ("port-forwarding", True),
    ("agent-forwarding", True),
    ("x11-forwarding", True),
    ("touch-required", True),
    ("verify-required", True),
    ("pty", True),
    ("user-rc", True),
)
_VALUED: Final[tuple[str, ...]] = (
    "command",
    "principals",
    "from",
    "expiry-time",
    "environment",
    "permitopen",
    "permitlisten",
    "tunnel",
)
_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _lower(text: str) -> str:
    """strncasecmp folds ASCII only."""
    return text.translate(_ASCII_LOWER)


def latin1_text(latin: str) -> str:
    """Parsing works on bytes-as-latin-1; values are reported as UTF-8 text."""
    return latin.encode("latin-1").decode("utf-8", "replace")


def _dequote(s: str, i: int) -> tuple[str, int]:
    """opt_dequote: a double-quoted value; `\\"` is the only escape."""
    if i >= len(s) or s[i] != '"':
        raise OptionError("missing start quote")
    i += 1
    out: list[str] = []
    n = len(s)
    while i < n and s[i] != '"':
        if s[i] == "\\" and i + 1 < n and s[i + 1] == '"':
            i += 1
        out.append(s[i])
        i += 1
    if i >= n:
        raise OptionError("missing end quote")
    return "".join(out), i + 1


def _strtonum(text: str, high: int) -> int | None:
    """OpenBSD strtonum(text, 0, high) over strtoll base 10: blanks, a sign, digits, nothing after."""
    body = text.lstrip(" \t\n\v\f\r")
    digits = body[1:] if body[:1] in ("+", "-") else body
    if not digits or not digits.isascii() or not digits.isdigit():
        return None
    value = int(body)
    return value if 0 <= value <= high else None


@functools.lru_cache(maxsize=256)
def _service_port(name: str) -> int | None:
    try:
        return socket.getservbyname(name, "tcp")
    except (OSError, UnicodeError):
        return None


def _a2port(text: str) -> int:
    port = _strtonum(text, 65535)
    if port is not None:
        return port
    if "\0" in text or not text:
        return -1
    found = _service_port(text)
    return -1 if found is None else found


def _check_permit(value: str, allow_bare_port: bool) -> None:
    """handle_permit: host part via hpdelim2, port a number, a service name or "*"."""
    if allow_bare_port and ":" not in value:
        value = "*:" + value
    if value.startswith("["):
        close = value.find("]")
        if close == -1:
            raise OptionError("invalid permission hostname")
        delim = close + 1
    else:
        delim = min((x for x in (value.find(":"), value.find("/")) if x != -1), default=len(value))
    if delim >= len(value):
        raise OptionError("invalid permission port")  # host without a port
    if value[delim] not in ":/":
        raise OptionError("invalid permission hostname")
    if delim >= _NI_MAXHOST:  # characters are bytes here
        raise OptionError("invalid permission hostname")
    port = value[delim + 1 :]
    if port != "*" and _a2port(port) <= 0:
        raise OptionError("invalid permission port")


def _check_tunnel(value: str) -> int:
    if _lower(value) == "any":
        return TUNNEL_ANY
    tun = _strtonum(value, _TUNNEL_MAX)
    if tun is None:
        raise OptionError("invalid tun device")
    return tun


def _check_environment(value: str) -> str:
    eq = value.find("=")
    name = value[:eq] if eq != -1 else ""
    if eq <= 0 or not all(c.isascii() and (c.isalnum() or c == "_") for c in name):
        raise OptionError("invalid environment string")
    return name


# --- expiry-time (misc.c parse_absolute_time) ----------------------------------------------------------

_TIME_FIELDS: Final = {
    8: ((4, 0, 9999), (2, 1, 12), (2, 1, 31)),
    12: ((4, 0, 9999), (2, 1, 12), (2, 1, 31), (2, 0, 23), (2, 0, 59)),
    14: ((4, 0, 9999), (2, 1, 12), (2, 1, 31), (2, 0, 23), (2, 0, 59), (2, 0, 61)),
}


def _parse_absolute_time(value: str) -> tuple[datetime, bool]:
    """-> (naive wall time after mktime-style normalisation, is_utc). Raises OptionError."""
    body, is_utc = value, False
    if len(body) > 1 and _lower(body[-1:]) == "z":
        body, is_utc = body[:-1], True
    elif len(body) > 3 and _lower(body[-3:]) == "utc":
        body, is_utc = body[:-3], True
    layout = _TIME_FIELDS.get(len(body))
    if layout is None:
        raise OptionError("invalid expires time")
    numbers: list[int] = []
    pos = 0
    for width, low, high in layout:
        chunk = body[pos : pos + width]
        pos += width
        # glibc strptime's get_number: leading blanks, then digits (at most as many as fit the field)
        digits = chunk.lstrip(" \t\n\v\f\r")
        if not digits or not digits.isascii() or not digits.isdigit():
            raise OptionError("invalid expires time")
        number = int(digits)
        if not low <= number <= high:
            raise OptionError("invalid expires time")
        numbers.append(number)
    numbers += [0] * (6 - len(numbers))
    year, month, day, hour, minute, second = numbers
    if year < 1:
        raise OptionError("invalid expires time")
    # mktime/timegm normalise out-of-range days and leap seconds (Feb 31 -> Mar 3).
    wall = datetime(year, month, 1) + timedelta(days=day - 1, hours=hour, minutes=minute, seconds=second)
    return wall, is_utc


def expiry_time_utc(value: str, local_tz: tzinfo) -> datetime:
    """The instant an `expiry-time` value denotes, as sshd computes it.

    Without "Z"/"UTC" sshd calls mktime() on a zeroed struct tm, i.e. with tm_isdst = 0: the wall time
    is read as *standard* time even in summer. Raises OptionError for values sshd refuses.
    """
    wall, is_utc = _parse_absolute_time(value)
    if is_utc:
        instant = wall.replace(tzinfo=UTC)
    else:
        local = wall.replace(tzinfo=local_tz)
        offset = local.utcoffset() or timedelta(0)
        offset -= local.dst() or timedelta(0)
        instant = (wall - offset).replace(tzinfo=UTC)
    if instant.timestamp() <= 0:
        raise OptionError("invalid expires time")
    return instant


# --- the options grammar ---------------------------------------------------------------------------


def parse_options_latin1(s: str) -> KeyOptions:
    """sshauthopt_parse over a string whose characters are the line's bytes (latin-1)."""
    items: list[tuple[str, str | None]] = []
    state = {
        "restrict": False,
        "pty": True,
        "port_forwarding": True,
        "agent_forwarding": True,
        "x11_forwarding": True,
        "user_rc": True,
        "cert_authority": False,
        "no_touch_required": False,
        "verify_required": False,
    }
    single: dict[str, str] = {}
    environment: list[str] = []
    env_names: set[str] = set()
    permitopen: list[str] = []
    permitlisten: list[str] = []
    tunnel: int | None = None
    expiry: tuple[datetime, str] | None = None
    n = len(s)
    # Folding is per character, so slices of the folded string are folded slices: fold once.
    low = _lower(s)
    i = 0
    while i < n and s[i] not in " \t":
        matched = False
        for flag, negatable in _FLAGS:
            j = i
            negate = False
            if negatable and low.startswith("no-", j):
                j += 3
                negate = True
            if low.startswith(flag, j):
                end = j + len(flag)
                items.append((low[i:end], None))
                i = end
                matched = True
                _apply_flag(state, flag, not negate)
                break
        if not matched:
            for name in _VALUED:
                end = i + len(name)
                if not low.startswith(name, i) or s[end : end + 1] != "=":
                    continue
                if name in single:
                    raise OptionError(f'multiple "{name}" clauses')
                if name == "environment" and len(environment) > _MAX_ENV:
                    raise OptionError("too many environment strings")
                if name in ("permitopen", "permitlisten") and (
                    len(permitopen if name == "permitopen" else permitlisten) > _MAX_PERMITS
                ):
                    raise OptionError("too many permission directives")
                raw, i = _dequote(s, end + 1)
                value = latin1_text(raw)
                if name in ("command", "principals", "from"):
                    single[name] = value
                elif name == "expiry-time":
                    wall, _is_utc = _parse_absolute_time(raw)
                    if wall.year < 1970:  # mktime/timegm < 0 (exact for "Z", approximate for local)
                        raise OptionError("invalid expires time")
                    if expiry is None or wall < expiry[0]:
                        expiry = (wall, value)
                elif name == "environment":
                    env_name = _check_environment(raw)
                    if env_name not in env_names:  # the first setting of a name wins
                        env_names.add(env_name)
                        environment.append(value)
                elif name == "permitopen":
                    _check_permit(raw, allow_bare_port=False)
                    permitopen.append(value)
                elif name == "permitlisten":
                    _check_permit(raw, allow_bare_port=True)
                    permitlisten.append(value)
                else:  # tunnel
                    tunnel = _check_tunnel(raw)
                items.append((name, value))
                break
        if i >= n or s[i] in " \t":
            break
        if s[i] != ",":
            raise OptionError("unknown key option")
        i += 1
        if i >= n:
            raise OptionError("unexpected end-of-options")
    return KeyOptions(
        items=tuple(items),
        restrict=state["restrict"],
        pty=state["pty"],
        port_forwarding=state["port_forwarding"],
        agent_forwarding=state["agent_forwarding"],
        x11_forwarding=state["x11_forwarding"],
        user_rc=state["user_rc"],
        cert_authority=state["cert_authority"],
        no_touch_required=state["no_touch_required"],
        verify_required=state["verify_required"],
        command=single.get("command"),
        from_=single.get("from"),
        principals=single.get("principals"),
        environment=tuple(environment),
        permitopen=tuple(permitopen),
        permitlisten=tuple(permitlisten),
        tunnel=tunnel,
        expiry_time=None if expiry is None else expiry[1],
    )


def _apply_flag(state: dict[str, bool], flag: str, on: bool) -> None:
    if flag == "restrict":
        state["restrict"] = True
        for permission in ("pty", "port_forwarding", "agent_forwarding", "x11_forwarding", "user_rc"):
            state[permission] = False
    elif flag == "cert-authority":
        state["cert_authority"] = True
    elif flag == "touch-required":
        state["no_touch_required"] = not on
    elif flag == "verify-required":
        state["verify_required"] = on
    else:
        state[flag.replace("-", "_")] = on


def parse_options(text: str) -> KeyOptions:
    """Parse an authorized_keys options string (up to the first unquoted blank). Raises OptionError."""
    raw = text.encode("utf-8", "surrogateescape")
    nul = raw.find(b"\0")
    if nul != -1:
        raw = raw[:nul]
    return parse_options_latin1(raw.decode("latin-1"))
