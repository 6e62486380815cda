"""The rpm's scriptlets for real, without a RHEL-family system: the host's rpm installs, upgrades and
erases the package into a stopped Debian root (`rpm --root` runs each scriptlet chrooted there, with
that root's /bin/sh, python3 and systemctl; --nodeps because its rpm database knows no python3).
What this proves: %post compiles the bytecode for the root's interpreter, enables the unit and makes
the state directory 0700; an upgrade keeps an edited %config(noreplace) file (the new one as
.rpmnew); erase disables the unit and removes the program, configuration and state. What it does
not: dependency resolution by dnf against a real RHEL archive (make package-test resolves the
Requires against stand-ins), SELinux labels, and systemd as PID 1 during the transaction."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import IO

from agent.host.sshd_dropin import dropin_text
from agent.host.trust_files import TrustLayout
from tests.system.container import CommandFailed

UNIT = "sshklm-agent.service"
MARKER = "# edited by the system test (rpm)"


def rpm_scriptlets(root: Path, rpm_x: Path, rpm_y: Path, log: IO[str], *, trust_named: bool) -> str:
    """`trust_named`: the root's sshd configuration names /etc/ssh/sshklm-agent (the administrator's
    drop-in the deb's purge kept it for): erase must keep it. Otherwise the agent's own sshd drop-in
    is planted before the erase, which must take it out, then the directory."""

    def rpm(*args: str) -> str:
        done = subprocess.run(
            ["rpm", "--root", str(root), *args], capture_output=True, text=True, check=False
        )
        print(
            f"$ rpm {' '.join(args)} -> {done.returncode}\n{done.stdout}{done.stderr}", file=log, flush=True
        )
        if done.returncode != 0:
            raise CommandFailed(f"rpm {' '.join(args)}: {done.stderr.strip()[-500:]}")
        return done.stdout

    wants = root / "etc/systemd/system/multi-user.target.wants" / UNIT
    rpm("--initdb")
    rpm("-i", "--nodeps", str(rpm_x))
    cache = root / "usr/lib/sshklm-agent/common/agent/__pycache__"
    tags = {pyc.name.split(".")[-2] for pyc in cache.glob("*.pyc")}
    assert len(tags) == 1, f"%post compiled bytecode for {sorted(tags) or 'no interpreter'}"
    minor = tags.pop().removeprefix("cpython-3")
    assert wants.is_symlink(), "%post did not enable the unit"
    assert (root / "var/lib/sshklm-agent").stat().st_mode & 0o777 == 0o700
    trust_dir = root / "etc/ssh/sshklm-agent"
    assert trust_dir.is_dir() and trust_dir.stat().st_mode & 0o777 == 0o755, "%post: no trust directory"
    config = root / "etc/sshklm-agent/agent.toml"
    config.write_text(config.read_text() + MARKER + "\n")
    rpm("-U", "--nodeps", str(rpm_y))
    assert rpm("-q", "sshklm-agent").strip() == rpm_y.name.removesuffix(".rpm")
    assert MARKER in config.read_text(), "%config(noreplace) edit lost"
    assert (config.parent / "agent.toml.rpmnew").exists(), "no .rpmnew for the changed shipped file"
    dropin = root / "etc/ssh/sshd_config.d/sshklm-agent.conf"
    if not trust_named:
        dropin.write_text(dropin_text(TrustLayout()))
    rpm("-e", "sshklm-agent")
    for gone in ("etc/sshklm-agent", "var/lib/sshklm-agent", "usr/lib/sshklm-agent", "usr/bin/sshklm-agent"):
        assert not (root / gone).exists(), f"/{gone} left after rpm -e"
    assert not wants.is_symlink(), "%preun did not disable the unit"
    if trust_named:
        assert trust_dir.is_dir() and dropin.exists(), "erase deleted trust files sshd_config names"
        trust = "trust files kept (sshd_config names them)"
    else:
        assert not dropin.exists() and not trust_dir.exists(), "erase left the agent's drop-in or trust files"
        trust = "the agent's sshd drop-in and trust files gone"
    return (
        f"install (bytecode for 3.{minor}, enabled, state and trust directories), upgrade (.rpmnew), "
        f"erase (all gone; {trust})"
    )
