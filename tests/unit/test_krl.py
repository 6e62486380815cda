"""The KRL core (agent/ssh/krl.py): the spec the agent hands `ssh-keygen -k`, the listing of
`ssh-keygen -Q -l` read back, what a KRL revokes, sshd's plain-key-list fallback. The same against
the real ssh-keygen: tests/integration/test_krl_oracle.py."""

from __future__ import annotations

import pytest

from agent.ssh.certificate import Certificate
from agent.ssh.keys import parse_public_key_text
from agent.ssh.krl import (
    CertRevocations,
    FlatListInvalid,
    KrlContents,
    KrlError,
    RevocationEntry,
    expected_contents,
    flat_list_contents,
    is_krl,
    merge_serials,
    parse_dump,
    render_specs,
    valid_key_id,
)
from tests.fakeroot import ed25519_line, rsa_line

KEY = ed25519_line("k")
FP = parse_public_key_text(KEY)[0].fingerprint
CA = " ".join(ed25519_line("ca").split()[:2])
CA_FP = parse_public_key_text(CA)[0].fingerprint

# `ssh-keygen -Q -l` of OpenSSH 9.2 (krl_dump), as printed on this machine.
DUMP = f"""# KRL version 7
# Generated at 20261204T143354
# Comment: sshklm-agent generation 7

hash: {FP} # ssh-ed25519
hash: SHA256:f97e31678b7d2c1cb66847098549d0d05c74abba9f5f003478e4198725e16f51
# hash SHA1:0123456789abcdef0123456789abcdef01234567

# CA key ssh-ed25519 {CA_FP}
serial: 17
serial: 20-30
id: alice@corp

# Wildcard CA
id: anyone
"""


def cert(serial: int, key_id: str = "x", ca: str = CA_FP) -> Certificate:
    return Certificate("user", key_id, serial, ("p",), None, None, ca)


def test_render_specs_one_spec_per_ca_sorted() -> None:
    entries = [
        RevocationEntry("serial", "17", CA),
        RevocationEntry("hash", FP),
        RevocationEntry("key", " ".join(KEY.split()[:2])),
        RevocationEntry("key_id", "alice@corp", CA),
    ]
    plain, per_ca = render_specs(entries)
    assert plain == f"hash: {FP}\nkey: {' '.join(KEY.split()[:2])}\n"  # sorted entries
    assert per_ca == {CA: "id: alice@corp\nserial: 17\n"}
    assert render_specs(reversed(entries)) == (plain, per_ca)


def test_render_refuses_a_key_id_the_spec_would_change() -> None:
    with pytest.raises(KrlError):
        render_specs([RevocationEntry("key_id", "a # b", CA)])


@pytest.mark.parametrize(
    ("key_id", "ok"),
    [
        ("alice@corp", True),
        ("a b", True),
        ("a#b", False),
        (" a", False),
        ("a ", False),
        ("", False),
        ("é", False),
    ],
)
def test_valid_key_id(key_id: str, ok: bool) -> None:
    assert valid_key_id(key_id) is ok


def test_parse_dump_reads_every_kind_of_line() -> None:
    contents = parse_dump(DUMP)
    assert (contents.version, contents.generated_at, contents.comment) == (
        7,
        "20261204T143354",
        "sshklm-agent generation 7",
    )
    # The hex SHA256 hash is the base64 fingerprint sshd logs.
    assert contents.sha256 == {FP, "SHA256:+X4xZ4t9LBy2aEcJhUnQ0Fx0q7qfXwA0eOQZhyXhb1E"}
    assert contents.sha1 == {"0123456789abcdef0123456789abcdef01234567"}
    assert contents.certificates == (
        CertRevocations(CA_FP, "ssh-ed25519", ((17, 17), (20, 30)), frozenset({"alice@corp"})),
        CertRevocations(None, None, (), frozenset({"anyone"})),
    )
    assert contents.entries == 2 + 1 + 3 + 1


@pytest.mark.parametrize("line", ["serial: 17", "id: x", "hash: SHA256:abc", "surprise: 1", "hash: MD5:aa"])
def test_parse_dump_refuses_what_it_does_not_understand(line: str) -> None:
    with pytest.raises(KrlError):
        parse_dump(f"# KRL version 1\n{line}\n")


def test_what_a_krl_revokes() -> None:
    contents = parse_dump(DUMP)
    assert contents.revokes(FP, None)
    assert contents.revokes("SHA256:other", cert(17))  # by serial under its CA
    assert contents.revokes("SHA256:other", cert(25))
    assert not contents.revokes("SHA256:other", cert(19))
    assert contents.revokes("SHA256:other", cert(19, "alice@corp"))  # by key id
    assert not contents.revokes("SHA256:other", cert(17, ca="SHA256:anotherca"))  # another CA's serial 17
    assert contents.revokes("SHA256:other", cert(3, "anyone", ca="SHA256:anotherca"))  # the wildcard CA
    assert contents.revokes("SHA256:other", cert(1, ca=FP))  # the CA key itself revoked
    zero = KrlContents(certificates=(CertRevocations(CA_FP, None, ((0, 10),)),))
    assert not zero.revokes("SHA256:other", cert(0))  # serial 0 is never revoked


def test_expected_contents_match_the_listing() -> None:
    entries = [
        RevocationEntry("hash", FP),
        RevocationEntry("serial", "17", CA),
        RevocationEntry("serial", "18", CA),
        RevocationEntry("key_id", "alice@corp", CA),
    ]
    listing = (
        f"# KRL version 3\n\nhash: {FP}\n\n# CA key ssh-ed25519 {CA_FP}\nserial: 17-18\nid: alice@corp\n"
    )
    assert expected_contents(entries).same_revocations(parse_dump(listing))
    assert not expected_contents(entries[:-1]).same_revocations(parse_dump(listing))


def test_merge_serials() -> None:
    assert merge_serials([(5, 5), (1, 2), (3, 3), (7, 9), (8, 12)]) == ((1, 3), (5, 5), (7, 12))


def test_contents_round_trip_through_json() -> None:
    contents = parse_dump(DUMP)
    again = KrlContents.from_json(contents.to_json())
    assert again.same_revocations(contents) and again.version == 7


def test_flat_key_list_is_read_like_sshd() -> None:
    data = f"# revoked\n\n  {KEY}\n{rsa_line(1024)}\n".encode()
    assert not is_krl(data)
    contents = flat_list_contents(data)
    assert contents.format == "key_list" and FP in contents.sha256 and len(contents.sha256) == 2
    with pytest.raises(FlatListInvalid) as bad:
        flat_list_contents(f"{KEY}\nnot a key\n".encode())
    assert bad.value.line == 2


def test_entry_json_and_fingerprints() -> None:
    entry = RevocationEntry("key", " ".join(KEY.split()[:2]))
    assert entry.fingerprint() == FP
    assert RevocationEntry.from_json(entry.to_json()) == entry
    assert RevocationEntry("serial", "1", CA).fingerprint() is None
    with pytest.raises(KrlError):
        RevocationEntry.from_json({"kind": "bogus", "value": "x"})
