"""The agent's files for sshd on a real filesystem, as root: owners and modes sshd needs, the safe
file layer's refusals, and failures for real: a full disk (a tiny tmpfs) under the live KRL and
under ssh-keygen's scratch directory, ssh-keygen missing, sshd refusing the drop-in. Each leaves the
live file exactly as it was. sshd itself is faked here (configured); tests/integration/
test_e2e_trust.py runs the real one."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.host.keygen import SshKeygen
from agent.host.safefs import HostFS, UnsafePath
from agent.host.sshd_control import SshdError
from agent.host.sshd_dropin import DROPIN_NAME, install_dropin
from agent.host.trust_files import AgentTrustFiles, TrustLayout
from agent.instructions.errors import ApplyFailed
from agent.instructions.trust import Trust
from agent.instructions.validate_trust import validate_trust
from agent.instructions.verify import Instruction
from agent.ssh.keys import parse_public_key_text
from agent.store.db import open_database
from agent.store.state import StateStore
from agent.store.trust_state import TrustState
from tests.fakeroot import ed25519_line
from tests.unit.trust_fakes import FakeSshd

pytestmark = pytest.mark.root(reason="the agent's files are root's: chown, and a tmpfs mount for a full disk")

FP = parse_public_key_text(ed25519_line("k"))[0].fingerprint


@pytest.fixture
def base() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sshklm-files-", dir="/run"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def tiny_tmpfs(path: Path) -> Iterator[Path]:
    path.mkdir(mode=0o755, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(path)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: " + done.stderr.decode().strip())
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> None:
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)


def make(base: Path, layout: TrustLayout, work: Path, keygen: str = "/usr/bin/ssh-keygen") -> Trust:
    sshd = FakeSshd(
        {
            "revokedkeys": layout.revoked_keys,
            "trustedusercakeys": layout.trusted_user_ca_keys,
            "authorizedprincipalsfile": layout.principals_template,
        }
    )
    state = TrustState(StateStore(open_database(base / "state")))
    fs = HostFS("/")
    return Trust(
        AgentTrustFiles(fs, layout),
        SshKeygen(keygen),
        sshd,
        state,
        layout,
        work_dir=str(work),
        sshd_version=lambda: None,
    )


def revoke(trust: Trust, fingerprint: str = FP) -> None:
    ins = Instruction(
        "ins_1",
        "h",
        0,
        2**31,
        "revoke_keys",
        {"revocation_id": "rvk_1", "fingerprints": [fingerprint]},
        None,
        True,
    )
    trust.apply(validate_trust(ins, user_exists=lambda u: False, policy=None))


def owner_mode(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def test_files_and_directories_get_what_sshd_needs(base: Path) -> None:
    layout = TrustLayout(str(base / "sshklm-agent"))
    trust = make(base, layout, base / "work")
    trust.start()
    assert owner_mode(layout.directory) == (0, 0, 0o755)
    assert owner_mode(layout.principals_dir) == (0, 0, 0o755)
    assert owner_mode(layout.revoked_keys) == (0, 0, 0o644)
    os.chmod(layout.principals_dir, 0o700)  # sshd reads principals as the user: must stay traversable
    trust.start()
    assert owner_mode(layout.principals_dir) == (0, 0, 0o755)


def test_the_safe_file_layer_refuses_a_symlink_and_a_writable_directory(base: Path) -> None:
    layout = TrustLayout(str(base / "sshklm-agent"))
    trust = make(base, layout, base / "work")
    trust.start()
    files = AgentTrustFiles(HostFS("/"), layout)
    os.unlink(layout.revoked_keys)
    os.symlink("/etc/shadow", layout.revoked_keys)
    with pytest.raises(ApplyFailed) as refused:
        revoke(trust)
    assert refused.value.code == "UNSAFE_PATH"
    assert os.path.islink(layout.revoked_keys)  # nothing written through it
    os.unlink(layout.revoked_keys)
    os.chmod(layout.directory, 0o777)
    with pytest.raises(UnsafePath):
        files.write("revoked_keys", b"x", expect=None)
    assert not os.path.exists(layout.revoked_keys)


def test_disk_full_under_the_live_krl(base: Path) -> None:
    with tiny_tmpfs(base / "sshklm-agent") as directory:
        layout = TrustLayout(str(directory))
        trust = make(base, layout, base / "work")
        trust.start()
        before = Path(layout.revoked_keys).read_bytes()
        fill(directory)
        with pytest.raises(ApplyFailed) as full:
            revoke(trust)
        assert full.value.code == "IO_ERROR" and "No space left on device" in full.value.message
        assert Path(layout.revoked_keys).read_bytes() == before
        assert sorted(os.listdir(directory)) == [
            "filler",
            "principals",
            "revoked_keys",
            "trusted_user_ca_keys",
        ]
        (directory / "filler").unlink()
        revoke(trust)  # the same instruction again, once there is room
        assert Path(layout.revoked_keys).read_bytes() != before


def test_disk_full_under_ssh_keygens_scratch_directory(base: Path) -> None:
    layout = TrustLayout(str(base / "sshklm-agent"))
    with tiny_tmpfs(base / "work") as work:
        trust = make(base, layout, work)
        trust.start()
        before = Path(layout.revoked_keys).read_bytes()
        fill(work)
        with pytest.raises(ApplyFailed) as full:
            revoke(trust)
        assert full.value.code in ("IO_ERROR", "KEYGEN_FAILED")
        assert Path(layout.revoked_keys).read_bytes() == before
        assert os.listdir(work) == ["filler"]  # no scratch left behind


def test_ssh_keygen_missing(base: Path) -> None:
    layout = TrustLayout(str(base / "sshklm-agent"))
    make(base, layout, base / "work").start()
    before = Path(layout.revoked_keys).read_bytes()
    trust = make(base, layout, base / "work", keygen="/nonexistent/ssh-keygen")
    with pytest.raises(ApplyFailed) as missing:
        revoke(trust)
    assert missing.value.code == "KEYGEN_MISSING"
    assert Path(layout.revoked_keys).read_bytes() == before


class RefusingSshd:
    """sshd -T shows nothing configured; sshd -t refuses (as with a broken drop-in)."""

    reloaded = False

    def effective(self) -> dict[str, str]:
        return {"revokedkeys": "none", "trustedusercakeys": "none", "authorizedprincipalsfile": "none"}

    def check(self) -> None:
        raise SshdError("sshd -t: /etc/ssh/sshd_config.d/sshklm-agent.conf line 2: Bad configuration option")

    def reload(self) -> None:
        self.reloaded = True


@pytest.mark.parametrize("previous", [None, b"# an older version of ours\n"])
def test_a_dropin_sshd_refuses_is_rolled_back(base: Path, previous: bytes | None) -> None:
    dropins = base / "sshd_config.d"
    dropins.mkdir(mode=0o755)
    if previous is not None:
        (dropins / DROPIN_NAME).write_bytes(previous)
    sshd = RefusingSshd()
    with pytest.raises(SshdError, match="Bad configuration option"):
        install_dropin(HostFS("/"), str(dropins), TrustLayout(str(base / "a")), sshd)  # type: ignore[arg-type]
    if previous is None:
        assert not (dropins / DROPIN_NAME).exists()
    else:
        assert (dropins / DROPIN_NAME).read_bytes() == previous
    assert not sshd.reloaded
