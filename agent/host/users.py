"""Users and groups: from <root>/etc/passwd and <root>/etc/group (pure parsers + HostFS) or from NSS.

`RootUserSource` serves scans of a (possibly fake) root and reads only local files.
`NssUserSource` asks the C library, so LDAP/SSSD users count too (as far as the NSS
backend enumerates them: SSSD with `enumerate = false` lists only local users in `all()`,
while `get(name)` still finds directory users).

One odd account never stops the agent (`vet_user`, pure): an account whose name or home is not
valid UTF-8, or whose name holds a '/', is left out; a relative or empty home is read the way
sshd reads it (relative to its working directory, `/`); a duplicate name keeps its first entry
(as getpwnam does); a malformed passwd line is skipped. Each is a problem (`problems()`: a
ScanError naming the account and the reason, never more of the line) that discovery reports in
the inventory's `errors`. Homes are returned absolute and normalised, as paths inside the root.
"""

from __future__ import annotations

import dataclasses
import grp
import os
import posixpath
import pwd
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final, Protocol

from agent.host.safefs import HostFS
from agent.inventory.model import ScanError

PASSWD_PATH: Final = "/etc/passwd"  # noqa: S105 - a path, not a password
GROUP_PATH: Final = "/etc/group"
# Account databases can be large (thousands of users); the default per-file cap is for key files.
ACCOUNT_DB_MAX_BYTES: Final = 64 << 20
_MAX_ID: Final = (1 << 32) - 1

PasswdEntry = tuple[str, int, int, str, str]  # name, uid, gid, home, shell
GroupEntry = tuple[str, int, tuple[str, ...]]  # name, gid, members


@dataclass(frozen=True, slots=True)  # slots: one per planned file / account, 10,000s of them
class User:
    name: str
    uid: int
    gid: int
    home: str
    shell: str
    # Names of the primary group (when known) and supplementary groups, sorted. A tuple: most
    # accounts are in one group, and a one-element frozenset costs 216 bytes against 48.
    groups: tuple[str, ...]


class UserSource(Protocol):
    def all(self) -> list[User]: ...

    def get(self, name: str) -> User | None: ...

    def problems(self) -> list[ScanError]:
        """The accounts (and lines) `all()` left out or read differently, and why."""
        ...


def printable(text: str) -> str:
    """`text` as valid UTF-8: bytes that were not (surrogate escapes) shown as \\xNN."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _valid_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def vet_user(user: User) -> tuple[User | None, str | None]:
    """The account as discovery uses it (None: left out) and the problem with it, if any. Pure."""
    if not _valid_utf8(user.name):
        return None, "account name is not valid UTF-8; not scanned"
    if "/" in user.name:
        return None, "account name contains '/'; not scanned"
    home = user.home
    if not _valid_utf8(home):
        return None, "home is not valid UTF-8; not scanned"
    if home.startswith("/"):
        normal = posixpath.normpath(home)
        normal = "/" if normal == "//" else normal
        return (user if normal == home else dataclasses.replace(user, home=normal)), None
    # sshd prefixes a relative AuthorizedKeysFile with pw_dir + "/" and opens it from its working
    # directory, "/": an empty home reads /.ssh/..., a relative one /<home>/.ssh/...
    absolute = posixpath.normpath("/" + home) if home else "/"
    absolute = "/" if absolute == "//" else absolute
    why = "home is empty" if not home else "home is not an absolute path"
    return dataclasses.replace(user, home=absolute), f"{why}; read as {printable(absolute)}, as sshd does"


def vet_users(
    passwd: list[PasswdEntry], groups: Iterable[GroupEntry], source: str, malformed: Iterable[int] = ()
) -> tuple[list[User], list[ScanError]]:
    """The accounts discovery uses, and the problems: malformed lines of `source` (by number),
    duplicate names (the first entry wins, as with getpwnam), and `vet_user`'s. Pure."""
    problems = [ScanError(source, None, f"line {n}: not a valid passwd entry; skipped") for n in malformed]
    seen: set[str] = set()
    for name, *_ in passwd:
        if name in seen:
            problems.append(
                ScanError(source, printable(name), "duplicate account name; the first entry is used")
            )
        seen.add(name)
    kept: list[User] = []
    for user in build_users(passwd, groups):
        vetted, problem = vet_user(user)
        if problem is not None:
            problems.append(ScanError(source, printable(user.name), problem))
        if vetted is not None:
            kept.append(vetted)
    return kept, problems


def _parse_id(text: str) -> int | None:
    if not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value <= _MAX_ID else None


def _records(text: str, field_count: int, malformed: list[int] | None) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of well-formed colon-separated records: skips blank, comment, NIS
    compat (+/-) and malformed lines (their numbers go to `malformed`, when given)."""
    for number, line in enumerate(text.splitlines(), 1):  # also splits on \r\n
        line = line.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#") or line[0] in "+-":
            continue
        fields = line.split(":")
        if len(fields) != field_count or not fields[0]:
            if malformed is not None:
                malformed.append(number)
            continue
        yield number, fields


def parse_passwd(text: str, malformed: list[int] | None = None) -> list[PasswdEntry]:
    """passwd(5) lines -> (name, uid, gid, home, shell), in file order (pure). The numbers of
    malformed lines (wrong field count, empty name, bad uid/gid) go to `malformed` when given."""
    out: list[PasswdEntry] = []
    for number, (name, _pw, uid_text, gid_text, _gecos, home, shell) in _records(text, 7, malformed):
        uid, gid = _parse_id(uid_text), _parse_id(gid_text)
        if uid is None or gid is None:
            if malformed is not None:
                malformed.append(number)
            continue
        out.append((name, uid, gid, home, shell))
    return out


def parse_group(text: str) -> list[GroupEntry]:
    """group(5) lines -> (name, gid, members), in file order (pure)."""
    out: list[GroupEntry] = []
    for _number, (name, _pw, gid_text, members_text) in _records(text, 4, None):
        gid = _parse_id(gid_text)
        if gid is None:
            continue
        members = tuple(m.strip() for m in members_text.split(",") if m.strip())
        out.append((name, gid, members))
    return out


def build_users(passwd: Iterable[PasswdEntry], groups: Iterable[GroupEntry]) -> list[User]:
    """Join passwd and group entries (pure). Duplicate user or group names: the first wins."""
    group_name_by_gid: dict[int, str] = {}
    member_of: dict[str, set[str]] = {}
    seen_groups: set[str] = set()
    for gname, gid, members in groups:
        if gname in seen_groups:
            continue
        seen_groups.add(gname)
        group_name_by_gid.setdefault(gid, gname)
        for member in members:
            member_of.setdefault(member, set()).add(gname)
    users: list[User] = []
    seen_users: set[str] = set()
    for name, uid, gid, home, shell in passwd:
        if name in seen_users:
            continue
        seen_users.add(name)
        names = set(member_of.get(name, ()))
        primary = group_name_by_gid.get(gid)
        if primary is not None:
            names.add(primary)
        # Share strings rather than keep a copy per account: the few distinct shells, and the
        # user's own name for the user's private group (Debian's USERGROUPS: most accounts).
        group_names = tuple(sorted(name if group == name else group for group in names))
        users.append(User(name, uid, gid, home, sys.intern(shell), group_names))
    return users


class RootUserSource:
    """Users of a root read through HostFS: <root>/etc/passwd and <root>/etc/group.

    The files are parsed again whenever either changed (inode, size or mtime differ), so a
    long-running daemon sees added users, and a lookup per instruction costs two stats, not a
    parse of the whole user database."""

    def __init__(self, fs: HostFS) -> None:
        self._fs = fs
        self._cache: tuple[tuple[object, ...], list[User], dict[str, User], list[ScanError]] | None = None

    def _text(self, path: str) -> str:
        result = self._fs.read(path, max_bytes=ACCOUNT_DB_MAX_BYTES)
        data = result.data
        if result.truncated:
            # Never parse a cut-off last line (it would yield a wrong home or shell).
            data = data[: data.rfind(b"\n") + 1]
        # As the C library hands them over: bytes that are not UTF-8 kept (as surrogate escapes)
        # for vet_user to find, never silently turned into another name.
        return data.decode("utf-8", errors="surrogateescape")

    def _identity(self) -> tuple[object, ...]:
        out: list[object] = []
        for path in (PASSWD_PATH, GROUP_PATH):
            info = self._fs.stat(path)
            out.append(None if info is None else (info.dev, info.ino, info.size, info.mtime))
        return tuple(out)

    def _load(self) -> tuple[tuple[object, ...], list[User], dict[str, User], list[ScanError]]:
        identity = self._identity()
        cached = self._cache
        if cached is not None and cached[0] == identity and identity[0] is not None:
            return cached
        malformed: list[int] = []
        passwd = parse_passwd(self._text(PASSWD_PATH), malformed)
        try:
            groups = parse_group(self._text(GROUP_PATH))
        except FileNotFoundError:
            groups = []
        users, problems = vet_users(passwd, groups, PASSWD_PATH, sorted(malformed))
        self._cache = (identity, users, {u.name: u for u in users}, problems)
        return self._cache

    def all(self) -> list[User]:
        return list(self._load()[1])

    def get(self, name: str) -> User | None:
        return self._load()[2].get(name)

    def problems(self) -> list[ScanError]:
        return list(self._load()[3])


# Where NSS accounts come from, as the `path` of their problems (the passwd database).
NSS_SOURCE: Final = "passwd (NSS)"


class NssUserSource:
    """Users from the C library's NSS (files, LDAP, SSSD...)."""

    def __init__(self) -> None:
        self._problems: list[ScanError] = []

    def all(self) -> list[User]:
        passwd = [(p.pw_name, p.pw_uid, p.pw_gid, p.pw_dir, p.pw_shell) for p in pwd.getpwall()]
        groups = [(g.gr_name, g.gr_gid, tuple(g.gr_mem)) for g in grp.getgrall()]
        users, self._problems = vet_users(passwd, groups, NSS_SOURCE)
        return users

    def problems(self) -> list[ScanError]:
        """The problems of the last `all()`."""
        return list(self._problems)

    def get(self, name: str) -> User | None:
        try:
            p = pwd.getpwnam(name)
        except KeyError:
            return None
        # getgrouplist asks the backend directly, so it works without group enumeration.
        names: set[str] = set()
        try:
            gids = os.getgrouplist(p.pw_name, p.pw_gid)
        except OSError:
            gids = [p.pw_gid]
        for gid in gids:
            try:
                names.add(grp.getgrgid(gid).gr_name)
            except KeyError:
                continue
        user, _ = vet_user(User(p.pw_name, p.pw_uid, p.pw_gid, p.pw_dir, p.pw_shell, tuple(sorted(names))))
        return user
