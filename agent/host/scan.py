"""Discovery: walk the host through the safe file layer and build an Inventory.

Shell code with a pure middle. `plan_targets` decides (from sshd_config and the user
database) which files sshd would read and which other places hold keys; `read_target`
reads one file and turns it into records; `assemble` adds the cross-file facts (shared keys,
risk, policy) and produces the Inventory. The daemon reuses the same three steps to re-read
only the files that changed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import posixpath
import uuid
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Final, Literal

from agent.host.safefs import DirReads, FileInfo, FileReads, HostFS, ReadResult, UnsafePath
from agent.host.users import User, UserSource
from agent.inventory.evaluate import (
    LineFacts,
    Policy,
    RiskInputs,
    SshdFacts,
    line_problem,
    risk_of,
    strict_modes_problem,
)
from agent.inventory.model import (
    NO_OPTIONS,
    Inventory,
    KeyKind,
    KeyRecord,
    Risk,
    ScanError,
    SshdSummary,
    intern_risk,
)
from agent.ssh.authorized_keys import DEFAULT_OPTIONS, expiry_time_utc, parse_authorized_keys
from agent.ssh.keys import InvalidKey, PublicKey, parse_public_blob, parse_public_key_text
from agent.ssh.privkey import looks_like_private_key, parse_private_key_file
from agent.ssh.sshd_config import (
    EffectiveSshdConfig,
    MatchContext,
    ParsedSshdConfig,
    expand_user_path,
    parse_sshd_config,
    resolve,
)

DEFAULT_AUTHORIZED_KEYS = (".ssh/authorized_keys", ".ssh/authorized_keys2")
# Files in ~/.ssh that are never private keys; skipping them saves a read per user.
_NOT_IDENTITY = (
    "authorized_keys",
    "authorized_keys2",
    "known_hosts",
    "known_hosts.old",
    "config",
    "environment",
    "rc",
)
_IDENTITY_HEAD_BYTES = 64 * 1024

TargetKind = Literal["authorized_keys", "identity_dir", "host_key", "trusted_user_ca", "config"]


@dataclass(frozen=True)
class ScanSettings:
    sshd_config: str = "/etc/ssh/sshd_config"
    host_keys: bool = True
    identity_keys: bool = True
    orphan_homes: bool = True
    skip_users: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)  # slots: one per planned file / account, 10,000s of them
class Target:
    """One place discovery reads. `not_read_by_sshd` marks files kept for visibility only."""

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


@dataclass(frozen=True, slots=True)  # slots: one per planned file / account, 10,000s of them
class FileResult:
    records: tuple[KeyRecord, ...] = ()
    errors: tuple[ScanError, ...] = ()
    read: bool = False
    # Owner account gone, or the file owned by another uid: every key in it is orphaned.
    orphaned: bool = False
    # Where the file really is, when a symlink led elsewhere (the daemon watches that path too).
    realpath: str | None = None


# Most planned files do not exist (authorized_keys2, homes without keys): one shared result.
NOTHING_THERE = FileResult()
# Most ~/.ssh directories hold no identity key: one shared result for those too.
READ_NOTHING = FileResult(read=True)


@dataclass
class ScanContext:
    """The injected world of one scan: time, zone and what the state store remembers."""

    now: datetime
    local_tz: tzinfo
    host_id: str | None = None
    generation: int = 1
    snapshot_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    sshd_version: str | None = None
    policy: Policy | None = None
    first_seen: Mapping[tuple[str, str | None, str], datetime] = field(default_factory=dict)
    last_used: Mapping[tuple[str, str | None], datetime] = field(default_factory=dict)
    managed: Mapping[tuple[str, str | None, str], tuple[str, datetime | None]] = field(default_factory=dict)


# --- planning ---------------------------------------------------------------------------------


def load_sshd_config(fs: HostFS, path: str) -> tuple[ParsedSshdConfig, list[ScanError]]:
    errors: list[ScanError] = []

    def load_include(pattern: str) -> list[tuple[str, str]]:
        out = []
        for match in fs.glob(pattern):
            try:
                out.append((match, _text(fs.read(match))))
            except (UnsafePath, OSError) as exc:
                errors.append(ScanError(match, None, _reason(exc)))
        return out

    try:
        text = _text(fs.read(path))
    except (UnsafePath, OSError) as exc:
        if not isinstance(exc, FileNotFoundError):
            errors.append(ScanError(path, None, _reason(exc)))
        text = ""
    return parse_sshd_config(text, path, load_include), errors


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
    targets: list[Target] = []
    if settings.host_keys:
        targets += _host_key_targets(fs, global_cfg)
    ca_files: dict[str, None] = {}
    if global_cfg.trusted_user_ca_keys:
        ca_files[global_cfg.trusted_user_ca_keys] = None
    homes: set[str] = set()
    for user in all_users:
        eff = resolve(parsed, MatchContext(user.name, user.groups))
        if eff.trusted_user_ca_keys:
            ca_files[eff.trusted_user_ca_keys] = None
        targets += _user_targets(user, eff, settings)
        homes.add(_norm(user.home))
    for ca in ca_files:
        targets.append(Target(ca, "trusted_user_ca", confine=posixpath.dirname(ca) or "/"))
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


def _norm(path: str) -> str:
    """posixpath.normpath, skipped for the common already-normal absolute path (10 calls a user)."""
    if not path:
        return "/"
    if path == "/" or (
        path[0] == "/"
        and "//" not in path
        and "/./" not in path
        and "/../" not in path
        and not path.endswith(("/", "/.", "/.."))
    ):
        return path
    return posixpath.normpath(path)


def _host_key_targets(fs: HostFS, cfg: EffectiveSshdConfig) -> list[Target]:
    paths = [p + ".pub" for p in cfg.host_keys]
    paths += fs.glob("/etc/ssh/ssh_host_*_key.pub")
    paths += list(cfg.host_certificates)
    return [Target(p, "host_key", confine="/") for p in dict.fromkeys(paths)]


def authorized_keys_paths(user: User, eff: EffectiveSshdConfig, *, conditional: bool = True) -> list[str]:
    """The authorized keys files sshd reads for `user`, in sshd's order (normalised absolute
    paths). `conditional=False` leaves out files set only under Match blocks whose connection
    criteria are unknown here. Templates that do not expand are skipped."""
    home = _norm(user.home)
    templates = list(eff.authorized_keys_files)
    if conditional:
        templates += list(eff.conditional_authorized_keys_files)
    out: list[str] = []
    for template in templates:
        try:
            path = expand_user_path(template, user=user.name, uid=user.uid, home=home)
        except ValueError:
            continue
        if path is not None:
            out.append(_norm(path))
    return out


def authorized_keys_confine(path: str, home: str) -> str:
    """The directory a read or write of `path` must stay inside: the home when the file is
    under it (the user controls it), else the file's own directory."""
    home = _norm(home)
    return home if _under(path, home) else posixpath.dirname(path)


def _user_targets(user: User, eff: EffectiveSshdConfig, settings: ScanSettings) -> list[Target]:
    home = _norm(user.home)
    is_root = user.uid == 0
    out: list[Target] = []
    read_by_sshd: list[str] = []
    for path in authorized_keys_paths(user, eff):
        read_by_sshd.append(path)
        confine = authorized_keys_confine(path, home)
        out.append(Target(path, "authorized_keys", user=user, confine=confine, grants_root=is_root))
    # Keys in the usual places that sshd is configured not to read are still worth reporting.
    for template in DEFAULT_AUTHORIZED_KEYS:
        path = _norm(posixpath.join(home, template))
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
        out.append(Target(_norm(posixpath.join(home, ".ssh")), "identity_dir", user=user, confine=home))
    return out


def _under(path: str, directory: str) -> bool:
    return directory == "/" or path == directory or path.startswith(directory.rstrip("/") + "/")


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


# --- reading ----------------------------------------------------------------------------------


def _text(result: ReadResult) -> str:
    return result.data.decode("utf-8", "replace")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UnsafePath):
        return exc.reason
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


def _mtime(info: FileInfo) -> datetime:
    return datetime.fromtimestamp(info.mtime, UTC)


def read_target(fs: FileReads, target: Target, plan: Plan, ctx: ScanContext) -> FileResult:
    """Read one target. Missing files are normal (no error); anything unsafe is an error.
    `fs` is the HostFS, or a DirReads over it when reading many targets in a row."""
    try:
        if target.kind == "identity_dir":
            return _read_identity_dir(fs, target, ctx)
        result = fs.read(target.path, confine=target.confine)
    except (FileNotFoundError, NotADirectoryError):
        return NOTHING_THERE
    except (UnsafePath, OSError) as exc:
        user = target.user.name if target.user else None
        return FileResult(errors=(ScanError(target.path, user, _reason(exc)),), read=True)
    if target.kind == "authorized_keys":
        found = _authorized_records(result, target, plan, ctx)
    else:
        found = _plain_key_records(result, target, ctx)
    if result.realpath != target.path:
        found = dataclasses.replace(found, realpath=result.realpath)
    return found


def _truncation_error(result: ReadResult, target: Target) -> tuple[ScanError, ...]:
    if not result.truncated:
        return ()
    user = target.user.name if target.user else None
    return (ScanError(target.path, user, "file larger than discovery.max_file_bytes; rest not read"),)


def _authorized_records(result: ReadResult, target: Target, plan: Plan, ctx: ScanContext) -> FileResult:
    user = target.user
    user_name = user.name if user else None
    uid = user.uid if user else None
    errors = list(_truncation_error(result, target))
    file_problem = target.not_read_by_sshd
    if file_problem is None and user is not None and plan.sshd.strict_modes:
        file_problem = strict_modes_problem(
            result.info,
            result.chain,
            uid=user.uid,
            home=_norm(user.home),
            private_gids=() if user.gid in plan.shared_primary_gids else (user.gid,),
        )
    orphaned = user is None or result.info.uid not in (0, user.uid)
    sshd_facts = SshdFacts(
        plan.sshd.pubkey_authentication, plan.sshd.permit_root_login, plan.sshd.strict_modes
    )
    records: list[KeyRecord] = []
    mtime = _mtime(result.info)
    path = target.path

    def problem_of(facts: LineFacts) -> str | None:
        return file_problem or line_problem(
            facts,
            sshd=sshd_facts,
            is_root=target.grants_root,
            now=ctx.now,
            local_tz=ctx.local_tz,
            parse_expiry=expiry_time_utc,
        )

    # A line without options or certificate gets the same verdict as every other such line of
    # this file: evaluate it once (most lines are plain).
    plain_problem = problem_of(_PLAIN_LINE)
    for line in parse_authorized_keys(result.data):
        if line.kind != "key" or line.key is None:
            if line.kind == "invalid":
                errors.append(ScanError(path, user_name, line.error or "invalid line", line=line.number))
            continue
        key = line.key
        opts = line.options
        fingerprint = key.fingerprint
        expires_at: datetime | None = None
        if opts is DEFAULT_OPTIONS and key.certificate is None:
            kind: KeyKind = "authorized_key"
            problem = plain_problem
            options: Mapping[str, object] = NO_OPTIONS
        else:
            facts = LineFacts(
                options_error=line.options_error,
                expiry_time=opts.expiry_time if opts else None,
                has_principals=bool(opts and opts.principals is not None),
                cert_authority=bool(opts and opts.cert_authority),
                has_command=bool(opts and opts.command is not None),
                certificate_valid_before=key.certificate.valid_before if key.certificate else None,
            )
            problem = problem_of(facts)
            kind = "authorized_principal_ca" if facts.cert_authority else "authorized_key"
            options = opts.to_json() if opts and not line.options_error else NO_OPTIONS
            if opts and opts.expiry_time and not line.options_error:
                try:
                    expires_at = expiry_time_utc(opts.expiry_time, ctx.local_tz)
                except ValueError:
                    expires_at = None
        managed_by: str | None = None
        if ctx.managed:
            managed_by, managed_expiry = ctx.managed.get((fingerprint, user_name, path), (None, None))
            expires_at = managed_expiry or expires_at
        records.append(
            KeyRecord(
                kind=kind,
                user=user_name,
                uid=uid,
                path=path,
                line=line.number,
                type=key.type,
                bits=key.bits,
                fingerprint=fingerprint,
                fingerprint_md5=key.fingerprint_md5,
                comment=line.comment,
                options=options,
                certificate=key.certificate,
                effective=problem is None,
                ineffective_reason=problem,
                file_mtime=mtime,
                first_seen=ctx.first_seen.get((fingerprint, user_name, path)) if ctx.first_seen else None,
                last_used=ctx.last_used.get((fingerprint, user_name)) if ctx.last_used else None,
                managed_by=managed_by,
                expires_at=expires_at,
            )
        )
    return FileResult(tuple(records), tuple(errors), read=True, orphaned=orphaned)


_PLAIN_LINE: Final = LineFacts(
    options_error=None,
    expiry_time=None,
    has_principals=False,
    cert_authority=False,
    has_command=False,
    certificate_valid_before=None,
)


def _plain_key_records(result: ReadResult, target: Target, ctx: ScanContext) -> FileResult:
    """Host keys, host certificates and TrustedUserCAKeys: one public key per line."""
    errors = list(_truncation_error(result, target))
    records: list[KeyRecord] = []
    kind: KeyKind = "host_key" if target.kind == "host_key" else "trusted_user_ca"
    for line in parse_authorized_keys(result.data):
        if line.kind == "invalid" or (line.kind == "key" and line.options_text):
            errors.append(ScanError(target.path, None, line.error or "unexpected options", line=line.number))
            continue
        if line.kind != "key" or line.key is None:
            continue
        records.append(
            _record(kind, None, 0, target.path, line.number, line.key, line.comment, result.info, ctx)
        )
    return FileResult(tuple(records), tuple(errors), read=True)


def _record(
    kind: KeyKind,
    user: str | None,
    uid: int | None,
    path: str,
    line: int | None,
    key: PublicKey,
    comment: str,
    info: FileInfo,
    ctx: ScanContext,
    encrypted: bool | None = None,
) -> KeyRecord:
    return KeyRecord(
        kind=kind,
        user=user,
        uid=uid,
        path=path,
        line=line,
        type=key.type,
        bits=key.bits,
        fingerprint=key.fingerprint,
        fingerprint_md5=key.fingerprint_md5,
        comment=comment,
        certificate=key.certificate,
        file_mtime=_mtime(info),
        first_seen=ctx.first_seen.get((key.fingerprint, user, path)),
        last_used=ctx.last_used.get((key.fingerprint, user)) if user else None,
        encrypted=encrypted,
    )


def _read_identity_dir(fs: FileReads, target: Target, ctx: ScanContext) -> FileResult:
    user = target.user
    assert user is not None
    names = fs.listdir(target.path)
    records: list[KeyRecord] = []
    errors: list[ScanError] = []
    for name in names:
        if name.endswith(".pub") or name.startswith(_NOT_IDENTITY):
            continue
        path = posixpath.join(target.path, name)
        try:
            result = fs.read(path, confine=target.confine)
        except (UnsafePath, OSError) as exc:
            if name.startswith("id_"):
                errors.append(ScanError(path, user.name, _reason(exc)))
            continue
        head = result.data[:_IDENTITY_HEAD_BYTES]
        if not looks_like_private_key(head):
            continue
        record_or_error = _identity_record(fs, path, result, user, target, ctx)
        if isinstance(record_or_error, ScanError):
            errors.append(record_or_error)
        else:
            records.append(record_or_error)
    if not records and not errors:
        return READ_NOTHING
    return FileResult(tuple(records), tuple(errors), read=True)


def _identity_record(
    fs: FileReads, path: str, result: ReadResult, user: User, target: Target, ctx: ScanContext
) -> KeyRecord | ScanError:
    """The public half of a private key file; the private bytes go no further than here."""
    try:
        parsed = parse_private_key_file(result.data)
    except ValueError as exc:
        return ScanError(path, user.name, str(exc) or "unreadable private key")
    comment = ""
    key: PublicKey | None = None
    try:
        if parsed.public_blob is not None:
            key = parse_public_blob(parsed.public_blob)
        else:
            # Encrypted PEM keys do not carry the public half in the clear: use the .pub beside it.
            pub = fs.read(path + ".pub", confine=target.confine)
            key, comment = parse_public_key_text(_text(pub).strip())
    except FileNotFoundError:
        return ScanError(path, user.name, "encrypted private key without a .pub file; public key unknown")
    except (InvalidKey, UnsafePath, OSError) as exc:
        return ScanError(path, user.name, _reason(exc) if not isinstance(exc, InvalidKey) else str(exc))
    if not comment:
        comment = _pub_comment(fs, path, target)
    return _record(
        "identity_key",
        user.name,
        user.uid,
        path,
        None,
        key,
        comment,
        result.info,
        ctx,
        encrypted=parsed.encrypted,
    )


def _pub_comment(fs: FileReads, path: str, target: Target) -> str:
    try:
        pub = fs.read(path + ".pub", confine=target.confine)
        _, comment = parse_public_key_text(_text(pub).strip())
        return comment
    except (InvalidKey, UnsafePath, OSError):
        return ""


# --- assembling -------------------------------------------------------------------------------


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
    records = [(r, res.orphaned) for res in results.values() for r in res.records]
    errors = list(plan.errors) + [e for res in results.values() for e in res.errors]
    if key_users is None:
        key_users = users_per_key(results.values())
    final = []
    now = ctx.now
    policy = ctx.policy
    # Keys differ in few ways that matter to risk: most records share their inputs with another
    # (same file age, type and size), and so can share one Risk.
    risks: dict[RiskInputs, Risk] = {}
    for r, orphaned in records:
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
        )
        risk = risks.get(inputs)
        if risk is None:
            risk = risks[inputs] = intern_risk(risk_of(inputs, policy))
        final.append(r.with_risk(risk))
    final.sort(key=lambda r: (r.kind, r.user or "", r.path, r.line or 0))
    return Inventory(
        snapshot_id=ctx.snapshot_id,
        generation=ctx.generation,
        collected_at=ctx.now,
        host_id=ctx.host_id,
        sshd=plan.summary,
        keys=tuple(final),
        errors=tuple(errors),
        users_scanned=len(plan.users),
        files_read=tuple(files_read),
    )


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


def read_targets(
    fs: HostFS, targets: Iterable[Target], plan: Plan, ctx: ScanContext
) -> dict[TargetKey, FileResult]:
    """`read_target` for many targets, keyed by `target_key`. Targets come grouped by directory
    (a user's files, then their ~/.ssh), so each directory is walked once (DirReads)."""
    with DirReads(fs) as reads:
        return {target_key(t): read_target(reads, t, plan, ctx) for t in targets}


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


def target_key(target: Target) -> TargetKey:
    """Results are keyed per (path, user): one file may serve several accounts. A tuple of the
    target's own strings: a joined string per target costs twice as much (30,000 of them at
    10,000 users)."""
    return (target.path, target.user.name if target.user else "", target.kind)
