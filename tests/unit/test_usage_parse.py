"""sshd log parsing: messages as OpenSSH 9.2 writes them (the first samples were captured from a real
sshd on this machine), syslog file lines in both stamp formats, journal JSON, and the source choice."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from agent.daemon.usage import Source, choose_source
from agent.daemon.usage_parse import UsageHit, parse_journal_json, parse_sshd_message, parse_syslog_line

FP_ED = "SHA256:o6tOjwaQ04Kkn2YQuHGGGv4mPuuxvagTp3cv4XMQ1CM"
FP_RSA = "SHA256:QqLqKKFuR4SJcujBQ+977q1xdIaFNjjGr1DTdr1SV+c"
FP_CA = "SHA256:fFKBlh6cC8CKwoSvmsoz1uqtG9DljmM1DayTvPv0BZA"

# --- parse_sshd_message: accepted key logins -----------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        # captured from sshd 9.2 (LogLevel INFO)
        (
            f"Accepted publickey for uexp1 from 127.0.0.1 port 45410 ssh2: ED25519 {FP_ED}",
            UsageHit("uexp1", "127.0.0.1", 45410, "ED25519", FP_ED),
        ),
        (
            f"Accepted publickey for uexp1 from ::1 port 33244 ssh2: RSA {FP_RSA}",
            UsageHit("uexp1", "::1", 33244, "RSA", FP_RSA),
        ),
        (
            f"Accepted publickey for uexp1 from 127.0.0.1 port 45412 ssh2: ED25519-CERT {FP_ED} "
            f"ID my key id (x) (serial 7) CA ED25519 {FP_CA}",
            UsageHit(
                "uexp1", "127.0.0.1", 45412, "ED25519-CERT", FP_ED, "my key id (x)", FP_CA, cert_serial=7
            ),
        ),
        # the other key types sshkey_type() names
        (
            f"Accepted publickey for root from 2001:db8::17 port 22 ssh2: ECDSA {FP_RSA}",
            UsageHit("root", "2001:db8::17", 22, "ECDSA", FP_RSA),
        ),
        (
            f"Accepted publickey for svc.deploy-01 from 10.0.0.5 port 65535 ssh2: DSA {FP_ED}",
            UsageHit("svc.deploy-01", "10.0.0.5", 65535, "DSA", FP_ED),
        ),
        # FIDO keys: format_method_key appends ", <auth_method_info>"
        (
            f"Accepted publickey for alice from 203.0.113.9 port 52144 ssh2: ED25519-SK {FP_ED}, "
            "signature count = 12",
            UsageHit("alice", "203.0.113.9", 52144, "ED25519-SK", FP_ED),
        ),
        (
            f"Accepted publickey for alice from fe80::1%eth0 port 1 ssh2: ECDSA-SK {FP_ED}, "
            "signature count = 0",
            UsageHit("alice", "fe80::1%eth0", 1, "ECDSA-SK", FP_ED),
        ),
        # certificates: empty key id, key id that imitates the trailer, RSA CA, SK cert with method info
        (
            f"Accepted publickey for bob from 198.51.100.2 port 40000 ssh2: RSA-CERT {FP_RSA} "
            f"ID  (serial 0) CA RSA {FP_CA}",
            UsageHit("bob", "198.51.100.2", 40000, "RSA-CERT", FP_RSA, "", FP_CA, cert_serial=0),
        ),
        (
            f"Accepted publickey for bob from 198.51.100.2 port 40000 ssh2: ED25519-CERT {FP_ED} "
            f"ID evil (serial 1) CA RSA {FP_RSA} (serial 18446744073709551615) CA ED25519 {FP_CA}",
            UsageHit(
                "bob",
                "198.51.100.2",
                40000,
                "ED25519-CERT",
                FP_ED,
                f"evil (serial 1) CA RSA {FP_RSA}",
                FP_CA,
                cert_serial=18446744073709551615,
            ),
        ),
        (
            f"Accepted publickey for bob from 198.51.100.2 port 40000 ssh2: ECDSA-SK-CERT {FP_ED} "
            f"ID k (serial 3) CA ECDSA {FP_CA}, signature count = 4",
            UsageHit("bob", "198.51.100.2", 40000, "ECDSA-SK-CERT", FP_ED, "k", FP_CA, cert_serial=3),
        ),
        # FingerprintHash md5
        (
            "Accepted publickey for carol from 192.0.2.1 port 2222 ssh2: RSA "
            "MD5:16:27:ac:a5:76:28:2d:36:63:1b:56:4d:eb:df:a6:48",
            UsageHit(
                "carol", "192.0.2.1", 2222, "RSA", "MD5:16:27:ac:a5:76:28:2d:36:63:1b:56:4d:eb:df:a6:48"
            ),
        ),
        # AuthenticationMethods publickey,password: the key was proven, another factor follows
        (
            f"Partial publickey for dave from 192.0.2.7 port 5000 ssh2: ED25519 {FP_ED}",
            UsageHit("dave", "192.0.2.7", 5000, "ED25519", FP_ED, partial=True),
        ),
        # a trailing newline (a file line) is fine
        (
            f"Accepted publickey for uexp1 from 127.0.0.1 port 45410 ssh2: ED25519 {FP_ED}\n",
            UsageHit("uexp1", "127.0.0.1", 45410, "ED25519", FP_ED),
        ),
    ],
)
def test_accepted_key_logins(message: str, expected: UsageHit) -> None:
    assert parse_sshd_message(message) == expected


@pytest.mark.parametrize(
    "message",
    [
        # captured from sshd 9.2 around the logins above
        "Server listening on 127.0.0.1 port 22999.",
        "Invalid user nouser from 127.0.0.1 port 45428",
        "Connection closed by invalid user nouser 127.0.0.1 port 45428 [preauth]",
        "Connection closed by authenticating user uexp1 127.0.0.1 port 45444 [preauth]",
        "Postponed publickey for uexp1 from 127.0.0.1 port 46298 ssh2 [preauth]",
        "Disconnected from user uexp1 127.0.0.1 port 45410",
        # LogLevel VERBOSE: logged for the signature-less query too, and no user or address
        f"Accepted key ED25519 {FP_ED} found at /home/uexp1/.ssh/authorized_keys:1",
        f'Accepted certificate ID "my key id (x)" (serial 7) signed by CA ED25519 {FP_CA} '
        "found at /home/uexp1/.ssh/authorized_keys:3",
        f'Accepted certificate ID "my key id (x)" (serial 7) signed by ED25519 CA {FP_CA} '
        "via /etc/ssh/ca.pub",
        # failures, invalid users, other methods
        f"Failed publickey for alice from 203.0.113.9 port 52144 ssh2: ED25519 {FP_ED}",
        f"Failed publickey for invalid user alice from 203.0.113.9 port 52144 ssh2: ED25519 {FP_ED}",
        f"Accepted publickey for invalid user alice from 203.0.113.9 port 52144 ssh2: ED25519 {FP_ED}",
        "Accepted password for alice from 203.0.113.9 port 52144 ssh2",
        "Accepted keyboard-interactive/pam for alice from 203.0.113.9 port 52144 ssh2",
        f"Accepted hostbased for alice from 203.0.113.9 port 52144 ssh2: ED25519 {FP_ED}",
        # damaged or imitated shapes
        "Accepted publickey for alice from 203.0.113.9 port 52144 ssh2",
        "Accepted publickey for alice from 203.0.113.9 port 52144 ssh2: ED25519 (null)",
        f"Accepted publickey for alice from 203.0.113.9 port 99999 ssh2: ED25519 {FP_ED}",
        f"Accepted publickey for alice from 203.0.113.9 port x ssh2: ED25519 {FP_ED}",
        f"Accepted publickey for alice from 203.0.113.9 port 22 ssh2: ED25519 {FP_ED} trailing",
        f"Accepted publickey for alice from 203.0.113.9 port 22 ssh2: ED25519-CERT {FP_ED}",
        f"Accepted publickey for alice from 203.0.113.9 port 22 ssh2: ED25519-CERT {FP_ED} "
        f"ID x CA ED25519 {FP_CA}",
        f"Accepted publickey for alice from 203.0.113.9 port 22 ssh2: ed25519 {FP_ED}",
        "Accepted publickey for alice from 203.0.113.9 port 22 ssh2: ED25519 SHA256:not*base64",
        f"x Accepted publickey for alice from 203.0.113.9 port 22 ssh2: ED25519 {FP_ED}",
        f"Accepted publickey for alice from 203.0.113.9 port 22 ssh2: ED25519 {FP_ED}\nsecond line",
        "",
    ],
)
def test_other_messages_are_not_hits(message: str) -> None:
    assert parse_sshd_message(message) is None


# --- parse_syslog_line -----------------------------------------------------------------------------

MSG = f"Accepted publickey for alice from 203.0.113.9 port 52144 ssh2: ED25519 {FP_ED}"
CET = timezone(timedelta(hours=1))


def test_classic_syslog_line_takes_year_and_zone_from_the_caller() -> None:
    got = parse_syslog_line(f"Nov 27 00:01:02 web-1 sshd[123]: {MSG}\n", 2026, CET)
    assert got == (datetime(2026, 11, 27, 0, 1, 2, tzinfo=CET), MSG)


def test_classic_syslog_line_with_space_padded_day_and_no_pid() -> None:
    got = parse_syslog_line(f"Feb  3 23:59:59 host sshd: {MSG}", 2025, UTC)
    assert got == (datetime(2025, 2, 3, 23, 59, 59, tzinfo=UTC), MSG)


def test_classic_stamp_that_is_not_a_date_keeps_the_message() -> None:
    assert parse_syslog_line(f"Feb 29 10:00:00 host sshd[1]: {MSG}", 2025, UTC) == (None, MSG)
    assert parse_syslog_line(f"Feb 29 10:00:00 host sshd[1]: {MSG}", 2024, UTC) == (
        datetime(2024, 2, 29, 10, tzinfo=UTC),
        MSG,
    )


@pytest.mark.parametrize(
    ("line", "when"),
    [
        (
            f"2026-11-27T00:01:02.123456+00:00 web-1 sshd[123]: {MSG}",
            datetime(2026, 11, 27, 0, 1, 2, 123456, tzinfo=UTC),
        ),
        (
            f"2026-11-27T01:01:02.5+01:00 web-1 sshd-session[9]: {MSG}",
            datetime(2026, 11, 27, 0, 1, 2, 500000, tzinfo=UTC),
        ),
        (f"2026-11-27T00:01:02Z web-1 sshd[123]: {MSG}", datetime(2026, 11, 27, 0, 1, 2, tzinfo=UTC)),
        (
            f"2026-11-27T00:01:02.123456789-0500 web-1 sshd[123]: {MSG}",
            datetime(2026, 11, 27, 5, 1, 2, 123456, tzinfo=UTC),
        ),
    ],
)
def test_rfc3339_syslog_lines_carry_their_own_zone(line: str, when: datetime) -> None:
    got = parse_syslog_line(line, 1999, CET)  # year and zone are ignored
    assert got is not None
    assert got[0] == when
    assert got[1] == MSG


def test_rfc3339_stamp_that_is_not_a_date() -> None:
    assert parse_syslog_line(f"2026-02-30T00:00:00+00:00 h sshd[1]: {MSG}", 2026, UTC) == (None, MSG)


@pytest.mark.parametrize(
    "line",
    [
        f"Nov 27 00:01:02 web-1 cron[123]: {MSG}",
        f"Nov 27 00:01:02 web-1 sshd-keygen[123]: {MSG}",
        f"Nov 27 00:01:02 web-1 notsshd[123]: {MSG}",
        f"2026-11-27T00:01:02+00:00 web-1 sudo: {MSG}",
        f"Foo 27 00:01:02 web-1 sshd[123]: {MSG}",
        f"Nov 27 00:01 web-1 sshd[123]: {MSG}",
        MSG,  # a bare message is not a syslog line
        "",
    ],
)
def test_syslog_lines_of_other_processes_or_shapes(line: str) -> None:
    assert parse_syslog_line(line, 2026, UTC) is None


def test_syslog_line_message_goes_through_the_message_parser() -> None:
    got = parse_syslog_line(f"2026-11-27T00:01:02+00:00 h sshd[1]: {MSG}", 2026, UTC)
    assert got is not None
    assert parse_sshd_message(got[1]) == UsageHit("alice", "203.0.113.9", 52144, "ED25519", FP_ED)


# --- parse_journal_json ----------------------------------------------------------------------------


def _entry(**fields: object) -> bytes:
    base: dict[str, object] = {
        "__REALTIME_TIMESTAMP": "1795737662123456",
        "_COMM": "sshd",
        "_UID": "0",
        "SYSLOG_IDENTIFIER": "sshd",
        "MESSAGE": MSG,
        "_SYSTEMD_UNIT": "ssh.service",
    }
    base.update(fields)
    return (json.dumps({k: v for k, v in base.items() if v is not None}) + "\n").encode()


def test_journal_entry_time_is_realtime_microseconds() -> None:
    got = parse_journal_json(_entry())
    assert got == (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=1795737662123456), MSG)
    assert got[0].microsecond == 123456


def test_journal_message_as_byte_array() -> None:
    raw = MSG.encode() + b" \xff"  # not UTF-8: journalctl writes an array of byte values
    got = parse_journal_json(_entry(MESSAGE=list(raw)))
    assert got is not None
    assert got[1] == MSG + " \ufffd"
    assert parse_journal_json(_entry(MESSAGE=list(MSG.encode()))) == (got[0], MSG)


@pytest.mark.parametrize(
    "fields",
    [
        {"_COMM": "logger"},  # trusted field says it is not sshd, whatever the identifier claims
        {"_COMM": "sshd", "_UID": "1000"},  # a user's process renamed to "sshd"
        {"_COMM": None, "SYSLOG_IDENTIFIER": "cron"},
        {"_COMM": None, "SYSLOG_IDENTIFIER": None},
        {"MESSAGE": None},
        {"MESSAGE": [MSG, MSG]},  # repeated field
        {"MESSAGE": [300, 1]},
        {"__REALTIME_TIMESTAMP": None},
        {"__REALTIME_TIMESTAMP": "12x"},
        {"__REALTIME_TIMESTAMP": 1795737662123456},
        {"__REALTIME_TIMESTAMP": "9" * 30},
    ],
)
def test_journal_entries_not_from_sshd_or_damaged(fields: dict[str, object]) -> None:
    assert parse_journal_json(_entry(**fields)) is None


def test_journal_entry_without_trusted_fields_falls_back_to_identifier() -> None:
    got = parse_journal_json(_entry(_COMM=None, _UID=None, SYSLOG_IDENTIFIER="sshd-session"))
    assert got is not None and got[1] == MSG


@pytest.mark.parametrize("line", [b"", b"not json\n", b"[1,2]\n", b"\xff\xfe\n", b'"x"\n'])
def test_journal_garbage(line: bytes) -> None:
    assert parse_journal_json(line) is None


# --- choose_source --------------------------------------------------------------------------------

AUTH, SECURE = "/var/log/auth.log", "/var/log/secure"


def _choose(
    requested: Source = "auto",
    *,
    log_files: tuple[str, ...] = (AUTH, SECURE),
    existing: tuple[str, ...] = (),
    journalctl: bool = True,
    systemd: bool = False,
    has_ssh: bool = False,
) -> tuple[str, str | None]:
    asked: list[bool] = []

    def journal_has_ssh() -> bool:
        asked.append(True)
        return has_ssh

    choice = choose_source(
        requested,
        log_files=log_files,
        existing_files=frozenset(existing),
        journalctl_found=journalctl,
        systemd_running=systemd,
        journal_has_ssh=journal_has_ssh,
    )
    assert choice.reason
    if systemd or not journalctl or requested != "auto":
        assert not asked  # journalctl is only run when its answer decides something
    return choice.mode, choice.path


def test_auto_prefers_the_journal_under_systemd() -> None:
    assert _choose(systemd=True, existing=(AUTH,)) == ("journal", None)


def test_auto_uses_the_journal_without_systemd_when_it_has_ssh_entries() -> None:
    assert _choose(has_ssh=True, existing=(AUTH,)) == ("journal", None)
    assert _choose(has_ssh=False, existing=(AUTH,)) == ("file", AUTH)


def test_auto_falls_back_to_the_first_existing_file() -> None:
    assert _choose(journalctl=False, existing=(SECURE, AUTH)) == ("file", AUTH)
    assert _choose(journalctl=False, existing=(SECURE,)) == ("file", SECURE)


def test_auto_with_nothing_is_disabled_with_a_reason() -> None:
    choice = choose_source(
        "auto",
        log_files=(AUTH, SECURE),
        existing_files=frozenset(),
        journalctl_found=False,
        systemd_running=False,
        journal_has_ssh=lambda: False,
    )
    assert choice.mode == "disabled"
    assert "journalctl not found" in choice.reason and AUTH in choice.reason


def test_explicit_sources() -> None:
    assert _choose("journal", systemd=False) == ("journal", None)
    assert _choose("journal", journalctl=False) == ("disabled", None)
    assert _choose("file", systemd=True, existing=(SECURE,)) == ("file", SECURE)
    assert _choose("file", existing=()) == ("disabled", None)
    # a configured file that is not there yet is waited for
    assert _choose("file", log_files=("/srv/log/sshd.log",), existing=()) == ("file", "/srv/log/sshd.log")
