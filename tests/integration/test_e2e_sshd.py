"""End to end with a real OpenSSH sshd: instructions from the reference control plane, applied by
the Applier to a throwaway user's real home, proven by real `ssh` logins.

Root only (useradd, sshd); skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.host.safefs import HostFS
from agent.host.users import NssUserSource
from agent.instructions.apply import Applier, ApplierSettings
from agent.instructions.host_files import SafeHostFiles
from agent.inventory.evaluate import Policy
from agent.inventory.model import Event
from agent.store.db import open_database
from agent.store.state import StateStore
from tests.controlplane import ControlPlane
from tests.integration.sshd_support import SSHD, free_port, keygen, ssh_login, start_sshd

pytestmark = [
    pytest.mark.root(reason="creates a user (useradd) and runs sshd"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates a user and runs sshd"),
    pytest.mark.skipif(not os.path.exists(SSHD), reason="openssh-server (/usr/sbin/sshd) is not installed"),
    pytest.mark.skipif(shutil.which("useradd") is None, reason="useradd is not available"),
    pytest.mark.skipif(shutil.which("ssh") is None, reason="ssh client is not installed"),
]


@dataclass
class Env:
    user: str
    home: Path
    port: int
    tmp: Path
    cp: ControlPlane
    host_id: str
    applier: Applier
    keys: dict[str, tuple[Path, str, str]]  # name -> (private key path, public line, fingerprint)

    @property
    def ak(self) -> Path:
        return self.home / ".ssh" / "authorized_keys"

    def login(self, key: str) -> bool:
        return ssh_login(self.keys[key][0], self.port, self.user)

    def apply(self, kind: str, body: dict[str, Any], exp_s: int = 600) -> dict[str, Any]:
        token = self.cp.issue_instruction(self.host_id, kind, body, exp_s=exp_s)
        _, result = self.applier.handle(token)
        return result


@dataclass
class _Hooks:
    """No daemon around the applier: events and managed lines go nowhere, no jobs, no scans."""

    host_id_value: str
    policy_value: Policy

    def host_id(self) -> str | None:
        return self.host_id_value

    def policy(self) -> Policy:
        return self.policy_value

    def emit(self, events: Sequence[Event]) -> None:
        return None

    def note_managed(
        self, fingerprint: str, user: str | None, path: str, managed_by: str, expires_at: datetime | None
    ) -> None:
        return None

    def schedule_once(self, job_id: str, fn: Callable[[], None], when: datetime) -> None:
        return None

    def run_scan(self, scan_id: str) -> None:
        raise RuntimeError("no scans here")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("e2e")
    os.chmod(tmp, 0o755)
    user = f"sshklm{secrets.token_hex(3)}"
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", user], check=True)
    subprocess.run(["usermod", "-p", "*", user], check=True)  # locked ("!") accounts are refused without PAM
    sshd: subprocess.Popen[bytes] | None = None
    cp: ControlPlane | None = None
    try:
        pw = pwd.getpwnam(user)
        home = Path(pw.pw_dir)
        keys: dict[str, tuple[Path, str, str]] = {}
        for name in ("old", "new", "extra", "bystander"):
            path, both = keygen(tmp / f"id_{name}", f"{name}@e2e")
            line, fp = both.split("\t")
            keys[name] = (path, line, fp)
        ssh_dir = home / ".ssh"
        ssh_dir.mkdir(mode=0o700)
        os.chown(ssh_dir, pw.pw_uid, pw.pw_gid)
        ak = ssh_dir / "authorized_keys"
        ak.write_text(f"# keys of {user}\n{keys['bystander'][1]}\n{keys['old'][1]}\n\nnot a key\n")
        os.chown(ak, pw.pw_uid, pw.pw_gid)
        os.chmod(ak, 0o600)

        port = free_port()
        config = tmp / "sshd_config"
        sshd = start_sshd(
            tmp,
            port,
            "UsePAM no\nStrictModes yes\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nAuthorizedKeysFile .ssh/authorized_keys\nLogLevel VERBOSE\n",
        )
        cp = ControlPlane.start()
        answer = httpx.post(
            f"{cp.url}/v1/agents/enroll",
            headers={"Authorization": f"Bearer {cp.bootstrap_token}"},
            json={"machine_id": secrets.token_hex(16), "hostname": "e2e"},
            timeout=10,
        )
        host_id = answer.json()["host_id"]
        fs = HostFS("/")
        policy = Policy(1, 2048, frozenset({"ssh-ed25519"}), 365, False, 3600)
        settings = ApplierSettings(
            sshd_config=str(config),
            public_keys=(cp.signing_public_key_openssh,),
            require_signature=True,
            leeway_s=30,
            backups_per_file=5,
        )
        applier = Applier(
            settings,
            SafeHostFiles(fs, str(tmp / "state" / "backups")),
            NssUserSource(),
            StateStore(open_database(tmp / "state")),
            _Hooks(host_id, policy),
            clock=lambda: datetime.now(UTC),
        )
        yield Env(user, home, port, tmp, cp, host_id, applier, keys)
    finally:
        if cp is not None:
            cp.stop()
        if sshd is not None:
            sshd.terminate()
            sshd.wait(timeout=10)
        subprocess.run(["userdel", "-r", user], check=False, capture_output=True)


def _file_facts(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_mode, st.st_uid, st.st_gid


def test_rotation_replace(env: Env) -> None:
    assert env.login("old")
    assert not env.login("new")
    facts = _file_facts(env.ak)
    before_lines = env.ak.read_bytes().split(b"\n")
    result = env.apply(
        "rotation",
        {
            "rotation_id": "rot_e2e1",
            "user": env.user,
            "action": "replace",
            "old_fingerprint": env.keys["old"][2],
            "new_key": env.keys["new"][1],
        },
    )
    assert result["status"] == "applied", result
    assert env.keys["new"][2] in result["fingerprints_after"]
    assert env.keys["old"][2] not in result["fingerprints_after"]
    assert env.login("new")
    assert not env.login("old")
    assert env.login("bystander")
    assert _file_facts(env.ak) == facts
    after_lines = env.ak.read_bytes().split(b"\n")
    assert len(after_lines) == len(before_lines)
    changed = [i for i, (a, b) in enumerate(zip(before_lines, after_lines, strict=True)) if a != b]
    assert changed == [2]  # only the old key's line, in place
    assert after_lines[2] == env.keys["new"][1].encode()


def test_add_and_remove(env: Env) -> None:
    assert not env.login("extra")
    added = env.apply(
        "rotation",
        {
            "rotation_id": "rot_e2e2",
            "user": env.user,
            "action": "add",
            "new_key": env.keys["extra"][1],
            "options": "no-pty",
        },
    )
    assert added["status"] == "applied", added
    assert env.login("extra")
    removed = env.apply(
        "rotation",
        {
            "rotation_id": "rot_e2e3",
            "user": env.user,
            "action": "remove",
            "old_fingerprint": env.keys["extra"][2],
        },
    )
    assert removed["status"] == "applied", removed
    assert not env.login("extra")
    assert env.login("bystander")
    assert env.ak.read_bytes().startswith(f"# keys of {env.user}\n".encode())
    assert env.ak.read_bytes().endswith(b"\nnot a key\n")


def test_ephemeral_grant_expires(env: Env) -> None:
    path, _ = keygen(env.tmp / "id_eph", "eph@e2e")
    pub = path.with_suffix(".pub").read_text().strip()
    env.keys["eph"] = (path, pub, "")
    expires = (datetime.now(UTC) + timedelta(seconds=4)).replace(microsecond=0)
    result = env.apply(
        "ephemeral",
        {
            "grant_id": "eph_e2e1",
            "user": env.user,
            "public_key": pub,
            "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        exp_s=60,
    )
    assert result["status"] == "applied", result
    assert env.login("eph")
    assert env.applier.sweep_ephemeral() == 0  # not due yet
    while datetime.now(UTC) < expires + timedelta(seconds=1):
        time.sleep(0.2)
    # The line is still there, but sshd itself refuses it (expiry-time)...
    assert b"sshklm-ephemeral:eph_e2e1" in env.ak.read_bytes()
    assert not env.login("eph")
    # ...and the sweep removes it.
    assert env.applier.sweep_ephemeral() == 1
    assert b"sshklm-ephemeral:eph_e2e1" not in env.ak.read_bytes()
    assert not env.login("eph")
    assert env.login("bystander")
    assert oct(env.ak.stat().st_mode & 0o777) == "0o600"


def test_rollback_command(env: Env) -> None:
    """`sshklm-agent rollback` as a process: the last rotation (the removal of `extra`) is undone,
    proven by a login; the first one is refused, the file having changed since, and nothing moves."""
    config = env.tmp / "rollback.toml"
    config.write_text(
        f'[state]\ndir = "{env.tmp / "state"}"\n[discovery]\nsshd_config = "{env.tmp / "sshd_config"}"\n'
    )

    def rollback(rotation_id: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "agent", "rollback", "--config", str(config), rotation_id]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    assert not env.login("extra")
    done = rollback("rot_e2e3")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"restored {env.ak}\n"
    assert env.login("extra") and env.login("new") and env.login("bystander")
    before = env.ak.read_bytes()
    refused = rollback("rot_e2e1")
    assert refused.returncode == 1
    assert f"{env.ak}: changed since rotation rot_e2e1; not restored" in refused.stderr
    assert env.ak.read_bytes() == before
    assert oct(env.ak.stat().st_mode & 0o777) == "0o600"
