"""Plan the new bytes of an authorized_keys file for an instruction. Pure.

Every line we do not mean to change stays byte for byte: comments, blank lines, invalid
lines, order, each line's own ending and the presence or absence of a final newline. Lines
are identified only by the fingerprint the discovery parser computes: a line that does not
parse as a key is never touched. `replace` writes the new key where the old line was, so the
new key is in the file before the old one leaves it, in one atomic write.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.instructions.validate import EPHEMERAL_TAG
from agent.ssh.authorized_keys import AuthorizedLine, parse_authorized_keys


@dataclass(frozen=True)
class EditPlan:
    new_data: bytes | None  # None: the file already says what the instruction wants
    fingerprints_after: tuple[str, ...]
    added: int = 0
    removed: int = 0

    @property
    def already_applied(self) -> bool:
        return self.new_data is None


class PlanError(ValueError):
    """The instruction cannot be carried out on this file (e.g. the old key is not there)."""


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


def _has_key(lines: list[AuthorizedLine], fingerprint: str, tag: str | None = None) -> bool:
    """Is the key in the file for good? Without a tag an ephemeral line does not count: it
    will be swept away, so it cannot stand for a permanent grant of the same key."""
    if tag is not None:
        return any(_matches(ln, fingerprint, tag) for ln in lines)
    return any(_matches(ln, fingerprint, None) and not is_ephemeral_line(ln) for ln in lines)


def _append(data: bytes, lines: list[AuthorizedLine], new_line: bytes) -> bytes:
    ending = _file_ending(lines)
    prefix = data if not data or data.endswith(b"\n") else data + ending
    return prefix + new_line + ending


def plan_add(data: bytes, new_line: str, new_fingerprint: str, *, tag: str | None = None) -> EditPlan:
    """Append `new_line` unless the key is already there (with `tag`: a line carrying that
    exact comment, e.g. an ephemeral grant's own line)."""
    lines = parse_authorized_keys(data)
    if _has_key(lines, new_fingerprint, tag):
        return EditPlan(None, _fingerprints(lines))
    new_data = _append(data, lines, new_line.encode("utf-8"))
    return EditPlan(new_data, _fingerprints(parse_authorized_keys(new_data)), added=1)


def plan_remove(data: bytes, fingerprint: str, *, tag: str | None = None) -> EditPlan:
    """Drop every line of that fingerprint (with `tag`: only lines whose comment is the tag,
    so removing an ephemeral grant never takes a permanent line of the same key with it)."""
    lines = parse_authorized_keys(data)
    kept = [ln for ln in lines if not _matches(ln, fingerprint, tag)]
    if len(kept) == len(lines):
        return EditPlan(None, _fingerprints(lines))
    # Each kept line keeps its own bytes, ending included (no re-joining, no normalising).
    new_data = b"".join(ln.raw for ln in kept)
    return EditPlan(new_data, _fingerprints(kept), removed=len(lines) - len(kept))


def plan_replace(
    data: bytes, old_fingerprint: str, new_line_for: NewLineBuilder, new_fingerprint: str
) -> EditPlan:
    """Put the new key where the (first) old line was; drop any other old lines.

    `new_line_for(old_options_text)` builds the new line, so the caller decides whether the
    old line's options are kept (no options in the instruction) or replaced.
    """
    lines = parse_authorized_keys(data)
    old_lines = [
        ln
        for ln in lines
        if ln.kind == "key" and ln.key is not None and ln.key.fingerprint == old_fingerprint
    ]
    if not old_lines:
        if _has_key(lines, new_fingerprint):
            return EditPlan(None, _fingerprints(lines))
        raise PlanError("old key not found")
    first = old_lines[0]
    new_has_key = _has_key(lines, new_fingerprint)
    out: list[bytes] = []
    for ln in lines:
        if ln is first and not new_has_key:
            ending = _ending(ln.raw)
            out.append(new_line_for(first.options_text).encode("utf-8") + ending)
        elif ln in old_lines:
            continue
        else:
            out.append(ln.raw)
    new_data = b"".join(out)
    after = parse_authorized_keys(new_data)
    return EditPlan(new_data, _fingerprints(after), added=0 if new_has_key else 1, removed=len(old_lines))


class NewLineBuilder:
    """Builds the replacement line: given options win, else the old line's options are kept."""

    def __init__(self, key_text: str, options_text: str | None, keep_old_options: bool) -> None:
        self.key_text = key_text
        self.options_text = options_text
        self.keep_old_options = keep_old_options

    def __call__(self, old_options_text: str | None) -> str:
        options = self.options_text
        if options is None and self.keep_old_options:
            options = old_options_text
        return f"{options} {self.key_text}" if options else self.key_text
