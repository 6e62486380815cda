"""The daemon's per-user re-read budget (agent/daemon/discovery.py): a user whose files cost too
much to re-read is re-read later — never lost: the last change is still reported — while other
users' changes go through at once. Real files on a fake root; a fake clock that moves on every
reading of it, so each re-read "costs" a known time."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from agent.daemon.discovery import LiveDiscovery, ReReadBudget
from agent.host.safefs import HostFS
from agent.host.scan import ScanContext, ScanSettings
from agent.host.users import RootUserSource
from tests.fakeroot import FakeRoot, ed25519_line


class SteppingClock:
    """Monotonic seconds that advance by `step` each time they are read."""

    def __init__(self, step: float) -> None:
        self.now = 1000.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def _live(fs: HostFS, budget: ReReadBudget) -> LiveDiscovery:
    return LiveDiscovery(
        fs,
        RootUserSource(fs),
        ScanSettings(host_keys=False, identity_keys=False, orphan_homes=False),
        lambda: ScanContext(now=datetime.now(UTC), local_tz=UTC),
        budget=budget,
    )


def _added(changes: list, user: str) -> list[str]:  # type: ignore[type-arg]
    return [c.key.comment for c in changes if c.type == "key_added" and c.user == user]


def test_a_user_over_budget_is_reread_later_and_the_last_change_is_reported(tmp_path: Path) -> None:
    fr = FakeRoot(tmp_path / "root")
    uid = os.geteuid() or 1000
    for name in ("alice", "bob"):
        fr.add_user(name, uid)
        fr.authorized_keys(name, [ed25519_line(f"{name}-0")])
    clock = SteppingClock(1.0)  # every re-read costs 1 s of the budget
    budget = ReReadBudget(capacity_s=1.0, refill_per_s=0.01, clock=clock)
    with HostFS(str(fr.root)) as fs:
        live = _live(fs, budget)
        live.full_scan()
        ak = "/home/alice/.ssh/authorized_keys"
        lines = fr.path(ak).read_text().splitlines()
        reported: list[str] = []
        for n in range(1, 6):
            lines.append(ed25519_line(f"alice-{n}"))
            fr.authorized_keys("alice", lines)
            reported += _added(live.changed_paths({ak}), "alice")
        # The first re-reads went through; then alice ran out of budget and is deferred.
        assert reported and reported == [f"alice-{n}" for n in range(1, len(reported) + 1)]
        assert len(reported) < 5
        due = live.next_deferred_at()
        assert due is not None
        # bob is not held up by alice.
        bob = fr.path("/home/bob/.ssh/authorized_keys").read_text().splitlines()
        fr.authorized_keys("bob", [*bob, ed25519_line("bob-1")])
        changes = live.changed_paths({"/home/bob/.ssh/authorized_keys"})
        assert _added(changes, "bob") == ["bob-1"]
        assert _added(changes, "alice") == []
        # Nothing for alice before her budget refills...
        assert _added(live.changed_paths(set()), "alice") == []
        # ...and then her last state, in full.
        clock.now = due + 1
        late = _added(live.changed_paths(set()), "alice")
        assert reported + late == [f"alice-{n}" for n in range(1, 6)]
        assert live.next_deferred_at() is None


def test_a_full_scan_reads_what_was_deferred(tmp_path: Path) -> None:
    fr = FakeRoot(tmp_path / "root")
    fr.add_user("alice", os.geteuid() or 1000)
    fr.authorized_keys("alice", [ed25519_line("a0")])
    clock = SteppingClock(5.0)
    with HostFS(str(fr.root)) as fs:
        live = _live(fs, ReReadBudget(capacity_s=1.0, refill_per_s=0.01, clock=clock))
        live.full_scan()
        ak = "/home/alice/.ssh/authorized_keys"
        first = fr.path(ak).read_text().splitlines()
        fr.authorized_keys("alice", [*first, ed25519_line("a1")])
        live.changed_paths({ak})  # costs 5 s: the budget is spent
        fr.authorized_keys("alice", [*first, ed25519_line("a2")])
        assert live.changed_paths({ak}) == []
        assert live.next_deferred_at() is not None
        assert "a2" in _added(live.full_scan(), "alice")
        assert live.next_deferred_at() is None


def test_budget_arithmetic() -> None:
    now = [0.0]
    budget = ReReadBudget(capacity_s=2.0, refill_per_s=0.5, clock=lambda: now[0])
    assert budget.allowed("u")
    budget.charge("u", 3.0)  # 2 - 3 = -1: in debt
    assert not budget.allowed("u")
    assert budget.ready_at("u") == 2.0  # -1 + 0.5 * 2 = 0 ... and a little more
    now[0] = 2.5
    assert budget.allowed("u")
    now[0] = 100.0
    budget.charge("u", 0.0)
    assert budget.tokens("u") == 2.0  # never above the capacity
