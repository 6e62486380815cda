"""The daemon's live view of the host: the last plan, per-file results and inventory.

It reuses the scan's three steps (plan, read a target, assemble): a change to a user's file
re-reads just that file; a change to sshd_config, an Included file, /etc/passwd or /etc/group
re-plans (users and paths may have moved) and re-reads everything. Each update returns the
contract changes against the previous state.

Re-reads on change are paid from a per-user budget (`ReReadBudget`: a token bucket of seconds
spent re-reading, `BUDGET_CAPACITY_S` deep, refilled at `BUDGET_REFILL_PER_S`): a user whose files
are costly to re-read (1 MiB of junk rewritten every few seconds) gets at most that share of the
agent's time. A change of a user in debt is deferred, never dropped: `next_deferred_at` says when
the user may be re-read again, and the next `changed_paths` call from then on (the daemon
schedules one) re-reads the files as they are then, so the last change is reported. Full scans
read everything and are not charged (they are the periodic safety net).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import posixpath
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from agent.host.safefs import HostFS
from agent.host.scan import (
    NOTHING_THERE,
    FileResult,
    Plan,
    ScanContext,
    ScanSettings,
    Target,
    TargetKey,
    assemble,
    plan_targets,
    read_target,
    scan_host,
    target_key,
)
from agent.host.users import UserSource
from agent.inventory.diff import Change, diff_errors, diff_inventories, diff_keys, diff_trust
from agent.inventory.model import Inventory

log = logging.getLogger("sshklm.discovery")

USER_DATABASE = ("/etc/passwd", "/etc/group")

# One user's re-reads may cost 2 s at once, then 5 % of one core on average: a 1 MiB file of
# invalid lines costs ~3 s to parse, so it is re-read about once a minute however often it is
# rewritten, while a normal file (well under a millisecond) never meets the limit.
BUDGET_CAPACITY_S: Final = 2.0
BUDGET_REFILL_PER_S: Final = 0.05


class ReReadBudget:
    """A token bucket of re-read seconds per user (or per home/path for files of no account).
    Not thread-safe by itself: LiveDiscovery calls it under its lock."""

    def __init__(
        self,
        capacity_s: float = BUDGET_CAPACITY_S,
        refill_per_s: float = BUDGET_REFILL_PER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = capacity_s
        self.refill = refill_per_s
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # who -> (tokens, at); absent: full

    def tokens(self, who: str, now: float | None = None) -> float:
        now = self.clock() if now is None else now
        tokens, at = self._buckets.get(who, (self.capacity, now))
        return min(self.capacity, tokens + (now - at) * self.refill)

    def allowed(self, who: str, now: float | None = None) -> bool:
        """May `who` be re-read now (not in debt)?"""
        return self.tokens(who, now) >= 0

    def charge(self, who: str, cost_s: float, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        left = self.tokens(who, now) - cost_s
        if left >= self.capacity:
            self._buckets.pop(who, None)  # full again: forget it (10,000 users, few in debt)
        else:
            self._buckets[who] = (left, now)

    def ready_at(self, who: str) -> float:
        """When `who` is out of debt (the clock's time)."""
        now = self.clock()
        tokens = self.tokens(who, now)
        return now if tokens >= 0 else now + (-tokens) / self.refill


def budget_key(target: Target) -> str:
    """Whose budget a target's re-read is paid from: its account, else its home or path."""
    if target.user is not None:
        return "user:" + target.user.name
    return "path:" + (target.confine or target.path)


@dataclass(frozen=True)
class WatchSet:
    files: frozenset[str]
    dirs: frozenset[str]


class LiveDiscovery:
    """Thread-safe: the watcher thread and scheduler jobs both call in."""

    def __init__(
        self,
        fs: HostFS,
        users: UserSource,
        settings: ScanSettings,
        make_context: Callable[[], ScanContext],
        *,
        budget: ReReadBudget | None = None,
    ) -> None:
        self._fs = fs
        self._budget = budget or ReReadBudget()
        # Targets whose re-read waits for their user's budget (by target key).
        self._deferred: dict[TargetKey, Target] = {}
        self._users = users
        self._settings = settings
        self._make_context = make_context
        self._lock = threading.RLock()
        self._plan: Plan | None = None
        # Only the files that exist: a missing target's result is NOTHING_THERE.
        self._results: dict[TargetKey, FileResult] = {}
        self._inventory: Inventory | None = None
        # A path's target, or its targets when one file serves several accounts (rare): a
        # one-element tuple per path would cost 2 MB at 10,000 users.
        self._by_path: dict[str, Target | tuple[Target, ...]] = {}
        # Files reached through a symlink, by where they really are: a change there is a change
        # of the target file too, so they are watched as well.
        self._via_link: dict[str, tuple[Target, ...]] = {}
        self.generation = 0
        # Bumped on each new plan, and when the files reached through symlinks change: callers
        # compare them to know when the set of paths to watch may have changed.
        self.plan_generation = 0
        self.watch_version = 0

    @property
    def inventory(self) -> Inventory | None:
        return self._inventory

    def full_scan(
        self,
        previous: Inventory | None = None,
        *,
        load_previous: Callable[[], Inventory | None] | None = None,
    ) -> list[Change]:
        """Re-plan and re-read everything. When this is the first scan of the process, changes
        are computed against `previous`, or what `load_previous` returns (e.g. the state store's
        last inventory). It is called after the scan: the scan's long-lived objects are then
        allocated before the baseline's temporaries, which are freed whole afterwards rather
        than leaving holes between them (~10 MB of RSS at 10,000 keys)."""
        with self._lock:
            ctx = self._next_context()
            self._deferred.clear()  # everything is read now
            plan, results, inventory = scan_host(self._fs, self._users, self._settings, ctx)
            before = self._inventory or previous
            if before is None and load_previous is not None:
                before = load_previous()
            self._install(plan, results, inventory)
            return diff_inventories(before, inventory)

    def plan_watch_set(self) -> WatchSet:
        """Plan without reading (sshd_config and the users only): what to watch *before* the
        first scan reads it, so nothing that changes during that scan goes unseen."""
        with self._lock:
            ctx = self._make_context()
            self._install_plan(plan_targets(self._fs, self._users, self._settings, ctx.sshd_version))
        return self.watch_set()

    def next_deferred_at(self) -> float | None:
        """When the earliest deferred re-read may run (the budget's clock), None when none waits."""
        with self._lock:
            if not self._deferred:
                return None
            return min(self._budget.ready_at(budget_key(t)) for t in self._deferred.values())

    def deferred_delay_s(self) -> float | None:
        """Seconds until the earliest deferred re-read may run, None when none waits."""
        due = self.next_deferred_at()
        return None if due is None else max(0.0, due - self._budget.clock())

    def changed_paths(self, paths: Iterable[str]) -> list[Change]:
        """Re-read only what `paths` (host paths from the watcher) can affect, and what was
        deferred before and may be re-read now. A target whose user is over the re-read budget
        is deferred (see the module docstring); an empty `paths` re-reads only what is due."""
        paths = set(paths)
        with self._lock:
            if self._plan is None or self._inventory is None or self._needs_replan(paths):
                return self.full_scan()
            targets = self._affordable([*self._deferred.values(), *self._targets_for(paths)])
            if not targets:
                return []
            ctx = self._next_context()
            results = dict(self._results)
            clock = self._budget.clock
            for target in targets:
                who = budget_key(target)
                if not self._budget.allowed(who):  # its earlier files of this round spent it
                    self._defer(target)
                    continue
                started = clock()
                results[target_key(target)] = read_target(self._fs, target, self._plan, ctx)
                self._budget.charge(who, clock() - started)
            before = self._inventory
            files_read = [
                t.path for t in self._plan.targets if results.get(target_key(t), NOTHING_THERE).read
            ]
            self._install(self._plan, results, assemble(self._plan, results, ctx, files_read))
            assert before is not None and self._inventory is not None
            scope = {t.path for t in targets}
            # Identity keys are reported under the file inside ~/.ssh, not the directory.
            scope |= {
                k.path for k in (*before.keys, *self._inventory.keys) if posixpath.dirname(k.path) in scope
            }
            # A KRL revokes keys in every file: its change is compared over all of them.
            key_scope = None if any(t.kind == "revoked_keys" for t in targets) else scope
            changes = diff_keys(before.keys, self._inventory.keys, paths=key_scope)
            changes += diff_errors(
                [e for e in before.errors if e.path in scope],
                [e for e in self._inventory.errors if e.path in scope],
            )
            changes += diff_trust(before, self._inventory)
            return changes

    def _affordable(self, targets: list[Target]) -> list[Target]:
        """The targets to re-read now (each once); the others join the deferred ones."""
        now = self._budget.clock()
        ready: dict[TargetKey, Target] = {}
        for target in targets:
            key = target_key(target)
            if self._budget.allowed(budget_key(target), now):
                ready[key] = target
                self._deferred.pop(key, None)
            else:
                self._defer(target)
        return list(ready.values())

    def _defer(self, target: Target) -> None:
        who = budget_key(target)
        if not any(budget_key(t) == who for t in self._deferred.values()):
            # Once per episode, not per change: the line says who and for how long.
            wait = max(0.0, self._budget.ready_at(who) - self._budget.clock())
            log.info("re-reads of %s deferred %.0f s: over the re-read budget", who.split(":", 1)[1], wait)
        self._deferred[target_key(target)] = target

    def watch_set(self) -> WatchSet:
        with self._lock:
            if self._plan is None:
                return WatchSet(frozenset(), frozenset())
            files = {t.path for t in self._plan.targets if t.kind != "identity_dir"}
            files |= set(self._plan.config_files) | set(USER_DATABASE) | set(self._via_link)
            dirs = {t.path for t in self._plan.targets if t.kind == "identity_dir"}
            # Include directories: every entry is a target, so a drop-in that appears is seen.
            dirs |= include_dirs(self._plan.include_patterns)
            return WatchSet(frozenset(files), frozenset(dirs))

    def _needs_replan(self, paths: set[str]) -> bool:
        assert self._plan is not None
        replan_files = set(self._plan.config_files) | set(USER_DATABASE)
        if paths & replan_files:
            return True
        # A file that comes to match an Include pattern (a new sshd_config.d/*.conf) is not in
        # config_files yet; the directory itself (watched as a whole) means: look again.
        patterns = self._plan.include_patterns
        dirs = include_dirs(patterns)
        return any(p in dirs or matches_include(p, patterns) for p in paths)

    def _targets_for(self, paths: set[str]) -> list[Target]:
        out: dict[TargetKey, Target] = {}
        for path in paths:
            for target in (*self._targets_at(path), *self._via_link.get(path, ())):
                out[target_key(target)] = target
            for target in self._targets_at(posixpath.dirname(path)):
                if target.kind == "identity_dir":
                    out[target_key(target)] = target
        return list(out.values())

    def _targets_at(self, path: str) -> tuple[Target, ...]:
        found = self._by_path.get(path, ())
        return (found,) if isinstance(found, Target) else found

    def _next_context(self) -> ScanContext:
        self.generation += 1
        ctx = self._make_context()
        ctx.generation = self.generation
        return ctx

    def _install(self, plan: Plan, results: dict[TargetKey, FileResult], inventory: Inventory) -> None:
        self._install_plan(plan)
        self._results = share_final_records(results, inventory)
        self._inventory = inventory
        via_link = self._links_of(self._results)
        if via_link.keys() != self._via_link.keys():
            self.watch_version += 1
        self._via_link = via_link

    def _links_of(self, results: dict[TargetKey, FileResult]) -> dict[str, tuple[Target, ...]]:
        out: dict[str, tuple[Target, ...]] = {}
        for (path, user, kind), result in results.items():
            if result.realpath is None:
                continue
            for target in self._targets_at(path):
                if (target.user.name if target.user else "") == user and target.kind == kind:
                    out[result.realpath] = (*out.get(result.realpath, ()), target)
        return out

    def _install_plan(self, plan: Plan) -> None:
        if plan is not self._plan:
            self.plan_generation += 1
        self._plan = plan
        by_path: dict[str, Target | tuple[Target, ...]] = {}
        for target in plan.targets:
            earlier = by_path.get(target.path)
            if earlier is None:
                by_path[target.path] = target
            else:
                by_path[target.path] = (*(earlier if isinstance(earlier, tuple) else (earlier,)), target)
        self._by_path = by_path


def share_final_records(
    results: dict[TargetKey, FileResult], inventory: Inventory
) -> dict[TargetKey, FileResult]:
    """Point the per-file results at the inventory's records (the same keys with their risk)
    so each key is held once, not twice (about 2 MB at 10,000 keys), and leave out the files
    that do not exist (NOTHING_THERE is implied). Re-assembling from these results later
    computes the same inventory: risk is recomputed from the other fields."""
    final = {(r.kind, r.user, r.path, r.line): r for r in inventory.keys}
    shared: dict[TargetKey, FileResult] = {}
    for key, result in results.items():
        if result is NOTHING_THERE:
            continue
        if result.records:
            records = tuple(final.get((r.kind, r.user, r.path, r.line), r) for r in result.records)
            result = dataclasses.replace(result, records=records)
        shared[key] = result
    return shared


def include_dirs(patterns: Iterable[str]) -> set[str]:
    """The directories of Include patterns whose directory part is a plain path (no glob
    characters): the ones a watch can cover. Pure."""
    out: set[str] = set()
    for pattern in patterns:
        directory = posixpath.dirname(pattern)
        if directory and not any(c in directory for c in "*?["):
            out.add(directory)
    return out


def matches_include(path: str, patterns: Iterable[str]) -> bool:
    """Would sshd's glob() of one of `patterns` include `path`? Component by component, as
    glob(3) matches (a `*` never crosses a `/`), and a leading dot only by an explicit one. Pure."""
    parts = path.split("/")
    for pattern in patterns:
        wanted = pattern.split("/")
        if len(wanted) != len(parts):
            continue
        if all(_component_matches(name, glob) for name, glob in zip(parts, wanted, strict=True)):
            return True
    return False


def _component_matches(name: str, glob: str) -> bool:
    if name.startswith(".") and not glob.startswith("."):
        return False
    return fnmatch.fnmatchcase(name, glob)
