"""Discovery, step one: which files sshd would read and which other places hold keys. Pure over
the user database and sshd_config (loaded through the safe file layer); the only reads are the
config itself, a glob for host keys and the listing of /home for homes without an account.
"""

from __future__ import annotations

import posixpath
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from agent.host.safefs import HostFS, UnsafePath
from agent.host.sshd_files import authorized_keys_paths, load_sshd_config, normalize_path
from agent.host.users import User, UserSource
from agent.inventory.model import ScanError, SshdSummary
from agent.ssh.sshd_config import EffectiveSshdConfig, MatchContext, expand_user_path, resolve

DEFAULT_AUTHORIZED_KEYS = (".ssh/authorized_keys", ".ssh/authorized_keys2")
DEFAULT_SSH_KEYGEN = "/usr/bin/ssh-keygen"

TargetKind = Literal[
    "authorized_keys",
    "identity_dir",
    "host_key",
    "trusted_user_ca",
    "config",
    "revoked_keys",
    "authorized_principals",
]


@dataclass(frozen=True)
class ScanSettings:
    sshd_config: str = "/etc/ssh/sshd_config"
    host_keys: bool = True
    identity_keys: bool = True
    orphan_homes: bool = True
    skip_users: frozenset[str] = frozenset()
    ssh_keygen: str = DEFAULT_SSH_KEYGEN  # lists the KRL (`ssh-keygen -Q -l`)


@dataclass(frozen=True, slots=True)  # slots: one per planned file / account, 10,000s of them
class Target:
    """One place discovery reads. `not_read_by_sshd` marks files kept for visibility only.
    `confine` is the home of the account whose file it is (None for root's own files: host keys,
    CA keys); the safe file layer follows links by the trust rules relative to it."""

    path: str
    kind: TargetKind
    user: User | None = None
    confine: str | None = None
    not_read_by_sshd: str | None = None
    grants_root: bool = False


TargetKey = tuple[str, str, str]  # see target_key


@dataclass(frozen=True)
class Plan:
    sshd: EffectiveSshdConfig
    summary: SshdSummary
    targets: tuple[Target, ...]
    config_files: tuple[str, ...]
    users: tuple[User, ...]
    errors: tuple[ScanError, ...]
    shared_primary_gids: frozenset[int]
    # sshd's RevokedKeys: the global file, and the accounts a Match block gives another one (or none).
    revoked_keys: str | None = None
    revoked_keys_for: Mapping[str, str | None] = field(default_factory=dict)
    ssh_keygen: str = DEFAULT_SSH_KEYGEN
    # sshd_config's Include patterns (absolute globs): a file that comes to match one is a new
    # part of sshd's configuration, even in a directory that holds none yet.
    include_patterns: tuple[str, ...] = ()


def _summary(eff: EffectiveSshdConfig, version: str | None) -> SshdSummary:
    return SshdSummary(
        version=version,
        authorized_keys_file=tuple(eff.authorized_keys_files),
        authorized_keys_command=eff.authorized_keys_command,
        trusted_user_ca_keys=eff.trusted_user_ca_keys,
        permit_root_login=eff.permit_root_login,
        password_authentication=eff.password_authentication,
        pubkey_authentication=eff.pubkey_authentication,
        strict_modes=eff.strict_modes,
        revoked_keys=eff.revoked_keys,
        authorized_principals_file=eff.authorized_principals_file,
    )


def shared_primary_gids(users: Iterable[User]) -> frozenset[int]:
    """Debian's StrictModes tolerates group write for a group only its owner is in.

    Approximation (documented): a user's primary group counts as private when no other account
    has it as primary group. The complement is small (the gids shared as a primary group), so
    that is what the plan keeps rather than one entry per account.
    """
    primary = Counter(u.gid for u in users)
    return frozenset(gid for gid, count in primary.items() if count > 1)


def plan_targets(
    fs: HostFS, users: UserSource, settings: ScanSettings, sshd_version: str | None = None
) -> Plan:
    parsed, errors = load_sshd_config(fs, settings.sshd_config)
    global_cfg = resolve(parsed, None)
    all_users = [u for u in users.all() if u.name not in settings.skip_users]
    errors += [e for e in users.problems() if e.user not in settings.skip_users]
    targets: list[Target] = []
    if settings.host_keys:
        targets += _host_key_targets(fs, global_cfg)
    ca_files: dict[str, None] = {}
    if global_cfg.trusted_user_ca_keys:
        ca_files[global_cfg.trusted_user_ca_keys] = None
    homes: set[str] = set()
    krl_files: dict[str, None] = {global_cfg.revoked_keys: None} if global_cfg.revoked_keys else {}
    krl_for: dict[str, str | None] = {}
    for user in all_users:
        eff = resolve(parsed, MatchContext(user.name, user.groups))
        if eff.trusted_user_ca_keys:
            ca_files[eff.trusted_user_ca_keys] = None
        if eff.revoked_keys != global_cfg.revoked_keys:
            krl_for[user.name] = eff.revoked_keys
            if eff.revoked_keys:
                krl_files[eff.revoked_keys] = None
        targets += _user_targets(user, eff, settings)
        homes.add(normalize_path(user.home))
    for ca in ca_files:
        targets.append(Target(ca, "trusted_user_ca"))
    # Root's own files: sshd (root) follows a RevokedKeys symlink made by root, wherever it points;
    # the safe file layer's trust rules for root's files do the same (confine None).
    for krl in krl_files:
        targets.append(Target(krl, "revoked_keys"))
    if settings.orphan_homes:
        targets += _orphan_targets(fs, all_users, homes)
    return Plan(
        sshd=global_cfg,
        summary=_summary(global_cfg, sshd_version),
        targets=_dedupe(targets),
        config_files=tuple(dict.fromkeys([settings.sshd_config, *parsed.included_files])),
        users=tuple(all_users),
        errors=tuple(errors),
        shared_primary_gids=shared_primary_gids(all_users),
        revoked_keys=global_cfg.revoked_keys,
        revoked_keys_for=krl_for,
        ssh_keygen=settings.ssh_keygen,
        include_patterns=tuple(parsed.include_patterns),
    )


def _dedupe(targets: list[Target]) -> tuple[Target, ...]:
    seen: set[tuple[str, str, str | None]] = set()
    out = []
    for t in targets:
        key = (t.path, t.kind, t.user.name if t.user else None)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return tuple(out)


def _host_key_targets(fs: HostFS, cfg: EffectiveSshdConfig) -> list[Target]:
    paths = [p + ".pub" for p in cfg.host_keys]
    paths += fs.glob("/etc/ssh/ssh_host_*_key.pub")
    paths += list(cfg.host_certificates)
    return [Target(p, "host_key") for p in dict.fromkeys(paths)]


def _user_targets(user: User, eff: EffectiveSshdConfig, settings: ScanSettings) -> list[Target]:
    home = normalize_path(user.home)
    is_root = user.uid == 0
    out: list[Target] = []
    read_by_sshd: list[str] = []
    for path in authorized_keys_paths(user, eff):
        read_by_sshd.append(path)
        out.append(Target(path, "authorized_keys", user=user, confine=home, grants_root=is_root))
    # Keys in the usual places that sshd is configured not to read are still worth reporting.
    for template in DEFAULT_AUTHORIZED_KEYS:
        path = normalize_path(posixpath.join(home, template))
        if path not in read_by_sshd:
            out.append(
                Target(
                    path,
                    "authorized_keys",
                    user=user,
                    confine=home,
                    not_read_by_sshd="file not read by sshd (not in AuthorizedKeysFile)",
                    grants_root=is_root,
                )
            )
    if settings.identity_keys:
        out.append(
            Target(normalize_path(posixpath.join(home, ".ssh")), "identity_dir", user=user, confine=home)
        )
    if eff.authorized_principals_file:
        try:
            principals = expand_user_path(
                eff.authorized_principals_file, user=user.name, uid=user.uid, home=home
            )
        except ValueError:
            principals = None  # an unknown %-token: sshd fails the same way
        if principals is not None:
            path = normalize_path(principals)
            out.append(Target(path, "authorized_principals", user=user, confine=home, grants_root=is_root))
    return out


def _orphan_targets(fs: HostFS, users: list[User], homes: set[str]) -> list[Target]:
    """Homes under the usual parents that belong to no account: their keys are orphaned."""
    parents = {posixpath.dirname(h) for h in homes if h.count("/") == 2} | {"/home"}
    out: list[Target] = []
    for parent in sorted(parents):
        try:
            names = fs.listdir(parent)
        except (UnsafePath, OSError):
            continue
        for name in names:
            home = posixpath.join(parent, name)
            if home in homes:
                continue
            for template in DEFAULT_AUTHORIZED_KEYS:
                out.append(
                    Target(
                        posixpath.join(home, template),
                        "authorized_keys",
                        user=None,
                        confine=home,
                        not_read_by_sshd="no account has this home",
                    )
                )
    return out


def target_key(target: Target) -> TargetKey:
    """Results are keyed per (path, user): one file may serve several accounts. A tuple of the
    target's own strings: a joined string per target costs twice as much (30,000 of them at
    10,000 users)."""
    return (target.path, target.user.name if target.user else "", target.kind)
