"""A central key directory (`AuthorizedKeysFile /run/sshklm-central-*/%u`, root's) with a real sshd:
an `add` for a user without a file creates it root's, 0644 — the user cannot edit it, and sshd
(which opens it with the user's privileges) reads it: a real login proves it, and a root-owned
0600 file is shown to lock the user out, which is why the agent does not pick 0600.

Root only (useradd, sshd); skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.host.safefs import HostFS
from agent.host.users import NssUserSource
from agent.instructions.apply import Applier, ApplierSettings
from agent.instructions.host_files import SafeHostFiles
from agent.inventory.evaluate import Policy
from agent.store.db import open_database
from agent.store.state import StateStore
from tests.controlplane import ControlPlane
from tests.integration.sshd_support import (
    REAL_SSHD_MARKS,
    NullHooks,
    add_user,
    enrolled_host_id,
    free_port,
    keygen,
    remove_user,
    ssh_login,
    sshd_config_text,
    start_sshd,
)

pytestmark = REAL_SSHD_MARKS


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
        return ssh_login(self.user, self.port, self.key)


@pytest.fixture
def central(tmp_path: Path) -> Iterator[Central]:
    os.chmod(tmp_path, 0o755)
    keys_dir = Path(f"/run/sshklm-central-{secrets.token_hex(4)}")
    keys_dir.mkdir(mode=0o755)
    user, pw = add_user()
    sshd: subprocess.Popen[bytes] | None = None
    cp: ControlPlane | None = None
    try:
        key, both = keygen(tmp_path / "id_user", "central@e2e")
        line = both.split("\t")[0]
        port = free_port()
        config = tmp_path / "sshd_config"
        # sshd takes the first AuthorizedKeysFile it reads: the central one comes first.
        config.write_text(
            sshd_config_text(tmp_path, port).replace(
                "AuthorizedKeysFile .ssh/authorized_keys\n", f"AuthorizedKeysFile {keys_dir}/%u\n"
            )
        )
        sshd = start_sshd(tmp_path, config, port)
        cp = ControlPlane.start()
        host_id = enrolled_host_id(cp.url, cp.bootstrap_token, "e2e-central")
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
            NullHooks(host_id, Policy(1, 2048, frozenset({"ssh-ed25519"}), 365, False, 3600)),
            clock=lambda: datetime.now(UTC),
        )
        yield Central(user, pw.pw_uid, keys_dir, port, key, line, cp, host_id, applier)
    finally:
        if cp is not None:
            cp.stop()
        if sshd is not None:
            sshd.terminate()
            sshd.wait(timeout=10)
        remove_user(user)
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
