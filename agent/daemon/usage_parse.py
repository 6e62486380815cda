"""Pure parsers for sshd's own log: which key logged in, as whom, from where, when.

Only sshd's final verdict counts: ``auth_log()`` in OpenSSH's auth.c writes

    Accepted publickey for USER from ADDR port N ssh2: TYPE FP[, METHINFO]
    Accepted publickey for USER from ADDR port N ssh2: TYPE-CERT FP ID KEY_ID (serial S) CA CATYPE CAFP[, ...]

(``format_method_key``; verified against a real OpenSSH 9.2 sshd). FP is the *plain* key's fingerprint
(for a certificate too), so it matches ``PublicKey.fingerprint``. METHINFO is ``signature count = N`` for
FIDO keys. ``Partial publickey ...`` (same shape) is logged when the key was proven but
``AuthenticationMethods`` asks for another factor: the key *was* used, so it counts, flagged ``partial``.

Deliberately ignored:
- ``Accepted key TYPE FP found at FILE:LINE`` and ``Accepted certificate ID "…" (serial S) signed by …``
  (LogLevel VERBOSE): logged when a key *matches* — also for the signature-less query, which anyone
  holding only the public key (or public certificate) can trigger — and they carry no user or address.
- ``Failed``/``Postponed`` lines, ``invalid user`` lines, password/keyboard-interactive/hostbased logins.

No I/O, no clock: callers pass the year and time zone a classic syslog stamp lacks.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo

SSHD_PROCESSES = frozenset({"sshd", "sshd-session"})

# sshkey_type(): RSA, DSA, ECDSA, ED25519, ECDSA-SK, ED25519-SK, XMSS, each with "-CERT".
_KEY_TYPE = r"[A-Z][A-Z0-9]*(?:-SK)?(?:-CERT)?"
# SHA256 (the default FingerprintHash) or MD5; "(null)" when sshd failed to fingerprint.
_FINGERPRINT = r"SHA256:[A-Za-z0-9+/]+|MD5(?::[0-9a-f]{2}){16}"

_ACCEPTED = re.compile(
    r"(?P<verdict>Accepted|Partial) publickey for (?P<user>\S+) from (?P<address>\S+) port (?P<port>\d{1,5}) "
    r"ssh2: (?P<key_type>" + _KEY_TYPE + r") (?P<fingerprint>" + _FINGERPRINT + r")(?P<rest>.*)"
)
# The key id is free text (spaces, parentheses): the greedy group takes everything up to the LAST
# " (serial N) CA TYPE FP", which sshd writes after it.
_CERT_REST = re.compile(
    r" ID (?P<cert_id>.*) \(serial (?P<serial>\d+)\) CA (?P<ca_type>" + _KEY_TYPE + r") "
    r"(?P<ca_fingerprint>" + _FINGERPRINT + r")(?:, .*)?"
)
_PLAIN_REST = re.compile(r"(?:, .*)?")


@dataclass(frozen=True)
class UsageHit:
    user: str
    address: str  # as sshd prints it: IPv4, IPv6 (no brackets) or "UNKNOWN"
    port: int
    key_type: str  # sshd's label: "ED25519", "RSA", "ED25519-CERT", ...
    fingerprint: str  # of the plain key, as ``ssh-keygen -l`` prints it
    cert_id: str | None = None
    ca_fingerprint: str | None = None
    partial: bool = False  # proven, but another authentication method was still required
    cert_serial: int | None = None  # a certificate login: the certificate's serial


def parse_sshd_message(message: str) -> UsageHit | None:
    """One sshd log message (no syslog prefix) -> the key login it records, or None."""
    match = _ACCEPTED.fullmatch(message.rstrip("\r\n"))
    if match is None:
        return None
    port = int(match["port"])
    if port > 65535:
        return None
    key_type = match["key_type"]
    cert_id: str | None = None
    ca_fingerprint: str | None = None
    serial: int | None = None
    if key_type.endswith("-CERT"):
        cert = _CERT_REST.fullmatch(match["rest"])
        if cert is None:
            return None
        cert_id, ca_fingerprint, serial = cert["cert_id"], cert["ca_fingerprint"], int(cert["serial"])
    elif _PLAIN_REST.fullmatch(match["rest"]) is None:
        return None
    return UsageHit(
        user=match["user"],
        address=match["address"],
        port=port,
        key_type=key_type,
        fingerprint=match["fingerprint"],
        cert_id=cert_id,
        ca_fingerprint=ca_fingerprint,
        partial=match["verdict"] == "Partial",
        cert_serial=serial,
    )


# --- syslog files -----------------------------------------------------------------------------------

_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTHS = {name: number for number, name in enumerate(_MONTH_NAMES, start=1)}
# "<TAG>[pid]: msg" or "<TAG>: msg"; the message starts after exactly one space.
_TAG = r"(?P<tag>[^\s\[\]:]+)(?:\[\d+\])?: ?(?P<message>.*)"
_CLASSIC = re.compile(
    r"(?P<mon>[A-Z][a-z]{2}) (?P<day>[ \d]\d) (?P<h>\d\d):(?P<m>\d\d):(?P<s>\d\d) (?P<host>\S+) " + _TAG,
    re.DOTALL,
)
_RFC3339 = re.compile(
    r"(?P<base>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(?P<fraction>\d{1,9}))?(?P<offset>Z|z|[+-]\d\d:?\d\d) "
    r"(?P<host>\S+) " + _TAG,
    re.DOTALL,
)


def _parse_rfc3339(base: str, fraction: str | None, offset: str) -> datetime | None:
    # fromisoformat takes at most six fraction digits; rsyslog may write fewer or (in theory) more.
    micros = (fraction or "").ljust(6, "0")[:6]
    offset = "+00:00" if offset in ("Z", "z") else offset
    try:
        return datetime.fromisoformat(f"{base}.{micros}{offset}")
    except ValueError:
        return None


def parse_syslog_line(line: str, year: int, tz: tzinfo) -> tuple[datetime | None, str] | None:
    """A syslog file line written by sshd -> (time, message); None for other processes or other shapes.

    Classic ``Mon dd HH:MM:SS host tag[pid]: msg`` has no year or zone: ``year`` and ``tz`` supply them
    (a caller reading in January re-parses a stamp that lands in the future with the year before).
    The RFC 3339 stamps of Debian 12's rsyslog carry their own offset and ignore both.
    Time is None when the stamp has the right shape but is not a date (``Feb 30``).
    Note: a file cannot say who wrote a line (``logger -t sshd`` can imitate sshd); the journal can.
    """
    line = line.rstrip("\r\n")
    when: datetime | None
    classic = _CLASSIC.fullmatch(line)
    if classic is not None:
        match = classic
        month = _MONTHS.get(classic["mon"])
        if month is None:
            return None
        try:
            when = datetime(
                year,
                month,
                int(classic["day"]),
                int(classic["h"]),
                int(classic["m"]),
                int(classic["s"]),
                tzinfo=tz,
            )
        except ValueError:
            when = None
    else:
        rfc = _RFC3339.fullmatch(line)
        if rfc is None:
            return None
        match = rfc
        when = _parse_rfc3339(rfc["base"], rfc["fraction"], rfc["offset"])
    if match["tag"] not in SSHD_PROCESSES:
        return None
    return when, match["message"]


# --- journal (journalctl -o json) ---------------------------------------------------------------------


def _journal_text(value: object) -> str | None:
    """A journal JSON field value -> text. journalctl writes a string, an array of byte values when the
    field is not valid UTF-8 (or has control characters), an array of values when the field is repeated,
    and null when it is larger than its field size limit."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(b, int) and 0 <= b <= 255 for b in value):
        return bytes(value).decode("utf-8", errors="replace")
    return None  # null, repeated field (ambiguous: not sshd's doing), anything else


def parse_journal_json(line: bytes) -> tuple[datetime, str] | None:
    """One ``journalctl -o json`` line -> (time, message) when sshd logged it, else None.

    The process is judged by the trusted fields journald itself records (``_COMM``, ``_UID``) when
    present — ``SYSLOG_IDENTIFIER`` is chosen by the sender — and only by the identifier otherwise.
    A root sshd writes the ``Accepted`` lines (the privileged monitor), so a non-root sender is refused.
    """
    try:
        entry = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(entry, dict):
        return None
    comm = _journal_text(entry.get("_COMM"))
    if comm is not None:
        if comm not in SSHD_PROCESSES:
            return None
    elif _journal_text(entry.get("SYSLOG_IDENTIFIER")) not in SSHD_PROCESSES:
        return None
    uid = entry.get("_UID")
    if uid is not None and _journal_text(uid) != "0":
        return None
    message = _journal_text(entry.get("MESSAGE"))
    stamp = entry.get("__REALTIME_TIMESTAMP")
    if message is None or not isinstance(stamp, str) or not stamp.isdigit():
        return None
    micros = int(stamp)
    try:
        when = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)
    except OverflowError:
        return None
    return when, message
