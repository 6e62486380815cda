"""Plan the new bytes of a user's authorized keys files for an instruction. Pure.

Every line we do not mean to change stays byte for byte: comments, blank lines, invalid
lines, order, each line's own ending and the presence or absence of a final newline. Lines
are identified only by the fingerprint the discovery parser computes: a line that does not
parse as a key is never touched.

What "in place" means (docs/rotation.md, "Idempotency"): sshd reads the user's files in order
and lets a connection in through the first line of the key whose options allow it
(auth2-pubkeyfile.c, auth-options.c). So an `add` or `replace` of key K with options O is in
place when some line of K that sshd honours carries exactly O (the same effective options,
whatever their spelling) and no other permanent line of K that sshd honours carries other
options (it would let in what O keeps out). A line sshd does not honour (`honoured_by_sshd`:
expired `expiry-time`, bad options, `principals=` without `cert-authority`, a certificate) and a
`cert-authority` line (it trusts K as a CA, not K itself) neither stand for K nor contradict it;
they are left alone. An ephemeral grant's line belongs to its grant: it neither stands for a
permanent key nor is touched by a rotation; a grant's own line (its tag) must carry exactly the
grant's `expiry-time`. `plan_key_change` writes what is missing and removes what contradicts,
and says why in `EditPlan.changes`; planning again on its output changes nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo

from agent.instructions.validate import EPHEMERAL_TAG
from agent.ssh.authorized_keys import (
    DEFAULT_OPTIONS,
    AuthorizedLine,
    KeyOptions,
    OptionError,
    expiry_time_utc,
    parse_authorized_keys,
)

# Does sshd use this line (built by the caller with the time: `honours_at`)?
Honours = Callable[[AuthorizedLine], bool]


@dataclass(frozen=True)
class EditPlan:
    new_data: bytes | None  # None: the file already says what the instruction wants
    fingerprints_after: tuple[str, ...]
    added: int = 0
    removed: int = 0
    changes: tuple[str, ...] = ()  # why the file must change ("line 3: the key with other options")

    @property
    def already_applied(self) -> bool:
        return self.new_data is None


class PlanError(ValueError):
    """The instruction cannot be carried out on these files; `code` is the result's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def honoured_by_sshd(ln: AuthorizedLine, now: datetime, local_tz: tzinfo) -> bool:
    """Would sshd use this line at `now`, whatever the connection? A key line (not a certificate)
    whose options sshd accepts, `principals=` only with `cert-authority` (auth_authorise_keyopts
    refuses it otherwise) and `expiry-time` not passed. `from=` depends on the connection and
    does not count here."""
    if ln.kind != "key" or ln.key is None or ln.options is None or ln.key.certificate is not None:
        return False
    opts = ln.options
    if opts.principals is not None and not opts.cert_authority:
        return False
    if opts.expiry_time is not None:
        try:
            if expiry_time_utc(opts.expiry_time, local_tz) <= now:
                return False
        except OptionError:
            return False
    return True


def honours_at(now: datetime, local_tz: tzinfo) -> Honours:
    def honours(ln: AuthorizedLine) -> bool:
        return honoured_by_sshd(ln, now, local_tz)

    return honours


def same_options(a: KeyOptions, b: KeyOptions) -> bool:
    """The same effect in sshd, whatever the spelling, case or order of the options as written."""
    return dataclasses.replace(a, items=()) == dataclasses.replace(b, items=())


def _fingerprints(lines: list[AuthorizedLine]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(ln.key.fingerprint for ln in lines if ln.kind == "key" and ln.key))


def _ending(line: bytes) -> bytes:
    if line.endswith(b"\r\n"):
        return b"\r\n"
    return b"\n" if line.endswith(b"\n") else b""


def _file_ending(lines: list[AuthorizedLine]) -> bytes:
    for ln in lines:
        ending = _ending(ln.raw)
        if ending:
            return ending
    return b"\n"


def _matches(ln: AuthorizedLine, fingerprint: str, tag: str | None) -> bool:
    """A key line of that fingerprint; with `tag`, only lines whose comment is exactly the tag."""
    if ln.kind != "key" or ln.key is None or ln.key.fingerprint != fingerprint:
        return False
    return tag is None or ln.comment == tag


def is_ephemeral_line(ln: AuthorizedLine) -> bool:
    return ln.comment.startswith(EPHEMERAL_TAG + ":")


def _append(data: bytes, lines: list[AuthorizedLine], new_line: bytes) -> bytes:
    ending = _file_ending(lines)
    prefix = data if not data or data.endswith(b"\n") else data + ending
    return prefix + new_line + ending


def plan_remove(data: bytes, fingerprint: str, *, tag: str | None = None) -> EditPlan:
    """Drop every line of that fingerprint (with `tag`: only lines whose comment is the tag,
    so removing an ephemeral grant never takes a permanent line of the same key with it)."""
    lines = parse_authorized_keys(data)
    kept = [ln for ln in lines if not _matches(ln, fingerprint, tag)]
    if len(kept) == len(lines):
        return EditPlan(None, _fingerprints(lines))
    # Each kept line keeps its own bytes, ending included (no re-joining, no normalising).
    new_data = b"".join(ln.raw for ln in kept)
    gone = tuple(f"line {ln.number}: the key to remove" for ln in lines if _matches(ln, fingerprint, tag))
    return EditPlan(new_data, _fingerprints(kept), removed=len(lines) - len(kept), changes=gone)


@dataclass(frozen=True)
class KeyChange:
    """What an `add`, `replace` or ephemeral grant asks of the user's files."""

    fingerprint: str  # the key that must be in place
    key_text: str  # "type base64 comment" as it is written
    options_text: str | None  # the options asked for (None: none; with keep_old_options: the old line's)
    options: KeyOptions = DEFAULT_OPTIONS  # options_text as sshd reads it
    keep_old_options: bool = False  # a replace without `options`: each new line takes its old line's
    old_fingerprint: str | None = None  # replace: the key that leaves (every line of it)
    tag: str | None = None  # an ephemeral grant: only the line with this comment is the grant's
    target: str | None = None  # where a new line is appended when no line of the key is there to rewrite

    def line(self, options_text: str | None) -> bytes:
        return (f"{options_text} {self.key_text}" if options_text else self.key_text).encode("utf-8")


@dataclass(frozen=True)
class _Wanted:
    """The options the key must carry in one file (None: any options, as found)."""

    text: str | None
    options: KeyOptions | None


_ANY = _Wanted(None, None)


@dataclass
class _File:
    path: str
    data: bytes
    lines: list[AuthorizedLine]
    wanted: _Wanted = _ANY
    insert_at: AuthorizedLine | None = None  # the line whose place the new line takes
    append: bool = False


class _Rules:
    """Which lines of the files are the new key's, the old key's, and which let the key in."""

    def __init__(self, change: KeyChange, honours: Honours) -> None:
        self.change = change
        self.honours = honours

    def new_key(self, ln: AuthorizedLine) -> bool:
        """A line of the key this change governs: the grant's own line, or a permanent line."""
        if not _matches(ln, self.change.fingerprint, None):
            return False
        tag = self.change.tag
        return ln.comment == tag if tag is not None else not is_ephemeral_line(ln)

    def old_key(self, ln: AuthorizedLine) -> bool:
        old = self.change.old_fingerprint
        return old is not None and _matches(ln, old, None)

    def lets_in(self, ln: AuthorizedLine) -> bool:
        """sshd honours the line as the key itself (not as a certificate authority)."""
        return self.honours(ln) and ln.options is not None and not ln.options.cert_authority

    def satisfies(self, ln: AuthorizedLine, wanted: _Wanted) -> bool:
        if not (self.new_key(ln) and self.lets_in(ln)):
            return False
        return wanted.options is None or (ln.options is not None and same_options(ln.options, wanted.options))

    def contradicts(self, ln: AuthorizedLine, wanted: _Wanted) -> bool:
        """A line of the key that is not what is wanted and would matter: a permanent line sshd
        honours with other options, or any other line carrying the grant's tag (it is ours)."""
        if not self.new_key(ln) or self.satisfies(ln, wanted):
            return False
        return self.change.tag is not None or self.lets_in(ln)


def plan_key_change(
    files: Sequence[tuple[str, bytes]], change: KeyChange, honours: Honours
) -> list[EditPlan]:
    """One plan per file (same order) that puts `change` in place across the user's files.

    - Without the old key anywhere (an add, a grant, or a replace whose old key has left): the key
      must be there with the options asked for. A contradicting line (see `_Rules.contradicts`) is
      removed; the first one is rewritten in place when no satisfying line exists, else the line
      is appended to `change.target`. A replace without the old key and without any line of the
      new key that sshd honours: `KEY_NOT_FOUND`.
    - With the old key: every line of it is removed; in each file that holds it, the new line takes
      the place of its first line (options: those asked for, else that old line's), unless the file
      already has a satisfying line. Keeping options takes them only from an old line sshd
      honours; when no file has one, the old lines go if the new key is in effect already, else
      `KEY_NOT_IN_EFFECT` (give options). Lines of the new key contradicting the options written
      are removed in every file.
    """
    rules = _Rules(change, honours)
    parsed = [_File(path, data, parse_authorized_keys(data)) for path, data in files]
    if any(rules.old_key(ln) for f in parsed for ln in f.lines):
        _place_replacement(parsed, change, rules)
    else:
        _place_key(parsed, change, rules)
    return [_render(f, change, rules) for f in parsed]


def _place_replacement(parsed: list[_File], change: KeyChange, rules: _Rules) -> None:
    asked = _Wanted(change.options_text, change.options)
    first: _Wanted | None = None
    for f in parsed:
        olds = [ln for ln in f.lines if rules.old_key(ln)]
        if not olds:
            continue
        if change.keep_old_options:
            source = next((ln for ln in olds if rules.lets_in(ln)), None)
            if source is None:
                continue  # sshd let nothing in through these lines: nothing to carry over
            f.wanted = _Wanted(source.options_text, source.options)
            anchor = source
        else:
            f.wanted, anchor = asked, olds[0]
        first = first or f.wanted
        if not any(rules.satisfies(ln, f.wanted) for ln in f.lines):
            f.insert_at = anchor
    if first is None:
        # No old line sshd honours: no options to keep. The old lines go; the new key must already
        # be in effect (with whatever options), else the server has to say which options it wants.
        if any(rules.satisfies(ln, _ANY) for f in parsed for ln in f.lines):
            return
        raise PlanError(
            "KEY_NOT_IN_EFFECT",
            "the old key is only in lines sshd does not honour (expired, cert-authority, certificate "
            "or bad options): there are no options to keep; give the options",
        )
    for f in parsed:
        if f.wanted is _ANY:
            f.wanted = first


def _place_key(parsed: list[_File], change: KeyChange, rules: _Rules) -> None:
    wanted = _ANY if change.keep_old_options else _Wanted(change.options_text, change.options)
    for f in parsed:
        f.wanted = wanted
    if any(rules.satisfies(ln, wanted) for f in parsed for ln in f.lines):
        return  # only contradicting lines (if any) go
    for f in parsed:
        conflict = next((ln for ln in f.lines if rules.contradicts(ln, wanted)), None)
        if conflict is not None:
            f.insert_at = conflict
            return
    if change.old_fingerprint is not None:
        raise PlanError("KEY_NOT_FOUND", "old key not found in the user's authorized keys files")
    target = next((f for f in parsed if f.path == change.target), None)
    if target is None:
        raise PlanError("NO_AUTHORIZED_KEYS_FILE", "no file to add the key to")
    target.append = True


def _render(f: _File, change: KeyChange, rules: _Rules) -> EditPlan:
    out: list[bytes] = []
    why: list[str] = []
    removed = 0
    for ln in f.lines:
        if ln is f.insert_at:
            out.append(change.line(f.wanted.text) + _ending(ln.raw))
            why.append(
                f"line {ln.number}: " + ("the old key" if rules.old_key(ln) else "the key, other options")
            )
            removed += 1
        elif rules.old_key(ln):
            why.append(f"line {ln.number}: the old key")
            removed += 1
        elif rules.contradicts(ln, f.wanted):
            why.append(f"line {ln.number}: the key with other options")
            removed += 1
        else:
            out.append(ln.raw)
    added = 1 if f.insert_at is not None else 0
    new_data = b"".join(out)
    if f.append:
        new_data = _append(new_data, f.lines, change.line(f.wanted.text))
        why.append("the key with the options asked for is missing")
        added = 1
    if not why:
        return EditPlan(None, _fingerprints(f.lines))
    return EditPlan(new_data, _fingerprints(parse_authorized_keys(new_data)), added, removed, tuple(why))


def unmet(files: Sequence[tuple[str, bytes]], change: KeyChange, honours: Honours) -> list[str]:
    """What `files` lack for `change` to be in effect ("PATH: line 3: the key, other options"),
    [] when it is in place: planning again would change nothing."""
    try:
        plans = plan_key_change(files, change, honours)
    except PlanError as exc:
        return [exc.message]
    return [f"{path}: {why}" for (path, _), plan in zip(files, plans, strict=True) for why in plan.changes]
