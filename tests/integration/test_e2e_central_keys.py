"""A central key directory (`AuthorizedKeysFile /run/sshklm-central-*/%u`, root's) with a real sshd:
an `add` for a user without a file creates it root's, 0644 — the user cannot edit it, and sshd
(which opens it with the user's privileges) reads it: a real login proves it, and a root-owned
0600 file is shown to lock the user out, which is why the agent does not pick 0600.

Root only (useradd, sshd); skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from agent.host.safefs import HostFS
from agent.host.users import NssUserSource
from agent.instructions.apply import Applier, ApplierSettings
from agent.instructions.host_files import SafeHostFiles
from agent.inventory.evaluate import Policy
from agent.store.db import open_database
from agent.store.state import StateStore
from tests.controlplane import ControlPlane
from tests.integration.sshd_support import SSHD, free_port, keygen, ssh_login, start_sshd
from tests.integration.test_e2e_sshd import _Hooks

pytestmark = [
    pytest.mark.root(reason="creates a user (useradd) and runs sshd"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates a user and runs sshd"),
    pytest.mark.skipif(not os.path.exists(SSHD), reason="openssh-server (/usr/sbin/sshd) is not installed"),
    pytest.mark.skipif(shutil.which("useradd") is None, reason="useradd is not available"),
    pytest.mark.skipif(shutil.which("ssh") is None, reason="ssh client is not installed"),
]


@dataclass
class Central:
    user: str
    uid: int
    keys_dir: Path  # root's central directory, on a path whose every component is root's (/run)
    port: int
    key: Path  # the private key the user logs in with
    line: str
    cp: ControlPlane
    host_id: str
    applier: Applier

    def login(self) -> bool:
        return ssh_login(self.key, self.port, self.user)


@pytest.fixture
def central(tmp_path: Path) -> Iterator[Central]:
    os.chmod(tmp_path, 0o755)
    user = f"sshklm{secrets.token_hex(3)}"
    keys_dir = Path(f"/run/sshklm-central-{secrets.token_hex(4)}")
    keys_dir.mkdir(mode=0o755)
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", user], check=True)
    subprocess.run(["usermod", "-p", "*", user], check=True)  # locked ("!") accounts are refused without PAM
    sshd: subprocess.Popen[bytes] | None = None
    cp: ControlPlane | None = None
    try:
        key, both = keygen(tmp_path / "id_user", "central@e2e")
        line = both.split("\t")[0]
        port = free_port()
        config = tmp_path / "sshd_config"
        sshd = start_sshd(
            tmp_path,
            port,
            "UsePAM no\nStrictModes yes\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
            f"KbdInteractiveAuthentication no\nAuthorizedKeysFile {keys_dir}/%u\nLogLevel VERBOSE\n",
        )
        cp = ControlPlane.start()
        answer = httpx.post(
            f"{cp.url}/v1/agents/enroll",
            headers={"Authorization": f"Bearer {cp.bootstrap_token}"},
            json={"machine_id": secrets.token_hex(16), "hostname": "e2e-central"},
            timeout=10,
        )
        host_id = answer.json()["host_id"]
        settings = ApplierSettings(
            sshd_config=str(config),
            public_keys=(cp.signing_public_key_openssh,),
            require_signature=True,
            leeway_s=30,
            backups_per_file=5,
        )
        applier = Applier(
            settings,
            SafeHostFiles(HostFS("/"), str(tmp_path / "state" / "backups")),
            NssUserSource(),
            StateStore(open_database(tmp_path / "state")),
            _Hooks(host_id, Policy(1, 2048, frozenset({"ssh-ed25519"}), 365, False, 3600)),
            clock=lambda: datetime.now(UTC),
        )
        uid = pwd.getpwnam(user).pw_uid
        yield Central(user, uid, keys_dir, port, key, line, cp, host_id, applier)
    finally:
        if cp is not None:
            cp.stop()
        if sshd is not None:
            sshd.terminate()
            sshd.wait(timeout=10)
        subprocess.run(["userdel", "-r", user], check=False, capture_output=True)
        shutil.rmtree(keys_dir, ignore_errors=True)


def test_add_in_a_central_directory_creates_a_root_owned_file_sshd_reads(central: Central) -> None:
    assert not central.login()
    token = central.cp.issue_instruction(
        central.host_id,
        "rotation",
        {"rotation_id": "rot_central", "user": central.user, "action": "add", "new_key": central.line},
    )
    _, result = central.applier.handle(token)
    assert result["status"] == "applied", result
    path = central.keys_dir / central.user
    st = os.stat(path)
    # Root's, like its directory: the user cannot add a key of her own choosing.
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o644)
    assert central.login()
    # Why not 0600: sshd opens the file with the user's privileges; root's 0600 locks her out.
    os.chmod(path, 0o600)
    assert not central.login()
    os.chmod(path, 0o644)
    assert central.login()
