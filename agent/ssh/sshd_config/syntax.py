"""OpenSSH's shared string grammar, as sshd applies it to sshd_config: misc.c strdelim,
argv_split, tilde_expand and percent_expand, and match.c's wildcard pattern lists."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable

from agent.ssh.sshd_config.keywords import WHITESPACE


def _skip_ws(s: str, i: int) -> int:
    while i < len(s) and s[i] in WHITESPACE:
        i += 1
    return i


def strdelim(s: str | None) -> tuple[str | None, str | None]:
    """misc.c strdelim(): next token (split on whitespace or one '='; '"' quotes) and the rest.

    Returns (None, None) on an unterminated quote; rest is None when nothing follows.
    """
    if s is None:
        return None, None
    i = next((k for k, ch in enumerate(s) if ch in WHITESPACE or ch in '"='), -1)
    if i < 0:
        return s, None
    if s[i] == '"':
        s = s[:i] + s[i + 1 :]
        j = s.find('"', i)
        if j < 0:
            return None, None
        return s[:j], s[_skip_ws(s, j + 1) :]
    saw_equals = s[i] == "="
    token = s[:i]
    k = _skip_ws(s, i + 1)
    if not saw_equals and k < len(s) and s[k] == "=":
        k = _skip_ws(s, k + 1)
    return token, s[k:]


class QuoteError(ValueError):
    pass


def argv_split(s: str) -> list[str]:
    """misc.c argv_split(terminate_on_comment=1): quotes, backslash escapes, '#' comments."""
    args: list[str] = []
    i, n = 0, len(s)
    while i < n:
        if s[i] in " \t":
            i += 1
            continue
        if s[i] == "#":
            break
        quote = ""
        out: list[str] = []
        while i < n:
            ch = s[i]
            if ch == "\\":
                nxt = s[i + 1] if i + 1 < n else "\0"
                if nxt in ("'", '"', "\\") or (not quote and nxt == " "):
                    i += 1
                    out.append(s[i])
                else:
                    out.append(ch)
            elif not quote and ch in " \t":
                break
            elif not quote and ch in "\"'":
                quote = ch
            elif quote and ch == quote:
                quote = ""
            else:
                out.append(ch)
            i += 1
        if i >= n and quote:
            raise QuoteError("invalid quotes")
        args.append("".join(out))
    return args


@functools.lru_cache(maxsize=4096)
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(regex, re.DOTALL)


def match_pattern(string: str, pattern: str) -> bool:
    """match.c match_pattern(): '*' and '?' wildcards, everything else literal."""
    return _pattern_regex(pattern).fullmatch(string) is not None


def match_pattern_list(string: str, patterns: str) -> int:
    """match.c match_pattern_list(): 1 positive, 0 none, -1 a negated entry matched (wins)."""
    got_positive = 0
    for sub in patterns.split(","):
        negated = sub.startswith("!")
        if negated:
            sub = sub[1:]
        if len(sub) >= 1023:  # sshd's sub[1024] buffer: an overlong entry fails the list
            return 0
        if match_pattern(string, sub):
            if negated:
                return -1
            got_positive = 1
    return got_positive


def match_groups(groups: Iterable[str], patterns: str) -> bool:
    """groupaccess.c ga_match_pattern_list(): any group matches, a negated match vetoes."""
    found = False
    for group in groups:
        result = match_pattern_list(group, patterns)
        if result == -1:
            return False
        if result == 1:
            found = True
    return found


def tilde_expand(path: str, sshd_home: str, home_of: Callable[[str], str | None] | None) -> str:
    """misc.c tilde_expand(): '~' and '~/x' use sshd's own home, '~user/x' that user's."""
    if not path.startswith("~"):
        return path
    copy = path[1:]
    rest: str | None
    if copy == "" or copy.startswith("/"):
        home = sshd_home
        rest = copy.lstrip("/") or None
    else:
        user, slash, tail = copy.partition("/")
        if home_of is None:
            raise ValueError("cannot expand ~user without a user lookup")
        looked_up = home_of(user)
        if looked_up is None:
            raise ValueError("no such user in ~user path")
        home = looked_up
        rest = tail.lstrip("/") or None if slash else None
    sep = "" if home.endswith("/") else "/"
    return f"{home}{sep}{rest or ''}"


def percent_expand(template: str, tokens: dict[str, str]) -> str:
    """misc.c percent_expand(): '%%' -> '%', '%X' -> tokens[X]; unknown or dangling '%' fails."""
    out: list[str] = []
    i = 0
    while i < len(template):
        ch = template[i]
        if ch != "%":
            out.append(ch)
            i += 1
            continue
        if i + 1 >= len(template):
            raise ValueError("invalid format: '%' at end of path")
        key = template[i + 1]
        if key == "%":
            out.append("%")
        elif key in tokens:
            out.append(tokens[key])
        else:
            raise ValueError("unknown % token in path")
        i += 2
    return "".join(out)
