"""The sshd drop-in that points sshd at the agent's files, installed by the agent when
`trust.install_sshd_dropin` is on (off by default; packaging/sshd/sshklm-agent.conf documents it).

Never leave sshd unable to start, never take over what an administrator configured:

1. `sshd -T` first: when RevokedKeys, TrustedUserCAKeys or AuthorizedPrincipalsFile is already set
   to another file, nothing is installed (`DropinConflict`): sshd takes the first value it reads,
   so our drop-in would silently replace the administrator's revocation list or CA trust;
2. the agent's own files must exist and be valid before (the caller's job: `ensure_files`),
   because sshd refuses every public key while RevokedKeys names a file it cannot read;
3. the drop-in is written atomically (root 0644), then `sshd -t` must accept the configuration
   and `sshd -T` must show our three values (sshd_config may not Include the drop-in directory);
   otherwise the previous state is restored (the old file, or none) and nothing is reloaded;
4. only then is sshd reloaded. A failed reload is reported; the drop-in stays, since `sshd -t`
   accepted it (sshd starts with it) and the running daemon keeps its previous configuration.
"""

from __future__ import annotations

import logging
import posixpath
import stat
from dataclasses import dataclass
from typing import Final

from agent.host.safefs import CreateSpec, DirHandle, HostFS, ReadResult
from agent.host.sshd_control import SshdControl, SshdError
from agent.host.trust_files import FILE_MODE, TrustLayout

log = logging.getLogger("sshklm.trust")

DROPIN_NAME: Final = "sshklm-agent.conf"
# sshd -T keyword -> sshd_config keyword
DIRECTIVES: Final = {
    "revokedkeys": "RevokedKeys",
    "trustedusercakeys": "TrustedUserCAKeys",
    "authorizedprincipalsfile": "AuthorizedPrincipalsFile",
}


def dropin_text(layout: TrustLayout) -> str:
    """The drop-in for `layout` (the shipped packaging/sshd/sshklm-agent.conf is this for the default).
    Its first line is how purging the package knows the file is the agent's (packaging/scripts/
    trust-files.sh, SSHKLM_DROPIN_HEADER): keep it."""
    return (
        "# Installed by sshklm-agent (trust.install_sshd_dropin): sshd uses the agent's key revocation\n"
        "# list and CA trust. Purging the package removes this file and reloads sshd before the files\n"
        "# go; by hand, the same order: sshd refuses every public key when RevokedKeys cannot be read.\n"
        f"RevokedKeys {layout.revoked_keys}\n"
        f"TrustedUserCAKeys {layout.trusted_user_ca_keys}\n"
        f"AuthorizedPrincipalsFile {layout.principals_template}\n"
    )


def expected_values(layout: TrustLayout) -> dict[str, str]:
    """What `sshd -T` must print for sshd to use the agent's files."""
    return {
        "revokedkeys": layout.revoked_keys,
        "trustedusercakeys": layout.trusted_user_ca_keys,
        "authorizedprincipalsfile": layout.principals_template,
    }


def missing_directives(
    effective: dict[str, str], layout: TrustLayout, keywords: tuple[str, ...]
) -> list[str]:
    """The sshd_config keywords among `keywords` whose `sshd -T` value is not the agent's file. Pure."""
    want = expected_values(layout)
    out = []
    for keyword in keywords:
        value = effective.get(keyword, "none")
        if value == "none" or posixpath.normpath(value) != posixpath.normpath(want[keyword]):
            out.append(DIRECTIVES[keyword])
    return out


class DropinConflict(Exception):
    """sshd already uses other files for these directives: the drop-in would override them."""


@dataclass(frozen=True)
class DropinResult:
    installed: bool  # written (or already there) and accepted by sshd
    reloaded: bool
    message: str


def install_dropin(fs: HostFS, dropin_dir: str, layout: TrustLayout, sshd: SshdControl) -> DropinResult:
    """Install (or confirm) the drop-in as the module docstring says. Raises DropinConflict,
    SshdError (sshd -T unusable, or sshd refused the drop-in: restored), OSError/UnsafePath."""
    keywords = tuple(DIRECTIVES)
    before = sshd.effective()
    missing = missing_directives(before, layout, keywords)
    if not missing:
        return DropinResult(True, False, "sshd already uses the agent's files")
    conflicts = [
        DIRECTIVES[k] for k in keywords if before.get(k, "none") != "none" and DIRECTIVES[k] in missing
    ]
    if conflicts:
        raise DropinConflict(
            f"sshd already sets {', '.join(conflicts)} to other files: not overriding them "
            "(point them at the agent's files, or remove them, by hand)"
        )
    text = dropin_text(layout).encode("ascii")
    with fs.open_dir(
        dropin_dir, create=CreateSpec(0, 0, 0o755), confine=posixpath.dirname(dropin_dir), user_uid=0
    ) as dirh:
        previous = fs.read_at(dirh, DROPIN_NAME)
        fs.atomic_replace(
            dirh, DROPIN_NAME, text, uid=0, gid=0, mode=FILE_MODE, expect=previous.info if previous else None
        )
        try:
            sshd.check()
            still = missing_directives(sshd.effective(), layout, keywords)
            if still:
                raise SshdError(
                    f"sshd does not read {posixpath.join(dropin_dir, DROPIN_NAME)} "
                    f"(no Include of {dropin_dir}?): {', '.join(still)} unchanged"
                )
        except SshdError:
            _restore(fs, dirh, previous)
            raise
    try:
        sshd.reload()
    except SshdError as exc:
        log.error("sshd drop-in installed, but sshd was not reloaded: %s", exc.message)
        return DropinResult(True, False, f"installed; reload failed: {exc.message}")
    log.info("sshd drop-in %s installed and sshd reloaded", posixpath.join(dropin_dir, DROPIN_NAME))
    return DropinResult(True, True, "installed and sshd reloaded")


def _restore(fs: HostFS, dirh: DirHandle, previous: ReadResult | None) -> None:
    """Put back what was there before the drop-in was written (the old file, or nothing)."""
    current = fs.read_at(dirh, DROPIN_NAME)
    if previous is not None:
        fs.atomic_replace(
            dirh,
            DROPIN_NAME,
            previous.data,
            uid=previous.info.uid,
            gid=previous.info.gid,
            mode=stat.S_IMODE(previous.info.mode) & ~(stat.S_ISUID | stat.S_ISGID),
            expect=current.info if current else None,
        )
    elif current is not None:
        fs.remove_at(dirh, DROPIN_NAME, expect=current.info)
