"""AuthorizedPrincipalsFile lines as sshd 9.2 reads them (auth2-pubkeyfile.c), and the files the
agent writes. Pure.

sshd's reading (`auth_process_principals` / `auth_check_principals_line`): leading blanks skipped,
everything from the first '#' dropped, blank lines skipped, trailing blanks trimmed; a line with
inner blanks is "options principal" (the principal is the last word). A certificate is accepted
when one of its principals equals a line's principal exactly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final, NamedTuple

MAX_PRINCIPAL: Final = 256
# What the agent writes: printable ASCII without blanks, '#' (sshd's comment), ',' (ssh-keygen -n
# separates principals with it), quotes and backslash (they would read as options).
_PRINCIPAL = re.compile(r"^[\x21\x24-\x2b\x2d-\x5b\x5d-\x7e]{1,256}$")

HEADER: Final = (
    "# Managed by sshklm-agent: principals of the CAs the control plane trusts (trust_ca).\n"
    "# Rewritten by the agent; a change made here is reported and overwritten.\n"
)


class PrincipalsLine(NamedTuple):
    line: int
    principal: str
    options: str | None


def valid_principal(name: str) -> bool:
    return _PRINCIPAL.match(name) is not None


def parse_principals(data: bytes) -> list[PrincipalsLine]:
    """The principal of each effective line (with its options text, if any), in file order."""
    out: list[PrincipalsLine] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        text = raw.decode("utf-8", "replace").lstrip(" \t")
        hash_at = text.find("#")
        if hash_at != -1:
            text = text[:hash_at]
        text = text.rstrip(" \t\r")
        if not text:
            continue
        cut = max(text.rfind(" "), text.rfind("\t"))
        if cut == -1:
            out.append(PrincipalsLine(number, text, None))
        else:
            out.append(PrincipalsLine(number, text[cut + 1 :], text[:cut].rstrip(" \t")))
    return out


def render_principals(principals: Iterable[str]) -> bytes:
    """The file the agent writes: its header, then one principal per line (sorted, no duplicates)."""
    names = sorted(set(principals))
    for name in names:
        if not valid_principal(name):
            raise ValueError("invalid principal name")
    return (HEADER + "".join(f"{name}\n" for name in names)).encode("ascii")
