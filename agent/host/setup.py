"""From configuration to the host as discovery sees it, and facts about this machine.

One way, for every command and the daemon, to open the host (its filesystem through the safe file
layer and its user database), to turn configuration into scan settings and the local policy, and to
learn sshd's version and the local time zone. `scan` imports this: nothing heavy here.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo

from agent.config import Config
from agent.host.safefs import HostFS
from agent.host.scan import ScanSettings
from agent.host.users import NssUserSource, RootUserSource, UserSource
from agent.inventory.evaluate import Policy

_SSHD_VERSION = re.compile(r"OpenSSH_[0-9A-Za-z.]+")


def open_host(config: Config, root: str | None) -> tuple[HostFS, UserSource]:
    """The host as discovery sees it: a fake root (tests, images) or this machine via NSS."""
    fs = HostFS(root or "/", max_bytes=config.discovery.max_file_bytes)
    users: UserSource = RootUserSource(fs) if root else NssUserSource()
    return fs, users


def settings_from(config: Config) -> ScanSettings:
    d = config.discovery
    return ScanSettings(
        sshd_config=d.sshd_config,
        host_keys=d.host_keys,
        identity_keys=d.identity_keys,
        orphan_homes=d.orphan_homes,
        skip_users=frozenset(d.skip_users),
        ssh_keygen=config.trust.ssh_keygen,
    )


def policy_from(config: Config) -> Policy:
    """The local policy (version 0), in force until the control plane sends one."""
    p = config.policy
    return Policy(
        version=0,
        min_rsa_bits=p.min_rsa_bits,
        allowed_types=frozenset(p.allowed_types),
        max_key_age_days=p.max_key_age_days,
        require_from_for_root=p.require_from_for_root,
        ephemeral_max_ttl_s=p.ephemeral_max_ttl_s,
    )


def parse_sshd_version(output: str) -> str | None:
    """``OpenSSH_9.2p1`` out of ``sshd -V`` output (pure). Searched anywhere: an sshd too old for
    ``-V`` names its version inside the usage message it prints instead."""
    match = _SSHD_VERSION.search(output)
    return match.group(0) if match else None


def sshd_version(
    binary: str = "/usr/sbin/sshd", run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run
) -> str | None:
    """The version sshd reports for ``-V`` (on stderr). Best effort: never a reason to fail."""
    try:
        done = run([binary, "-V"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_sshd_version(f"{done.stderr}\n{done.stdout}")


def local_zone() -> tzinfo:
    zone = datetime.now().astimezone().tzinfo
    return zone or UTC
