"""authorized_keys lines and options, exactly as sshd 9.2 reads them.

Mirrors `check_authkeys_file` / `auth_check_authkey_line` (auth2-pubkeyfile.c) and
`sshauthopt_parse` (auth-options.c):

* a line is everything up to and including "\\n" (getline: no length limit); C string handling ends it
  at the first NUL byte; leading blanks (space, tab) are skipped; empty lines and "#" lines are ignored;
* sshd first tries to read a key at the start of the line; when that fails it skips an options string
  (blank-terminated, `"` toggles quoting, `\\"` is skipped as a unit), skips blanks and tries again;
* the options are then parsed left to right; an unknown option or a bad value makes sshd ignore the
  line ("bad key options"): such a line is kind="key" with `options_error` set.

Pure functions: bytes in, values out. The options grammar itself is agent.ssh.key_options; its
names are re-exported here because callers see the format as one thing ("an authorized_keys
line and its options"). Nothing here puts line content into an exception message or a repr.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Literal

from agent.ssh.key_options import (
    DEFAULT_OPTIONS,
    TUNNEL_ANY,
    KeyOptions,
    OptionError,
    expiry_time_utc,
    latin1_text,
    parse_options,
    parse_options_latin1,
)
from agent.ssh.keys import KEY_LABELS, InvalidKey, PublicKey, fast_plain_key, parse_key_bytes

__all__ = [
    "DEFAULT_OPTIONS",
    "TUNNEL_ANY",
    "AuthorizedLine",
    "KeyOptions",
    "OptionError",
    "expiry_time_utc",
    "parse_authorized_keys",
    "parse_authorized_line",
    "parse_options",
    "split_lines",
]

# --- lines -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuthorizedLine:
    number: int  # 1-based
    raw: bytes  # exact bytes including the line ending
    kind: Literal["blank", "comment", "key", "invalid"]
    key: PublicKey | None
    label: str | None  # the type word as written ("rsa-sha2-512" for an ssh-rsa blob)
    options: KeyOptions | None  # DEFAULT_OPTIONS when none are written; None when they are invalid
    options_text: str | None  # the options string as written
    options_error: str | None  # sshd's reason when it ignores the line for its options
    comment: str
    error: str | None  # reason for an invalid line, never its content

    def __repr__(self) -> str:  # the line itself never reaches a log
        return f"AuthorizedLine(number={self.number}, kind={self.kind!r}, error={self.error!r})"


def split_lines(data: bytes) -> list[bytes]:
    """Split as getline() does: on "\\n" only, each line keeping its ending; no length limit."""
    lines = data.split(b"\n")
    last = lines.pop()
    out = [line + b"\n" for line in lines]
    if last:
        out.append(last)
    return out


def _advance_past_options(line: bytes, pos: int) -> int:
    """sshkey_advance_past_options -> end index, or -1 for an unterminated quote."""
    n = len(line)
    quoted = False
    while pos < n:
        c = line[pos]
        if not quoted and (c == 0x20 or c == 0x09):
            break
        if c == 0x5C and pos + 1 < n and line[pos + 1] == 0x22:
            pos += 1
        elif c == 0x22:
            quoted = not quoted
        pos += 1
    return -1 if quoted and pos >= n else pos


def _line(
    number: int,
    raw: bytes,
    kind: str,
    key: PublicKey | None = None,
    label: str | None = None,
    options: KeyOptions | None = None,
    options_text: str | None = None,
    options_error: str | None = None,
    comment: str = "",
    error: str | None = None,
) -> AuthorizedLine:
    # Bypass the frozen dataclass __init__ (one object.__setattr__ per field): one object per line.
    line = _new_object(AuthorizedLine)
    _set_attr(
        line,
        "__dict__",
        {
            "number": number,
            "raw": raw,
            "kind": kind,
            "key": key,
            "label": label,
            "options": options,
            "options_text": options_text,
            "options_error": options_error,
            "comment": comment,
            "error": error,
        },
    )
    return line


_new_object = object.__new__
_set_attr = object.__setattr__


def parse_authorized_line(raw: bytes, number: int) -> AuthorizedLine:
    """One line (with its ending) as sshd reads it. Never raises for any input bytes."""
    line = raw[:-1] if raw[-1:] == b"\n" else raw
    words = line.split(b" ", 2)
    if len(words) > 1 and b"\0" not in line:
        key = fast_plain_key(words[0], words[1])
        if key is not None:
            comment = words[2].decode("utf-8", "replace").strip() if len(words) > 2 else ""
            return _line(number, raw, "key", key, key.type, DEFAULT_OPTIONS, comment=comment)
    if b"\0" in line:  # C strings end at the first NUL
        line = line[: line.find(b"\0")]
    first = line[:1]
    if first == b" " or first == b"\t":
        line = line.lstrip(b" \t")
        first = line[:1]
    if not first or not line.strip():
        return _line(number, raw, "blank")
    if first == b"#":
        return _line(number, raw, "comment")
    try:
        key, label, rest = parse_key_bytes(line)
    except InvalidKey as exc:
        return _parse_with_options(raw, number, line, exc)
    return _line(number, raw, "key", key, label, DEFAULT_OPTIONS, comment=_comment(rest))


def _comment(rest: bytes) -> str:
    return rest.decode("utf-8", "replace").strip() if rest else ""


def _parse_with_options(raw: bytes, number: int, body: bytes, first: InvalidKey) -> AuthorizedLine:
    # A line that starts with a known key type failed as a key: its own reason is the informative one.
    head_end = min((x for x in (body.find(b" "), body.find(b"\t")) if x != -1), default=len(body))
    starts_with_label = body[:head_end].decode("latin-1") in KEY_LABELS
    end = _advance_past_options(body, 0)
    if end == -1:
        return _line(
            number,
            raw,
            "invalid",
            error=first.reason if starts_with_label else "unterminated quote in options",
        )
    pos = end
    while pos < len(body) and body[pos] in b" \t":
        pos += 1
    try:
        key, label, rest = parse_key_bytes(body[pos:])
    except InvalidKey as second:
        return _line(number, raw, "invalid", error=first.reason if starts_with_label else second.reason)
    options_latin = body[:end].decode("latin-1")
    options: KeyOptions | None
    error: str | None = None
    try:
        # sshd parses in place, so the blank that ends the options is visible: "no-pty, key" is valid
        options = parse_options_latin1(options_latin + " ")
    except OptionError as exc:
        options, error = None, exc.reason
    return _line(number, raw, "key", key, label, options, latin1_text(options_latin), error, _comment(rest))


def parse_authorized_keys(data: bytes) -> list[AuthorizedLine]:
    """Every line of an authorized_keys file, numbered from 1."""
    # Building ~2 objects per line trips the cyclic GC over and over on large files (40% of the time
    # for 100,000 keys); none of these objects can form cycles, so collection is paused meanwhile.
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        return [parse_authorized_line(raw, number) for number, raw in enumerate(split_lines(data), 1)]
    finally:
        if paused:
            gc.enable()
