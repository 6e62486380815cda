"""Discovery: walk the host through the safe file layer and build an Inventory.

Shell code with a pure middle. `plan_targets` decides (from sshd_config and the user
database) which files sshd would read and which other places hold keys; `read_target`
reads one file and turns it into records; `assemble` adds the cross-file facts (shared keys,
risk, policy) and produces the Inventory. The daemon reuses the same three steps to re-read
only the files that changed.

Where things are: ``scan_plan.py`` (step one), ``scan_read.py`` (step two), ``sshd_files.py``
(sshd_config and a user's AuthorizedKeysFile list, shared with the applier), and here step three
plus ``scan_host``, which runs all three. The public names of all three steps are importable
from this module.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Collection, Iterable, Iterator, Mapping

from agent.host.safefs import HostFS
from agent.host.scan_plan import (
    DEFAULT_AUTHORIZED_KEYS,
    Plan,
    ScanSettings,
    Target,
    TargetKey,
    TargetKind,
    plan_targets,
    shared_primary_gids,
    target_key,
)
from agent.host.scan_read import (
    NOTHING_THERE,
    READ_NOTHING,
    FileResult,
    ScanContext,
    read_target,
    read_targets,
)
from agent.host.users import UserSource
from agent.inventory.evaluate import RiskInputs, risk_of
from agent.inventory.model import Inventory, KrlSummary, Risk, intern_risk
from agent.inventory.revocation import with_krl

__all__ = [
    "DEFAULT_AUTHORIZED_KEYS",
    "NOTHING_THERE",
    "READ_NOTHING",
    "FileResult",
    "Plan",
    "ScanContext",
    "ScanSettings",
    "Target",
    "TargetKey",
    "TargetKind",
    "assemble",
    "gc_paused",
    "plan_targets",
    "read_target",
    "read_targets",
    "scan_host",
    "shared_primary_gids",
    "target_key",
    "users_per_key",
]


def users_per_key(results: Iterable[FileResult]) -> dict[str, set[str]]:
    """Fingerprint -> accounts that authorize it (the 'shared key' fact). Pure."""
    out: dict[str, set[str]] = {}
    for res in results:
        for r in res.records:
            if r.user and r.kind in ("authorized_key", "authorized_principal_ca"):
                users = out.get(r.fingerprint)
                if users is None:
                    out[r.fingerprint] = {r.user}
                else:
                    users.add(r.user)
    return out


def assemble(
    plan: Plan,
    results: Mapping[TargetKey, FileResult],
    ctx: ScanContext,
    files_read: Iterable[str],
    *,
    key_users: Mapping[str, Collection[str]] | None = None,
) -> Inventory:
    """Cross-file facts (shared keys), risk and policy, then the Inventory. Pure.

    `key_users` is `users_per_key` over the whole host when `results` holds only part of it
    (only "shared" matters: entries with a single account may be left out)."""
    records = [(r, res.orphaned, res.partly_read) for res in results.values() for r in res.records]
    errors = list(plan.errors) + [e for res in results.values() for e in res.errors]
    krls = {res.krl.path: res.krl for res in results.values() if res.krl is not None}
    global_krl = krls.get(plan.revoked_keys) if plan.revoked_keys else None
    krl_for = plan.revoked_keys_for
    if key_users is None:
        key_users = users_per_key(results.values())
    final = []
    now = ctx.now
    policy = ctx.policy
    # Keys differ in few ways that matter to risk: most records share their inputs with another
    # (same file age, type and size), and so can share one Risk.
    risks: dict[RiskInputs, Risk] = {}
    for r, orphaned, partly_read in records:
        if global_krl is not None or r.revoked or krl_for:
            r = with_krl(r, _krl_of(r.user, global_krl, krl_for, krls))
        kind = r.kind
        first_seen, file_mtime = r.first_seen, r.file_mtime
        since = min(first_seen, file_mtime) if first_seen and file_mtime else first_seen or file_mtime
        authorized = kind in ("authorized_key", "authorized_principal_ca")
        inputs = RiskInputs(
            kind=kind,
            base_type=_base_type(r.type),
            bits=r.bits,
            age=(now - since) if since else None,
            encrypted=r.encrypted,
            grants_root=r.uid == 0 and authorized,
            orphaned=orphaned,
            shared=kind == "authorized_key" and len(key_users.get(r.fingerprint, ())) > 1,
            managed=r.managed_by is not None,
            has_from="from" in r.options,
            revoked=r.revoked,
            partly_read=partly_read,
        )
        risk = risks.get(inputs)
        if risk is None:
            risk = risks[inputs] = intern_risk(risk_of(inputs, policy))
        final.append(r.with_risk(risk))
    final.sort(key=lambda r: (r.kind, r.user or "", r.path, r.line or 0))
    principals = sorted(
        (p for res in results.values() for p in res.principals), key=lambda p: (p.user, p.path, p.line)
    )
    return Inventory(
        snapshot_id=ctx.snapshot_id,
        generation=ctx.generation,
        collected_at=ctx.now,
        host_id=ctx.host_id,
        sshd=plan.summary,
        keys=tuple(final),
        errors=tuple(errors),
        krl=global_krl,
        principals=tuple(principals),
        users_scanned=len(plan.users),
        files_read=tuple(files_read),
    )


def _krl_of(
    user: str | None,
    global_krl: KrlSummary | None,
    krl_for: Mapping[str, str | None],
    krls: Mapping[str, KrlSummary],
) -> KrlSummary | None:
    """The KRL sshd checks `user`'s keys against (a Match block may name another, or none)."""
    if user is None or user not in krl_for:
        return global_krl
    path = krl_for[user]
    return krls.get(path) if path else None


def _base_type(type_name: str) -> str:
    return type_name.removesuffix("-cert-v01@openssh.com").replace("-cert-v01", "")


def scan_host(
    fs: HostFS, users: UserSource, settings: ScanSettings, ctx: ScanContext
) -> tuple[Plan, dict[TargetKey, FileResult], Inventory]:
    """A full discovery. Returns the plan and per-file results so callers can re-read single files."""
    with gc_paused():
        plan = plan_targets(fs, users, settings, ctx.sshd_version)
        results = read_targets(fs, plan.targets, plan, ctx)
        read = [t.path for t in plan.targets if results[target_key(t)].read]
        return plan, results, assemble(plan, results, ctx, read)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector (process-wide) for a bulk build of acyclic objects.

    A large scan allocates millions of containers (records, dicts, tuples) and none of them form
    cycles, yet each allocation burst triggers collections that traverse the ever-growing heap:
    a third of a 100,000-key scan's time. Nested use is fine; only the outermost re-enables."""
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()
