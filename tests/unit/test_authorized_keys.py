"""agent.ssh.authorized_keys: lines and options as sshd 9.2 reads them."""

from __future__ import annotations

import base64
import struct
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.ssh.authorized_keys import (
    DEFAULT_OPTIONS,
    TUNNEL_ANY,
    OptionError,
    expiry_time_utc,
    parse_authorized_keys,
    parse_authorized_line,
    parse_options,
    split_lines,
)


def s(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


ED_BLOB = s(b"ssh-ed25519") + s(bytes(range(32)))
KEY = "ssh-ed25519 " + base64.b64encode(ED_BLOB).decode()


def line(text: str | bytes, number: int = 1):  # type: ignore[no-untyped-def]
    return parse_authorized_line(text.encode() if isinstance(text, str) else text, number)


# --- lines ----------------------------------------------------------------------------------------------


def test_split_lines_keeps_exact_bytes_and_endings() -> None:
    data = b"a\r\nb\n\nc\rd"
    assert split_lines(data) == [b"a\r\n", b"b\n", b"\n", b"c\rd"]
    assert b"".join(split_lines(data)) == data
    assert split_lines(b"") == []
    assert split_lines(b"x\n") == [b"x\n"]


def test_kinds_numbers_and_raw() -> None:
    data = f"# comment\n\n   \t\n  {KEY} alice\r\nnot a key\n".encode()
    lines = parse_authorized_keys(data)
    assert [(x.number, x.kind) for x in lines] == [
        (1, "comment"),
        (2, "blank"),
        (3, "blank"),
        (4, "key"),
        (5, "invalid"),
    ]
    assert lines[3].raw == f"  {KEY} alice\r\n".encode()
    assert lines[3].comment == "alice" and lines[3].label == "ssh-ed25519"
    assert lines[3].options is DEFAULT_OPTIONS and lines[3].options_text is None
    assert lines[4].error == "unknown key type" and lines[4].key is None
    assert "not a key" not in repr(lines[4])


def test_crlf_without_comment() -> None:
    parsed = line(KEY + "\r\n")
    assert parsed.kind == "key" and parsed.comment == ""


def test_hash_after_blanks_is_a_comment_line_but_key_comments_may_start_with_hash() -> None:
    assert line("  # " + KEY).kind == "comment"
    parsed = line(KEY + " #not-a-line-comment")
    assert parsed.kind == "key" and parsed.comment == "#not-a-line-comment"


def test_200k_character_line() -> None:
    parsed = line(KEY + " " + "c" * 200_000)
    assert parsed.kind == "key" and len(parsed.comment) == 200_000


def test_non_utf8_and_nul_bytes() -> None:
    parsed = line(KEY.encode() + b" caf\xe9 \xff")
    assert parsed.kind == "key" and parsed.comment == "caf\ufffd \ufffd"
    truncated = line(KEY.encode() + b" before\0after")
    assert truncated.kind == "key" and truncated.comment == "before"
    assert line(b"\0" + KEY.encode()).kind == "blank"  # sshd sees an empty C string


def test_options_then_key_and_comment() -> None:
    parsed = line(f'from="10.0.0.0/8",no-pty {KEY} ops@host')
    assert parsed.kind == "key" and parsed.comment == "ops@host"
    assert parsed.options_text == 'from="10.0.0.0/8",no-pty'
    assert parsed.options is not None and parsed.options.from_ == "10.0.0.0/8" and not parsed.options.pty
    assert parsed.options.to_json() == {"from": "10.0.0.0/8", "no-pty": True}


def test_quoted_blanks_and_escaped_quotes_in_options() -> None:
    parsed = line(f'command="echo \\"a b\\"; ls",environment="A=1 2" {KEY} c')
    assert parsed.options is not None
    assert parsed.options.command == 'echo "a b"; ls'
    assert parsed.options.environment == ("A=1 2",)


def test_bad_options_keep_the_key_but_report_sshds_reason() -> None:
    parsed = line(f"no-pty,bogus {KEY} c")
    assert parsed.kind == "key" and parsed.options is None and parsed.options_error == "unknown key option"
    assert parsed.key is not None and parsed.comment == "c"


def test_unterminated_quote_is_invalid() -> None:
    parsed = line(f'command="echo {KEY}')
    assert parsed.kind == "invalid" and parsed.error == "unterminated quote in options"


def test_options_with_two_blanks_before_key_like_sshd() -> None:
    parsed = line(f"no-pty \t {KEY}")
    assert parsed.kind == "key" and parsed.options is not None and not parsed.options.pty


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("ssh-ed25519 " + base64.b64encode(ED_BLOB).decode()[:-1], "invalid base64"),
        ("ssh-rsa " + base64.b64encode(ED_BLOB).decode(), "key type mismatch"),
        ("ssh-ed25519 " + base64.b64encode(ED_BLOB[:-2]).decode(), "truncated key data"),
        ("ssh-ed25519 " + base64.b64encode(ED_BLOB + b"\0").decode(), "trailing bytes after key"),
        ("no-pty ssh-ed25519", "missing key data"),
        ("ssh-ed25519", "missing key data"),
    ],
)
def test_invalid_line_reasons(text: str, reason: str) -> None:
    parsed = line(text)
    assert (parsed.kind, parsed.error) == ("invalid", reason)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    parsed = parse_authorized_line(data, 7)
    assert parsed.number == 7 and parsed.raw == data
    assert parsed.kind in ("blank", "comment", "key", "invalid")
    if parsed.kind == "invalid":
        assert parsed.error


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('ab=," \\\tnopty-,')), max_size=40))
def test_never_raises_on_option_like_prefixes(prefix: str) -> None:
    parsed = line(prefix + " " + KEY)
    assert parsed.kind in ("key", "invalid", "blank", "comment")


# --- options ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "pty", "restrict"),
    [
        ("restrict", False, True),
        ("restrict,pty", True, True),
        ("pty,restrict", False, True),
        ("no-pty", False, False),
        ("no-pty,pty", True, False),
        ("PTY,No-Pty", False, False),
    ],
)
def test_flag_order(text: str, pty: bool, restrict: bool) -> None:
    options = parse_options(text)
    assert (options.pty, options.restrict) == (pty, restrict)


def test_restrict_clears_every_permission_and_flags_reenable() -> None:
    options = parse_options("restrict,port-forwarding,X11-Forwarding")
    assert (options.port_forwarding, options.x11_forwarding) == (True, True)
    assert (options.agent_forwarding, options.user_rc, options.pty) == (False, False, False)
    negated = parse_options("no-agent-forwarding,no-port-forwarding,no-x11-forwarding,no-user-rc")
    assert not (
        negated.agent_forwarding or negated.port_forwarding or negated.x11_forwarding or negated.user_rc
    )
    enabled = parse_options("agent-forwarding,user-rc")
    assert enabled.agent_forwarding and enabled.user_rc


def test_fido_and_ca_flags() -> None:
    options = parse_options('cert-authority,no-touch-required,verify-required,principals="a,b"')
    assert options.cert_authority and options.no_touch_required and options.verify_required
    assert options.principals == "a,b"
    assert not parse_options("touch-required").no_touch_required
    assert not parse_options("no-verify-required").verify_required


def test_principals_without_cert_authority_is_exposed() -> None:
    options = parse_options('principals="alice"')
    assert options.principals == "alice" and not options.cert_authority


def test_values_and_lists() -> None:
    options = parse_options(
        'command="/bin/true",environment="A=1",environment="B_2=x",environment="A=2",'
        'permitopen="host:22",permitopen="[::1]:*",permitlisten="8080",tunnel="5",expiry-time="20300101"'
    )
    assert options.command == "/bin/true"
    assert options.environment == ("A=1", "B_2=x")  # the first setting of a name wins
    assert options.permitopen == ("host:22", "[::1]:*")
    assert options.permitlisten == ("8080",)
    assert options.tunnel == 5 and options.expiry_time == "20300101"
    assert options.to_json() == {
        "command": "/bin/true",
        "environment": ["A=1", "B_2=x", "A=2"],
        "permitopen": ["host:22", "[::1]:*"],
        "permitlisten": ["8080"],
        "tunnel": "5",
        "expiry-time": "20300101",
    }
    assert "/bin/true" not in repr(options)


def test_trailing_comma_and_empty_options_are_accepted_like_sshd() -> None:
    parsed = line(f"no-pty, {KEY}")
    assert parsed.options is not None and not parsed.options.pty
    assert not parse_options("no-pty,,no-user-rc").user_rc
    with pytest.raises(OptionError, match="unexpected end-of-options"):
        parse_options("no-pty,")


def test_tunnel_any() -> None:
    assert parse_options('tunnel="ANY"').tunnel == TUNNEL_ANY


def test_earliest_expiry_wins() -> None:
    assert parse_options('expiry-time="20350101",expiry-time="203001011200Z"').expiry_time == "203001011200Z"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("nopty", "unknown key option"),
        ("ptyx", "unknown key option"),
        ("no-cert-authority", "unknown key option"),
        ("pty=yes", "unknown key option"),
        ("command=/bin/true", "missing start quote"),
        ('command="/bin/true', "missing end quote"),
        ('command="a",command="b"', 'multiple "command" clauses'),
        ('from="a",from="b"', 'multiple "from" clauses'),
        ('principals="a",principals="b"', 'multiple "principals" clauses'),
        ('environment="NOEQUALS"', "invalid environment string"),
        ('environment="=x"', "invalid environment string"),
        ('environment="BAD-NAME=x"', "invalid environment string"),
        ('permitopen="host"', "invalid permission port"),
        ('permitopen="host:0"', "invalid permission port"),
        ('permitopen="host:65536"', "invalid permission port"),
        ('permitopen="host:no-such-service-xyz"', "invalid permission port"),
        ('permitopen="[::1"', "invalid permission hostname"),
        ('permitopen="[::1]x:22"', "invalid permission hostname"),
        ('permitlisten="0"', "invalid permission port"),
        ('tunnel="x"', "invalid tun device"),
        ('tunnel="-1"', "invalid tun device"),
        ('expiry-time="2030"', "invalid expires time"),
        ('expiry-time="20301301"', "invalid expires time"),
        ('expiry-time="203001012460"', "invalid expires time"),
        ('expiry-time="19600101Z"', "invalid expires time"),
        ('expiry-time="2030010a"', "invalid expires time"),
    ],
)
def test_option_errors(text: str, reason: str) -> None:
    with pytest.raises(OptionError) as info:
        parse_options(text)
    assert info.value.reason == reason


def test_valid_permit_forms() -> None:
    options = parse_options('permitopen="*:*",permitopen="h/22",permitopen=":22",permitlisten="[::1]:8080"')
    assert len(options.permitopen) == 3 and options.permitlisten == ("[::1]:8080",)


# --- expiry-time ------------------------------------------------------------------------------------


def test_expiry_time_formats_utc() -> None:
    assert expiry_time_utc("20300102", UTC) == datetime(2030, 1, 2, tzinfo=UTC)
    assert expiry_time_utc("203001021314Z", timezone(timedelta(hours=5))) == datetime(
        2030, 1, 2, 13, 14, tzinfo=UTC
    )
    assert expiry_time_utc("20300102131415utc", UTC) == datetime(2030, 1, 2, 13, 14, 15, tzinfo=UTC)


def test_expiry_time_local_is_standard_time_like_mktime_with_isdst_zero() -> None:
    paris = ZoneInfo("Europe/Paris")
    # winter: CET (+1)
    assert expiry_time_utc("203001021200", paris) == datetime(2030, 1, 2, 11, 0, tzinfo=UTC)
    # summer: still read as CET, not CEST (glibc mktime with tm_isdst = 0)
    assert expiry_time_utc("203007011200", paris) == datetime(2030, 7, 1, 11, 0, tzinfo=UTC)


def test_expiry_time_normalises_like_mktime() -> None:
    assert expiry_time_utc("20300231Z", UTC) == datetime(2030, 3, 3, tzinfo=UTC)
    assert expiry_time_utc("20301231235960Z", UTC) == datetime(2031, 1, 1, tzinfo=UTC)


def test_expiry_time_epoch_is_refused() -> None:
    with pytest.raises(OptionError):
        expiry_time_utc("19700101Z", UTC)
