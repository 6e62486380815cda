"""sshd's files for a user: sshd_config as loaded through the safe file layer, and the list of
authorized keys files sshd reads for an account (AuthorizedKeysFile resolved per user, Match blocks
included).

Shared by discovery (``scan_plan``: which files to read) and the applier (which files to write), so
both agree on where a user's keys are. Loading goes through ``HostFS``; the path logic is pure.
"""

from __future__ import annotations

import posixpath

from agent.host.safefs import HostFS, UnsafePath, failure_reason
from agent.host.users import User
from agent.inventory.model import ScanError
from agent.ssh.sshd_config import EffectiveSshdConfig, ParsedSshdConfig, expand_user_path, parse_sshd_config


def load_sshd_config(fs: HostFS, path: str) -> tuple[ParsedSshdConfig, list[ScanError]]:
    """sshd_config and its Includes, parsed; unreadable files are errors (a missing main file is
    not: sshd runs on its defaults)."""
    errors: list[ScanError] = []

    def load_include(pattern: str) -> list[tuple[str, str]]:
        out = []
        for match in fs.glob(pattern):
            try:
                out.append((match, fs.read(match).text()))
            except (UnsafePath, OSError) as exc:
                errors.append(ScanError(match, None, failure_reason(exc)))
        return out

    try:
        text = fs.read(path).text()
    except (UnsafePath, OSError) as exc:
        if not isinstance(exc, FileNotFoundError):
            errors.append(ScanError(path, None, failure_reason(exc)))
        text = ""
    return parse_sshd_config(text, path, load_include), errors


def normalize_path(path: str) -> str:
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


def authorized_keys_paths(user: User, eff: EffectiveSshdConfig, *, conditional: bool = True) -> list[str]:
    """The authorized keys files sshd reads for `user`, in sshd's order (normalised absolute
    paths). `conditional=False` leaves out files set only under Match blocks whose connection
    criteria are unknown here. Templates that do not expand are skipped."""
    home = normalize_path(user.home)
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
            out.append(normalize_path(path))
    return out
