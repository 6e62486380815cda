"""Discovery, step two: read one planned file through the safe file layer and turn it into
records (authorized keys lines, host keys, CA keys, the public half of identity keys). A missing
file is normal; an unsafe or unreadable one is a ScanError, never a crash and never its content.

What one user's files can cost is bounded (docs/choices.md, "Bounds on one user's files"):
* a file is read up to ``discovery.max_file_bytes``; past it, a problem says which lines were not
  checked (sshd reads them) and the keys that were read carry the risk factor ``file_partly_read``;
* at most ``MAX_PROBLEMS_PER_FILE`` problems are kept per file, the rest counted in one more;
* in ~/.ssh, at most ``MAX_SSH_DIR_FILES`` files are examined for private keys — OpenSSH's own
  identity names first, then files with a ``.pub`` beside them, then the rest by name — and each
  only as far as a private key can be long (``IDENTITY_MAX_BYTES``); the rest is counted;
* a name that is not valid UTF-8 is a problem, never a string that JSON cannot carry.

(Over 500 lines: one reader per kind of target — authorized keys, identity directories, host and
CA keys, sshd's KRL and principals files — all producing the one FileResult that `read_target`
dispatches on; the parsing itself is in agent/ssh, the verdicts in agent/inventory/evaluate.)
"""

from __future__ import annotations

import dataclasses
import posixpath
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Final

from agent.host.keygen import KeygenError, SshKeygen
from agent.host.safefs import DirReads, FileInfo, FileReads, HostFS, ReadResult, UnsafePath, failure_reason
from agent.host.scan_plan import Plan, Target, TargetKey, target_key
from agent.host.sshd_files import normalize_path
from agent.host.users import User, printable
from agent.inventory.evaluate import LineFacts, Policy, SshdFacts, line_problem, strict_modes_problem
from agent.inventory.model import (
    NO_OPTIONS,
    KeyKind,
    KeyRecord,
    KrlStatus,
    KrlSummary,
    PrincipalLine,
    ScanError,
)
from agent.ssh.authorized_keys import (
    DEFAULT_OPTIONS,
    AuthorizedLine,
    expiry_time_utc,
    parse_authorized_line,
    split_lines,
)
from agent.ssh.keys import InvalidKey, PublicKey, parse_public_blob, parse_public_key_text
from agent.ssh.krl import KrlError, flat_list_contents, is_krl
from agent.ssh.principals import parse_principals
from agent.ssh.privkey import looks_like_private_key, parse_private_key_file

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
# OpenSSH's default identity files (ssh(1) -i): examined first in ~/.ssh.
DEFAULT_IDENTITIES: Final = frozenset(
    {"id_rsa", "id_ecdsa", "id_ecdsa_sk", "id_ed25519", "id_ed25519_sk", "id_xmss", "id_dsa"}
)
# A private key file is a few kB (an RSA 16,384-bit key in OpenSSH's format: ~12.5 kB).
IDENTITY_MAX_BYTES: Final = 64 * 1024
MAX_SSH_DIR_FILES: Final = 100  # files of one ~/.ssh examined for private keys
MAX_PROBLEMS_PER_FILE: Final = 20  # problems kept per file (the rest are counted)


class Problems:
    """The problems of one file (or directory): the first ``MAX_PROBLEMS_PER_FILE`` kept, the rest
    counted in one more ("and K more <what>")."""

    __slots__ = ("_kept", "_more", "path", "user", "what")

    def __init__(self, path: str, user: str | None, what: str) -> None:
        self.path, self.user, self.what = path, user, what
        self._kept: list[ScanError] = []
        self._more = 0

    def add(self, error: str, line: int | None = None, path: str | None = None) -> None:
        if len(self._kept) < MAX_PROBLEMS_PER_FILE:
            self._kept.append(ScanError(path or self.path, self.user, error, line=line))
        else:
            self._more += 1

    def note(self, error: ScanError) -> None:
        if len(self._kept) < MAX_PROBLEMS_PER_FILE:
            self._kept.append(error)
        else:
            self._more += 1

    def __bool__(self) -> bool:
        return bool(self._kept)

    def all(self) -> tuple[ScanError, ...]:
        if not self._more:
            return tuple(self._kept)
        return (*self._kept, ScanError(self.path, self.user, f"and {self._more} more {self.what}"))


def complete_lines(result: ReadResult) -> tuple[bytes, str | None]:
    """The bytes to parse — a file cut at the byte cap loses its partial last line, which must
    never be read as a shorter line — and the problem that says what was not checked."""
    if not result.truncated:
        return result.data, None
    data = result.data[: result.data.rfind(b"\n") + 1]
    lines = data.count(b"\n")
    return data, (
        f"larger than discovery.max_file_bytes ({len(result.data)} bytes): the lines after line "
        f"{lines} were not checked, and sshd reads them"
    )


def file_lines(data: bytes) -> Iterable[AuthorizedLine]:
    """The lines of an authorized keys file one at a time (never all parsed lines at once: a file
    of 524,288 invalid lines must not hold 524,288 objects)."""
    for number, raw in enumerate(split_lines(data), 1):
        yield parse_authorized_line(raw, number)


@dataclass(frozen=True, slots=True)  # slots: one per planned file / account, 10,000s of them
class FileResult:
    records: tuple[KeyRecord, ...] = ()
    errors: tuple[ScanError, ...] = ()
    read: bool = False
    # Owner account gone, or the file owned by another uid: every key in it is orphaned.
    orphaned: bool = False
    # Where the file really is, when a symlink led elsewhere (the daemon watches that path too).
    realpath: str | None = None
    # A RevokedKeys file: what sshd makes of it. An AuthorizedPrincipalsFile: its principals.
    krl: KrlSummary | None = None
    principals: tuple[PrincipalLine, ...] = ()
    # Only the first discovery.max_file_bytes were read: a key may hide after them.
    partly_read: bool = False


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


def _mtime(info: FileInfo) -> datetime:
    return datetime.fromtimestamp(info.mtime, UTC)


def read_target(fs: FileReads, target: Target, plan: Plan, ctx: ScanContext) -> FileResult:
    """Read one target. Missing files are normal (no error); anything unsafe is an error.
    `fs` is the HostFS, or a DirReads over it when reading many targets in a row."""
    if target.kind == "revoked_keys":
        return _read_krl(fs, target, plan)
    try:
        if target.kind == "identity_dir":
            return _read_identity_dir(fs, target, ctx)
        result = fs.read(target.path, confine=target.confine, user_uid=_uid(target))
    except (FileNotFoundError, NotADirectoryError):
        return NOTHING_THERE
    except (UnsafePath, OSError) as exc:
        user = target.user.name if target.user else None
        return FileResult(errors=(ScanError(target.path, user, failure_reason(exc)),), read=True)
    if target.kind == "authorized_keys":
        found = _authorized_records(result, target, plan, ctx)
    elif target.kind == "authorized_principals":
        found = _principals(result, target, plan)
    else:
        found = _plain_key_records(result, target, ctx)
    if result.realpath != target.path:
        found = dataclasses.replace(found, realpath=result.realpath)
    return found


_REFUSES_ALL: Final = "sshd refuses every public key"


def _read_krl(fs: FileReads, target: Target, plan: Plan) -> FileResult:
    """sshd's RevokedKeys file: a KRL (listed by `ssh-keygen -Q -l`) or a plain key list (sshd's
    fallback). Missing, unreadable or corrupt, sshd refuses every public key: that is an error."""
    path = target.path

    def unusable(status: KrlStatus, problem: str) -> FileResult:
        summary = KrlSummary(path, status, problem=problem)
        return FileResult(
            errors=(ScanError(path, None, f"{problem}: {_REFUSES_ALL}"),), read=True, krl=summary
        )

    try:
        result = fs.read(path, confine=target.confine)
    except (FileNotFoundError, NotADirectoryError):
        return unusable("missing", "RevokedKeys file missing")
    except (UnsafePath, OSError) as exc:
        return unusable("unreadable", f"RevokedKeys file unreadable ({failure_reason(exc)})")
    if result.truncated:
        problem = "larger than discovery.max_file_bytes: not checked"
        summary = KrlSummary(path, "unchecked", problem=problem)
        return FileResult(errors=(ScanError(path, None, problem),), read=True, krl=summary)
    try:
        if is_krl(result.data):
            contents = SshKeygen(plan.ssh_keygen).list_krl(result.data)
        else:
            contents = flat_list_contents(result.data)
    except KeygenError as exc:
        if exc.code == "KRL_INVALID":
            return unusable("invalid", f"invalid KRL ({exc.message})")
        problem = f"KRL not checked: {exc.message}"
        return FileResult(
            errors=(ScanError(path, None, problem),),
            read=True,
            krl=KrlSummary(path, "unchecked", problem=problem),
        )
    except KrlError as exc:
        return unusable("invalid", f"invalid key list ({exc})")
    found = FileResult(read=True, krl=KrlSummary(path, "ok", contents))
    return dataclasses.replace(found, realpath=result.realpath) if result.realpath != path else found


def _principals(result: ReadResult, target: Target, plan: Plan) -> FileResult:
    """An account's AuthorizedPrincipalsFile. sshd reads it as the user and, under StrictModes,
    ignores it when it or a directory above it is owned or writable by someone else."""
    user = target.user
    assert user is not None
    errors = list(_truncation_error(result, target))
    if plan.sshd.strict_modes:
        problem = strict_modes_problem(
            result.info,
            result.chain,
            uid=user.uid,
            home=normalize_path(user.home),
            private_gids=() if user.gid in plan.shared_primary_gids else (user.gid,),
        )
        if problem is not None:
            errors.append(ScanError(target.path, user.name, f"authorized principals ignored: {problem}"))
            return FileResult(errors=tuple(errors), read=True)
    lines = tuple(
        PrincipalLine(user.name, target.path, ln.line, ln.principal, ln.options)
        for ln in parse_principals(result.data)
    )
    return FileResult(errors=tuple(errors), read=True, principals=lines)


def _truncation_error(result: ReadResult, target: Target) -> tuple[ScanError, ...]:
    if not result.truncated:
        return ()
    user = target.user.name if target.user else None
    return (ScanError(target.path, user, "file larger than discovery.max_file_bytes; rest not read"),)


def _uid(target: Target) -> int | None:
    return target.user.uid if target.user is not None else None


def _authorized_records(result: ReadResult, target: Target, plan: Plan, ctx: ScanContext) -> FileResult:
    user = target.user
    user_name = user.name if user else None
    uid = user.uid if user else None
    data, cut = complete_lines(result)
    errors = Problems(target.path, user_name, "invalid lines")
    if cut is not None:
        errors.add(cut)
    file_problem = target.not_read_by_sshd
    if file_problem is None and user is not None and plan.sshd.strict_modes:
        file_problem = strict_modes_problem(
            result.info,
            result.chain,
            uid=user.uid,
            home=normalize_path(user.home),
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
    for line in file_lines(data):
        if line.kind != "key" or line.key is None:
            if line.kind == "invalid":
                errors.add(line.error or "invalid line", line=line.number)
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
    return FileResult(
        tuple(records), errors.all(), read=True, orphaned=orphaned, partly_read=result.truncated
    )


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
    data, cut = complete_lines(result)
    errors = Problems(target.path, None, "invalid lines")
    if cut is not None:
        errors.add(cut)
    records: list[KeyRecord] = []
    kind: KeyKind = "host_key" if target.kind == "host_key" else "trusted_user_ca"
    for line in file_lines(data):
        if line.kind == "invalid" or (line.kind == "key" and line.options_text):
            errors.add(line.error or "unexpected options", line=line.number)
            continue
        if line.kind != "key" or line.key is None:
            continue
        records.append(
            _record(kind, None, 0, target.path, line.number, line.key, line.comment, result.info, ctx)
        )
    return FileResult(tuple(records), errors.all(), read=True, partly_read=result.truncated)


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


def identity_candidates(names: Iterable[str]) -> list[str]:
    """The names of ~/.ssh worth examining for a private key, in the order they are examined:
    OpenSSH's default identity names, then names with a ``.pub`` beside them (what ssh-keygen
    writes), then the rest; never a ``.pub`` or a file OpenSSH gives another meaning. Pure."""
    names = sorted(names)
    present = set(names)
    candidates = [n for n in names if not n.endswith(".pub") and not n.startswith(_NOT_IDENTITY)]

    def rank(name: str) -> int:
        return 0 if name in DEFAULT_IDENTITIES else 1 if name + ".pub" in present else 2

    return sorted(candidates, key=rank)  # stable: by name within a rank


def _read_identity_dir(fs: FileReads, target: Target, ctx: ScanContext) -> FileResult:
    user = target.user
    assert user is not None
    uid = user.uid
    names = fs.listdir(target.path, confine=target.confine, user_uid=uid)
    records: list[KeyRecord] = []
    errors = Problems(target.path, user.name, "problems")
    candidates = identity_candidates(names)
    for name in candidates[:MAX_SSH_DIR_FILES]:
        path = posixpath.join(target.path, name)
        if printable(name) != name:
            errors.add("file name is not valid UTF-8; not read", path=printable(path))
            continue
        try:
            result = fs.read(path, confine=target.confine, user_uid=uid, max_bytes=IDENTITY_MAX_BYTES)
        except (UnsafePath, OSError) as exc:
            if name.startswith("id_"):
                errors.add(failure_reason(exc), path=path)
            continue
        if not looks_like_private_key(result.data):
            continue
        if result.truncated:
            errors.add(f"larger than {IDENTITY_MAX_BYTES} bytes: not read as a private key", path=path)
            continue
        record_or_error = _identity_record(fs, path, result, user, target, ctx)
        if isinstance(record_or_error, ScanError):
            errors.note(record_or_error)
        else:
            records.append(record_or_error)
    unread = len(candidates) - MAX_SSH_DIR_FILES
    found = errors.all()
    if unread > 0:
        found += (ScanError(target.path, user.name, f"and {unread} more files not examined"),)
    if not records and not found:
        return READ_NOTHING
    return FileResult(tuple(records), found, read=True)


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
            pub = fs.read(
                path + ".pub", confine=target.confine, user_uid=user.uid, max_bytes=IDENTITY_MAX_BYTES
            )
            key, comment = parse_public_key_text(pub.text().strip())
    except FileNotFoundError:
        return ScanError(path, user.name, "encrypted private key without a .pub file; public key unknown")
    except (InvalidKey, UnsafePath, OSError) as exc:
        return ScanError(
            path, user.name, failure_reason(exc) if not isinstance(exc, InvalidKey) else str(exc)
        )
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
        pub = fs.read(
            path + ".pub", confine=target.confine, user_uid=_uid(target), max_bytes=IDENTITY_MAX_BYTES
        )
        _, comment = parse_public_key_text(pub.text().strip())
        return comment
    except (InvalidKey, UnsafePath, OSError):
        return ""


def read_targets(
    fs: HostFS, targets: Iterable[Target], plan: Plan, ctx: ScanContext
) -> dict[TargetKey, FileResult]:
    """`read_target` for many targets, keyed by `target_key`. Targets come grouped by directory
    (a user's files, then their ~/.ssh), so each directory is walked once (DirReads)."""
    with DirReads(fs) as reads:
        return {target_key(t): read_target(reads, t, plan, ctx) for t in targets}
