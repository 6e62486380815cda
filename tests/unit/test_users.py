"""agent.host.users: pure passwd/group parsers, the root-file source (via HostFS) and the NSS source."""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.host import users as users_mod
from agent.host.safefs import HostFS, UnsafePath
from agent.host.users import (
    NssUserSource,
    RootUserSource,
    User,
    UserSource,
    build_users,
    parse_group,
    parse_passwd,
)

PASSWD = (
    "root:x:0:0:root:/root:/bin/bash\n"
    "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
    "alice:x:1000:1000:Alice,,,:/home/alice:/bin/bash\r\n"  # CRLF tolerated
    "+nisuser::::::\n"  # NIS compat lines skipped
    "-baduser:x:0:0::/:/bin/sh\n"
    "+\n"
    "broken:x:1001:1001:/home/broken:/bin/sh\n"  # 6 fields
    "toolong:x:1:1:a:b:c:d\n"  # 8 fields
    "neguid:x:-1:1::/home/neg:/bin/sh\n"
    "wordy:x:abc:1::/home/w:/bin/sh\n"
    "huge:x:4294967296:1::/home/h:/bin/sh\n"
    ":x:5:5::/home/empty:/bin/sh\n"  # empty name
    "\n"
    "# comment:x:0:0::/:/bin/sh\n"
    "svc:*:998:998::/var/lib/svc:\n"  # empty shell kept as given
    "alice:x:2000:2000::/home/alice2:/bin/sh\n"  # duplicate: the first wins
    "bob:x:1002:1002::/home/bob:/bin/sh"  # no final newline
)

GROUP = (
    "root:x:0:\n"
    "daemon:x:1:\n"
    "sudo:x:27:alice, bob ,\r\n"
    "alice:x:1000:\n"
    "+:::\n"
    "broken:x:5\n"
    "docker:x:999:bob\n"
    "sudo:x:28:root\n"  # duplicate group name: the first wins
)


def test_parse_passwd() -> None:
    assert parse_passwd(PASSWD) == [
        ("root", 0, 0, "/root", "/bin/bash"),
        ("daemon", 1, 1, "/usr/sbin", "/usr/sbin/nologin"),
        ("alice", 1000, 1000, "/home/alice", "/bin/bash"),
        ("svc", 998, 998, "/var/lib/svc", ""),
        ("alice", 2000, 2000, "/home/alice2", "/bin/sh"),
        ("bob", 1002, 1002, "/home/bob", "/bin/sh"),
    ]


def test_parse_group() -> None:
    assert parse_group(GROUP) == [
        ("root", 0, ()),
        ("daemon", 1, ()),
        ("sudo", 27, ("alice", "bob")),
        ("alice", 1000, ()),
        ("docker", 999, ("bob",)),
        ("sudo", 28, ("root",)),
    ]


def test_build_users_groups_and_dedupe() -> None:
    users = {u.name: u for u in build_users(parse_passwd(PASSWD), parse_group(GROUP))}
    assert list(users) == ["root", "daemon", "alice", "svc", "bob"]
    assert users["alice"] == User("alice", 1000, 1000, "/home/alice", "/bin/bash", ("alice", "sudo"))
    assert users["bob"].groups == ("docker", "sudo")  # primary gid 1002 has no group entry
    assert users["root"].groups == ("root",)  # the duplicate "sudo" (28, root) is ignored
    assert users["svc"].groups == ()


@given(st.text())
def test_parsers_never_raise(text: str) -> None:
    for name, uid, gid, _home, _shell in parse_passwd(text):
        assert name and 0 <= uid < 1 << 32 and 0 <= gid < 1 << 32
    for gname, ggid, members in parse_group(text):
        assert gname and 0 <= ggid < 1 << 32 and all(members)


_field = st.text(alphabet=st.characters(blacklist_characters=":\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"))


@given(
    st.lists(
        st.tuples(
            _field.filter(lambda s: s and s[0] not in "+-#" and s.strip() == s and s.strip()),
            st.integers(0, (1 << 32) - 1),
            st.integers(0, (1 << 32) - 1),
            _field,
            _field,
        ),
        max_size=5,
    )
)
def test_parse_passwd_round_trip(entries: list[tuple[str, int, int, str, str]]) -> None:
    text = "".join(f"{n}:x:{u}:{g}:gecos:{h}:{s}\n" for n, u, g, h, s in entries)
    assert parse_passwd(text) == entries


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    (r / "etc/passwd").write_text(PASSWD)
    (r / "etc/group").write_text(GROUP)
    return r


def test_root_user_source(fake_root: Path) -> None:
    with HostFS(str(fake_root)) as fs:
        source: UserSource = RootUserSource(fs)
        names = [u.name for u in source.all()]
        assert names == ["root", "daemon", "alice", "svc", "bob"]
        alice = source.get("alice")
        assert alice is not None and alice.home == "/home/alice" and alice.groups == ("alice", "sudo")
        assert source.get("nobody-here") is None
        # Each call re-reads: a user added later is seen.
        with (fake_root / "etc/passwd").open("a") as fh:
            fh.write("\ncarol:x:1003:1003::/home/carol:/bin/sh\n")
        assert source.get("carol") is not None


def test_root_user_source_without_group_file(fake_root: Path) -> None:
    (fake_root / "etc/group").unlink()
    with HostFS(str(fake_root)) as fs:
        users = RootUserSource(fs).all()
    assert [u.groups for u in users] == [()] * 5


def test_root_user_source_reads_through_safe_layer(fake_root: Path) -> None:
    (fake_root / "etc/passwd").unlink()
    os.mkfifo(fake_root / "etc/passwd")  # must be refused, not block
    with HostFS(str(fake_root)) as fs, pytest.raises(UnsafePath, match="is a FIFO"):
        RootUserSource(fs).all()
    (fake_root / "etc/passwd").unlink()
    (fake_root / "etc/passwd").symlink_to("/etc/passwd.real")  # absolute link stays inside the root
    (fake_root / "etc/passwd.real").write_text("zed:x:7:7::/home/zed:/bin/sh\n")
    with HostFS(str(fake_root)) as fs:
        assert [u.name for u in RootUserSource(fs).all()] == ["zed"]


def test_truncated_passwd_drops_the_partial_last_line(
    fake_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = "a:x:1:1::/home/a:/bin/sh\nb:x:2:2::/home/bbbbbbbbbbbb:/bin/sh\n"
    (fake_root / "etc/passwd").write_text(text)
    monkeypatch.setattr(users_mod, "ACCOUNT_DB_MAX_BYTES", len(text) - 10)  # cut inside b's line
    with HostFS(str(fake_root)) as fs:
        assert [u.name for u in RootUserSource(fs).all()] == ["a"]


def test_nss_user_source_matches_the_c_library() -> None:
    source: UserSource = NssUserSource()
    everyone = source.all()
    by_name = {u.name: u for u in everyone}
    assert len(by_name) == len(everyone)  # deduplicated
    expected_root = pwd.getpwnam("root")
    root = by_name["root"]
    assert (root.uid, root.gid, root.home, root.shell) == (0, 0, expected_root.pw_dir, expected_root.pw_shell)
    assert grp.getgrgid(0).gr_name in root.groups
    got = source.get("root")
    assert got is not None and (got.uid, got.home) == (0, expected_root.pw_dir)
    assert grp.getgrgid(0).gr_name in got.groups
    assert source.get("no-such-user-sshklm") is None
    me = pwd.getpwuid(os.getuid())
    mine = source.get(me.pw_name)
    assert mine is not None
    assert {grp.getgrgid(g).gr_name for g in os.getgrouplist(me.pw_name, me.pw_gid)} == set(mine.groups)


@pytest.mark.parametrize(
    ("home", "expected", "problem"),
    [
        ("/home/a", "/home/a", None),
        ("/home//a/./b/../c/", "/home/a/c", None),
        ("var/lib/svc", "/var/lib/svc", "home is not an absolute path; read as /var/lib/svc, as sshd does"),
        ("", "/", "home is empty; read as /, as sshd does"),
        ("//", "/", None),
        ("../../x", "/x", "home is not an absolute path; read as /x, as sshd does"),
    ],
)
def test_vet_user_homes(home: str, expected: str, problem: str | None) -> None:
    user, why = users_mod.vet_user(User("a", 1, 1, home, "/bin/sh", ()))
    assert user is not None and user.home == expected
    assert why == problem


@pytest.mark.parametrize(
    ("name", "home", "problem"),
    [
        ("b\udcffad", "/home/b", "account name is not valid UTF-8; not scanned"),
        ("good", "/home/\udcfe", "home is not valid UTF-8; not scanned"),
        ("a/b", "/home/ab", "account name contains '/'; not scanned"),
    ],
)
def test_vet_user_leaves_out_what_cannot_be_reported(name: str, home: str, problem: str) -> None:
    assert users_mod.vet_user(User(name, 1, 1, home, "/bin/sh", ())) == (None, problem)


def test_vet_users_names_lines_and_duplicates_never_content() -> None:
    malformed: list[int] = []
    passwd = parse_passwd(PASSWD, malformed)
    users, problems = users_mod.vet_users(passwd, parse_group(GROUP), "/etc/passwd", malformed)
    assert [u.name for u in users] == ["root", "daemon", "alice", "svc", "bob"]
    assert [(p.user, p.error) for p in problems] == [
        (None, "line 7: not a valid passwd entry; skipped"),
        (None, "line 8: not a valid passwd entry; skipped"),
        (None, "line 9: not a valid passwd entry; skipped"),
        (None, "line 10: not a valid passwd entry; skipped"),
        (None, "line 11: not a valid passwd entry; skipped"),
        (None, "line 12: not a valid passwd entry; skipped"),
        ("alice", "duplicate account name; the first entry is used"),
    ]
    assert users_mod.printable("b\udcffad") == "b\\xffad"
