"""Purging the package must never lock sshd out: packaging/scripts/trust-files.sh (the step the deb's
postrm purge and the rpm's %postun erase run) against a real sshd, with logins as the proof.

Each test builds a small /etc/ssh of its own (main config with `Include sshd_config.d/*.conf`, a
trust directory with a valid empty KRL), starts a real sshd on it, then runs the step under dash
with `set -e`, as dpkg runs postrm. Without systemd here the step reloads sshd through its pid file
(the system test, tests/system, covers `systemctl reload` under a real systemd). systemctl is kept
off the step's PATH so a machine that does run systemd reloads the test's sshd, not its own.
The control test shows what is at stake: the trust directory deleted while sshd still names it
refuses every public key.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.host.sshd_dropin import dropin_text
from agent.host.trust_files import TrustLayout
from tests.integration.sshd_support import (
    REAL_SSHD_MARKS,
    SSHD,
    add_user,
    free_port,
    key_pairs,
    remove_user,
    ssh_login,
    sshd_config_text,
    start_sshd,
    write_authorized_keys,
)

pytestmark = [*REAL_SSHD_MARKS]

REPO = Path(__file__).resolve().parents[2]
FRAGMENT = REPO / "packaging" / "scripts" / "trust-files.sh"
SHIPPED_EXAMPLE = REPO / "packaging" / "sshd" / "sshklm-agent.conf"
# What the step runs, found on its PATH (systemctl deliberately not among them).
TOOLS = ("grep", "awk", "sed", "head", "basename", "dirname", "rm", "cat", "sleep")


@dataclass
class Etc:
    """A scratch /etc/ssh with a running sshd and a user whose key logs in."""

    base: Path
    ssh: Path  # the /etc/ssh stand-in
    config: Path
    dropin_dir: Path
    trust_dir: Path
    user: str
    identity: Path
    port: int
    path_dir: Path
    sshd: subprocess.Popen[bytes] | None = None

    @property
    def dropin(self) -> Path:
        return self.dropin_dir / "sshklm-agent.conf"

    def login(self) -> bool:
        return ssh_login(self.user, self.port, self.identity)

    def reload(self) -> None:
        """What an administrator does after editing sshd's configuration: SIGHUP, then wait until
        the re-executed sshd answers again."""
        assert self.sshd is not None
        subprocess.run([SSHD, "-t", "-f", str(self.config)], check=True)
        os.kill(self.sshd.pid, signal.SIGHUP)
        time.sleep(0.5)

    def release(self) -> subprocess.CompletedProcess[str]:
        """The purge step, as postrm runs it (dash, set -e)."""
        script = f'. "{FRAGMENT}"; sshklm_release_trust_files "$1" "$2" "$3"; echo "status $?"'
        return subprocess.run(
            ["/bin/sh", "-ec", script, "sh", str(self.trust_dir), str(self.dropin), str(self.config)],
            capture_output=True,
            text=True,
            env={"PATH": str(self.path_dir), "LC_ALL": "C"},
            timeout=60,
            check=False,
        )

    def sshd_t(self) -> str:
        return subprocess.run(
            [SSHD, "-T", "-f", str(self.config)], capture_output=True, text=True, check=True
        ).stdout


@pytest.fixture
def etc() -> Iterator[Etc]:
    # Under /run, not /tmp: StrictModes refuses principals under a world-writable directory, and
    # sshd reads the KRL through the same path checks for our purposes here (as the e2e tests).
    base = Path(tempfile.mkdtemp(prefix="sshklm-release-", dir="/run"))
    os.chmod(base, 0o755)
    ssh = base / "ssh"
    dropin_dir = ssh / "sshd_config.d"
    trust_dir = ssh / "sshklm-agent"
    path_dir = base / "bin"
    for d in (ssh, dropin_dir, trust_dir, trust_dir / "principals", path_dir):
        d.mkdir(mode=0o755)
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found, tool
        (path_dir / tool).symlink_to(found)
    subprocess.run(["ssh-keygen", "-q", "-k", "-f", str(trust_dir / "revoked_keys"), "/dev/null"], check=True)
    (trust_dir / "trusted_user_ca_keys").write_text("")
    for f in trust_dir.iterdir():
        f.chmod(0o644) if f.is_file() else None
    port = free_port()
    config = ssh / "sshd_config"
    config.write_text(f"Include {dropin_dir}/*.conf\n" + sshd_config_text(ssh, port))
    user, pw = add_user()
    keys = key_pairs(base, ["member"])
    write_authorized_keys(pw, keys["member"][1] + "\n")
    e = Etc(base, ssh, config, dropin_dir, trust_dir, user, keys["member"][0], port, path_dir)
    try:
        e.sshd = start_sshd(ssh, config, port)
        assert e.login(), "the key does not log in before anything was done"
        yield e
    finally:
        if e.sshd is not None:
            e.sshd.terminate()
            e.sshd.wait(timeout=10)
        remove_user(user)
        shutil.rmtree(base, ignore_errors=True)


def agents_dropin(e: Etc) -> None:
    """What the agent writes with trust.install_sshd_dropin (then it reloads sshd)."""
    e.dropin.write_text(dropin_text(TrustLayout(str(e.trust_dir))))
    e.reload()
    assert f"revokedkeys {e.trust_dir}/revoked_keys" in e.sshd_t()


def administrators_dropin(e: Etc, name: str = "sshklm-agent.conf") -> Path:
    """The shipped example copied by hand (its paths pointed at this scratch directory)."""
    path = e.dropin_dir / name
    path.write_text(SHIPPED_EXAMPLE.read_text().replace("/etc/ssh/sshklm-agent", str(e.trust_dir)))
    e.reload()
    assert f"revokedkeys {e.trust_dir}/revoked_keys" in e.sshd_t()
    return path


def released(e: Etc) -> str:
    done = e.release()
    assert done.returncode == 0 and done.stdout.strip() == "status 0", (done.stdout, done.stderr)
    return done.stderr


def test_control_the_directory_deleted_while_sshd_names_it_refuses_every_key(etc: Etc) -> None:
    """Why the step exists: what a plain `rm -rf` in postrm would do."""
    agents_dropin(etc)
    assert etc.login()
    shutil.rmtree(etc.trust_dir)
    assert not etc.login()


def test_agents_dropin_is_taken_out_and_sshd_reloaded_before_the_directory_goes(etc: Etc) -> None:
    agents_dropin(etc)
    said = released(etc)
    assert not etc.dropin.exists() and not etc.trust_dir.exists()
    assert "removed the sshd drop-in it had installed" in said and "kept" not in said
    assert "revokedkeys none" in etc.sshd_t()
    assert etc.login(), "sshd refuses the key after the purge: it still reads the deleted KRL"


def test_an_administrators_configuration_keeps_the_directory(etc: Etc) -> None:
    admin = administrators_dropin(etc)
    said = released(etc)
    assert admin.exists() and (etc.trust_dir / "revoked_keys").exists()
    assert f"kept {etc.trust_dir}" in said and f"{admin}:" in said and "sshd -T: revokedkeys" in said
    assert "removed the sshd drop-in" not in said  # the copy of the example is the administrator's
    assert etc.login()


def test_agents_dropin_goes_but_the_administrators_lines_keep_the_directory(etc: Etc) -> None:
    agents_dropin(etc)
    admin = administrators_dropin(etc, "50-revocation.conf")
    said = released(etc)
    assert not etc.dropin.exists() and admin.exists() and (etc.trust_dir / "revoked_keys").exists()
    assert "removed the sshd drop-in it had installed" in said and f"kept {etc.trust_dir}" in said
    assert etc.login()


def test_a_line_in_a_match_block_keeps_the_directory(etc: Etc) -> None:
    """`sshd -T` without a connection does not show Match blocks: the files are read too."""
    with etc.config.open("a") as f:
        f.write(f"Match User nobody\n    RevokedKeys {etc.trust_dir}/revoked_keys\n")
    etc.reload()
    said = released(etc)
    assert etc.trust_dir.exists() and f"{etc.config}:" in said and "RevokedKeys" in said
    assert etc.login()


def test_comments_do_not_count(etc: Etc) -> None:
    (etc.dropin_dir / "notes.conf").write_text(f"# RevokedKeys {etc.trust_dir}/revoked_keys\n")
    said = released(etc)
    assert not etc.trust_dir.exists() and said == ""
    assert etc.login()


def test_an_sshd_that_does_not_reload_keeps_the_directory(etc: Etc) -> None:
    """The running sshd may still name the KRL: a configuration sshd -t refuses cannot reload."""
    agents_dropin(etc)
    with etc.config.open("a") as f:
        f.write("ThisIsNotAnOption yes\n")
    said = released(etc)
    assert not etc.dropin.exists() and (etc.trust_dir / "revoked_keys").exists()
    assert f"kept {etc.trust_dir}: sshd did not reload" in said
    assert etc.login(), "the running sshd still reads the KRL, which must still be there"


def test_without_a_running_sshd_the_drop_in_and_directory_go(etc: Etc) -> None:
    agents_dropin(etc)
    assert etc.sshd is not None
    etc.sshd.terminate()
    etc.sshd.wait(timeout=10)
    etc.sshd = None
    released(etc)
    assert not etc.dropin.exists() and not etc.trust_dir.exists()
    etc.sshd = start_sshd(etc.ssh, etc.config, etc.port)
    assert etc.login()


def test_no_directory_the_drop_in_still_goes_and_sshd_is_reloaded(etc: Etc) -> None:
    """A drop-in naming a directory that is gone already refuses every key: taking it out (and
    reloading) is what gives the logins back."""
    agents_dropin(etc)
    shutil.rmtree(etc.trust_dir)
    assert not etc.login()
    released(etc)
    assert not etc.dropin.exists()
    assert etc.login()
