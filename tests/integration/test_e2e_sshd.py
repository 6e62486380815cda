"""End to end with a real OpenSSH sshd: instructions from the reference control plane, applied by
the Applier to a throwaway user's real home, proven by real `ssh` logins.

Root only (useradd, sshd); skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

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
    key_pairs,
    keygen,
    remove_user,
    ssh_login,
    sshd_config_text,
    start_sshd,
    write_authorized_keys,
)

pytestmark = REAL_SSHD_MARKS


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

    def login(self, key: str, source: str = "127.0.0.1") -> bool:
        return ssh_login(self.user, self.port, self.keys[key][0], source=source)

    def apply(self, kind: str, body: dict[str, Any], exp_s: int = 600) -> dict[str, Any]:
        token = self.cp.issue_instruction(self.host_id, kind, body, exp_s=exp_s)
        _, result = self.applier.handle(token)
        return result


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("e2e")
    os.chmod(tmp, 0o755)
    user, pw = add_user()
    sshd: subprocess.Popen[bytes] | None = None
    cp: ControlPlane | None = None
    try:
        home = Path(pw.pw_dir)
        keys = key_pairs(tmp, ("old", "new", "extra", "bystander"))
        write_authorized_keys(
            pw, f"# keys of {user}\n{keys['bystander'][1]}\n{keys['old'][1]}\n\nnot a key\n"
        )

        port = free_port()
        config = tmp / "sshd_config"
        config.write_text(sshd_config_text(tmp, port))
        sshd = start_sshd(tmp, config, port)

        cp = ControlPlane.start()
        host_id = enrolled_host_id(cp.url, cp.bootstrap_token, "e2e")
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
            NullHooks(host_id, policy),
            clock=lambda: datetime.now(UTC),
        )
        yield Env(user, home, port, tmp, cp, host_id, applier, keys)
    finally:
        if cp is not None:
            cp.stop()
        if sshd is not None:
            sshd.terminate()
            sshd.wait(timeout=10)
        remove_user(user)


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


def _new_key(env: Env, name: str) -> str:
    path, both = keygen(env.tmp / f"id_{name}", f"{name}@e2e")
    line, fp = both.split("\t")
    env.keys[name] = (path, line, fp)
    return line


def _append_by_hand(env: Env, line: str) -> None:
    """What a user or another tool writes: the file keeps its owner and mode."""
    with env.ak.open("a") as f:
        f.write(line + "\n")


def test_add_with_options_restricts_a_key_already_present(env: Env) -> None:
    """Issue 11: an `add` with options for a key already in the file without them (or only in a
    line sshd ignores) reported `applied` and wrote nothing: the key stayed unrestricted (or
    unusable). After `applied` sshd must honour exactly what was asked: `from="127.0.0.2"`
    refuses a login from 127.0.0.1 and lets one from 127.0.0.2 in."""
    line = _new_key(env, "opt")
    _append_by_hand(env, line)
    assert env.login("opt")
    result = env.apply(
        "rotation",
        {
            "rotation_id": "rot_e2e4",
            "user": env.user,
            "action": "add",
            "new_key": line,
            "options": 'from="127.0.0.2"',
        },
    )
    assert result["status"] == "applied", result
    assert env.keys["opt"][2] in result["fingerprints_after"]
    assert not env.login("opt", source="127.0.0.1")
    assert env.login("opt", source="127.0.0.2")
    assert env.login("bystander")

    # Present only as an expired line, or only as a cert-authority line: the key is added for real.
    for name, prefix in (("expired", 'expiry-time="20200101Z"'), ("ca", "cert-authority")):
        line = _new_key(env, name)
        _append_by_hand(env, f"{prefix} {line}")
        assert not env.login(name)
        body = {"rotation_id": f"rot_e2e_{name}", "user": env.user, "action": "add", "new_key": line}
        result = env.apply("rotation", body)
        assert result["status"] == "applied", result
        assert env.login(name)


def test_replace_with_options_when_the_new_key_is_already_there(env: Env) -> None:
    old = _new_key(env, "old2")
    new = _new_key(env, "new2")
    _append_by_hand(env, new)
    _append_by_hand(env, old)
    assert env.login("new2") and env.login("old2")
    result = env.apply(
        "rotation",
        {
            "rotation_id": "rot_e2e7",
            "user": env.user,
            "action": "replace",
            "old_fingerprint": env.keys["old2"][2],
            "new_key": new,
            "options": 'from="127.0.0.2"',
        },
    )
    assert result["status"] == "applied", result
    assert env.keys["old2"][2] not in result["fingerprints_after"]
    assert not env.login("old2")
    assert not env.login("new2", source="127.0.0.1")
    assert env.login("new2", source="127.0.0.2")
