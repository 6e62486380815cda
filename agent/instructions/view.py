"""What the host says about a user's keys, asked at most once per unit of work.

A unit of work is one instruction, one grant expiry, one journal entry to reconcile or one
rollback: `UnitsOfWork.unit()` serialises them (one lock for every change to users' files) and
gives each a fresh `HostView`, so the user database and sshd_config are read once per unit, not
once per question, and never carried over from one unit to the next — with one exception: the
index of passwd homes (which accounts have which home: the shared-home check of every write) is
kept for up to `HOME_INDEX_TTL_S` across units. Listing the whole user database (NSS: LDAP, SSSD)
costs O(accounts) per write, a third of a rotation's time at 1,000 accounts; and the check it
serves is a second line behind the owner rule (a home owned by another uid is refused anyway),
so an account added in the last half minute with another's home is caught by that rule alone.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, tzinfo

from agent.host.safefs import UnsafePath
from agent.host.sshd_files import authorized_keys_paths, normalize_path
from agent.host.users import User, UserSource
from agent.instructions.errors import ApplyFailed
from agent.instructions.plan import honoured_by_sshd
from agent.instructions.ports import HostFiles
from agent.ssh.authorized_keys import AuthorizedLine, parse_authorized_keys
from agent.ssh.sshd_config import MatchContext, ParsedSshdConfig, resolve

HOME_INDEX_TTL_S = 30.0

HomeIndex = dict[str, list[tuple[str, int]]]  # normalised passwd home -> [(account, uid)]


class HomeIndexCache:
    """The passwd-home index, rebuilt from the user database at most every `ttl_s` seconds."""

    def __init__(
        self,
        users: UserSource,
        ttl_s: float = HOME_INDEX_TTL_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._users = users
        self._ttl = ttl_s
        self._monotonic = monotonic
        self._built: tuple[float, HomeIndex] | None = None

    def get(self) -> HomeIndex:
        now = self._monotonic()
        if self._built is None or now - self._built[0] >= self._ttl:
            index: HomeIndex = {}
            for account in self._users.all():
                index.setdefault(normalize_path(account.home), []).append((account.name, account.uid))
            self._built = (now, index)
        return self._built[1]


class HostView:
    """Users, their authorized keys files and the keys in them (read-only, memoised)."""

    def __init__(
        self,
        files: HostFiles,
        users: UserSource,
        sshd_config_path: str,
        now: datetime | None = None,
        homes: HomeIndexCache | None = None,
    ) -> None:
        self.files = files
        self._users = users
        self._sshd_config_path = sshd_config_path
        self._user_memo: dict[str, User | None] = {}
        self._parsed: ParsedSshdConfig | None = None
        # The unit's time, and the zone sshd reads an `expiry-time` without "Z" in (as discovery).
        self.now = now if now is not None else datetime.now(UTC)
        self.local_tz: tzinfo = self.now.astimezone().tzinfo or UTC
        self._homes = homes if homes is not None else HomeIndexCache(users, ttl_s=0.0)

    def honours(self, ln: AuthorizedLine) -> bool:
        """Would sshd use this line now (plan.honoured_by_sshd)?"""
        return honoured_by_sshd(ln, self.now, self.local_tz)

    def user(self, name: str) -> User | None:
        if name not in self._user_memo:
            self._user_memo[name] = self._users.get(name)
        return self._user_memo[name]

    def user_exists(self, name: str) -> bool:
        try:
            return self.user(name) is not None
        except (OSError, UnsafePath):
            return False

    def require_user(self, name: str) -> User:
        user = self.user(name)
        if user is None:
            raise ApplyFailed("NOT_FOUND", "no such user")
        return user

    def accounts_with_home(self, homes: set[str], *, except_uid: int) -> list[str]:
        """Names of the accounts (other than uid `except_uid`) whose passwd home is one of `homes`
        (normalised paths), from the home index (see the module docstring)."""
        index = self._homes.get()
        return [name for home in homes for name, uid in index.get(home, ()) if uid != except_uid]

    def paths(self, user: User, *, conditional: bool = True) -> list[str]:
        """The authorized keys files sshd reads for `user` (as discovery resolves them)."""
        if self._parsed is None:
            self._parsed = self.files.sshd_config(self._sshd_config_path)
        eff = resolve(self._parsed, MatchContext(user.name, user.groups))
        return authorized_keys_paths(user, eff, conditional=conditional)

    def first_path(self, user: User) -> str:
        """Where a new key goes: the first file sshd always reads (else the first at all)."""
        paths = self.paths(user, conditional=False) or self.paths(user)
        if not paths:
            raise ApplyFailed("NO_AUTHORIZED_KEYS_FILE", "sshd reads no authorized keys file for this user")
        return paths[0]

    def read_keys(self, user: User, path: str) -> bytes:
        """One of the user's files, read-only (links followed by the trust rules for this user)."""
        return self.files.read(path, confine=user.home, user_uid=user.uid)

    def fingerprints_of(self, user: User) -> list[str]:
        """The keys sshd honours in the user's authorized keys files, in reading order (best
        effort): a results's `fingerprints_after`. Lines sshd skips (expired, bad options,
        certificates, principals without cert-authority) are not listed."""
        out: list[str] = []
        try:
            paths = self.paths(user)
        except (OSError, UnsafePath):
            return out
        for path in paths:
            try:
                data = self.read_keys(user, path)
            except (OSError, UnsafePath):
                continue
            out += [ln.key.fingerprint for ln in parse_authorized_keys(data) if ln.key and self.honours(ln)]
        return list(dict.fromkeys(out))


class UnitsOfWork:
    """One lock for every change to users' files, and a fresh `HostView` for each unit."""

    def __init__(
        self,
        files: HostFiles,
        users: UserSource,
        sshd_config_path: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.files = files
        self.users = users
        self.sshd_config_path = sshd_config_path
        self.clock = clock
        self._lock = threading.RLock()
        self._homes = HomeIndexCache(users)

    @contextlib.contextmanager
    def unit(self) -> Iterator[HostView]:
        with self._lock:
            yield HostView(self.files, self.users, self.sshd_config_path, self.clock(), self._homes)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """No unit of work runs meanwhile (units started inside are fine: the lock is re-entrant)."""
        with self._lock:
            yield
