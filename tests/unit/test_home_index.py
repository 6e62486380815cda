"""The passwd-home index of the shared-home check: listed at most every HOME_INDEX_TTL_S, not on
every write (listing an LDAP-backed user database per rotation costs O(accounts))."""

from __future__ import annotations

from agent.host.users import User
from agent.instructions.view import HOME_INDEX_TTL_S, HomeIndexCache


class CountingUsers:
    def __init__(self, users: list[User]) -> None:
        self.users = users
        self.listed = 0

    def all(self) -> list[User]:
        self.listed += 1
        return list(self.users)

    def get(self, name: str) -> User | None:
        return next((u for u in self.users if u.name == name), None)


def _user(name: str, uid: int, home: str) -> User:
    return User(name=name, uid=uid, gid=uid, home=home, shell="/bin/sh", groups=())


def test_index_is_reused_within_its_ttl_and_rebuilt_after() -> None:
    now = [100.0]
    users = CountingUsers([_user("alice", 1000, "/home/alice/"), _user("bob", 1001, "/home/bob")])
    cache = HomeIndexCache(users, monotonic=lambda: now[0])
    assert cache.get()["/home/alice"] == [("alice", 1000)]  # normalised
    now[0] += HOME_INDEX_TTL_S - 1
    users.users.append(_user("mallory", 1002, "/home/alice"))
    assert cache.get()["/home/alice"] == [("alice", 1000)]
    assert users.listed == 1
    now[0] += 1
    assert cache.get()["/home/alice"] == [("alice", 1000), ("mallory", 1002)]
    assert users.listed == 2


def test_a_zero_ttl_lists_every_time() -> None:
    users = CountingUsers([_user("alice", 1000, "/home/alice")])
    cache = HomeIndexCache(users, ttl_s=0.0, monotonic=lambda: 5.0)
    cache.get()
    cache.get()
    assert users.listed == 2
