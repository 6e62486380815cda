"""Before a revocation or a CA-trust change is called `applied`: does sshd really use the agent's
files? (agent-api.md section 6.2: otherwise `failed` / `SSHD_NOT_CONFIGURED`, naming the directive.)

Two questions: `sshd -T` (the global configuration sshd would run with) must show each directive
pointing at the agent's file, and no Match block may point it elsewhere (`sshd -T` without a
connection does not show Match blocks: the agent's own parser lists them).
"""

from __future__ import annotations

import posixpath

from agent.host.sshd_control import SshdError
from agent.host.sshd_dropin import DIRECTIVES, expected_values, missing_directives
from agent.host.trust_files import TrustLayout
from agent.instructions.errors import ApplyFailed
from agent.instructions.trust_ports import SshdConfigured
from agent.ssh.sshd_config.overrides import match_directives

CODE = "SSHD_NOT_CONFIGURED"


def require_sshd_uses(sshd: SshdConfigured, layout: TrustLayout, keywords: tuple[str, ...]) -> None:
    """Raise ApplyFailed(SSHD_NOT_CONFIGURED) unless sshd uses the agent's file for every
    `keywords` (`sshd -T` names: "revokedkeys", "trustedusercakeys", "authorizedprincipalsfile")."""
    try:
        effective = sshd.effective()
    except SshdError as exc:
        raise ApplyFailed(CODE, f"cannot confirm that sshd uses the agent's files: {exc.message}") from None
    want = expected_values(layout)
    missing = missing_directives(effective, layout, keywords)
    if missing:
        by_name = {name: keyword for keyword, name in DIRECTIVES.items()}
        described = "; ".join(
            f"{name} is {effective.get(by_name[name], 'none')}, not {want[by_name[name]]}" for name in missing
        )
        raise ApplyFailed(CODE, f"sshd does not use the agent's files: {described}")
    try:
        parsed = sshd.parsed()
    except (OSError, ValueError) as exc:
        raise ApplyFailed(CODE, f"cannot read sshd_config ({type(exc).__name__})") from None
    for keyword in keywords:
        for directive in match_directives(parsed, keyword):
            value = str(directive.value)
            if value.lower() == "none" or posixpath.normpath(value) != posixpath.normpath(want[keyword]):
                raise ApplyFailed(
                    CODE,
                    f"{DIRECTIVES[keyword]} is set to another file in a Match block ({directive.source})",
                )
