"""Directives set inside Match blocks (any criteria but `Match all`), across Includes. Pure.

`sshd -T` without a connection prints the global configuration only; a Match block that points
RevokedKeys (or TrustedUserCAKeys, AuthorizedPrincipalsFile) elsewhere for some users or addresses
would go unseen. This lists such lines so the agent can refuse to call a revocation "applied"
while sshd would not use it for every connection.
"""

from __future__ import annotations

from agent.ssh.sshd_config.model import ConfigFile, Directive, IncludeLine, MatchLine, ParsedSshdConfig


def match_directives(parsed: ParsedSshdConfig, keyword: str) -> list[Directive]:
    """Every `keyword` line (lower-case) that sshd applies only inside a Match block, in file order.
    An included file starts in its includer's state; a Match in it lasts to the end of that file."""
    out: list[Directive] = []
    _walk(parsed.root, keyword, False, out)
    return out


def _walk(f: ConfigFile, keyword: str, in_match: bool, out: list[Directive]) -> None:
    for item in f.items:
        if isinstance(item, MatchLine):
            in_match = item.criteria != (("all", ""),)
        elif isinstance(item, IncludeLine):
            for sub in item.files:
                _walk(sub, keyword, in_match, out)
        elif in_match and item.keyword == keyword and item.value is not None:
            out.append(item)
