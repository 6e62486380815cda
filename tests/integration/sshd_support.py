"""A real OpenSSH sshd for end-to-end tests: throwaway users, key pairs, a private sshd on a free
loopback port, and `ssh` logins as the proof (tests/integration/test_e2e_*.py)."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from agent.inventory.evaluate import Policy
from agent.inventory.model import Event

SSHD = "/usr/sbin/sshd"

# Every real-sshd test: root (useradd, sshd) and the OpenSSH tools.
REAL_SSHD_MARKS = [
    pytest.mark.root(reason="creates a user (useradd) and runs sshd"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates a user and runs sshd"),
    pytest.mark.skipif(not os.path.exists(SSHD), reason="openssh-server (/usr/sbin/sshd) is not installed"),
    pytest.mark.skipif(shutil.which("useradd") is None, reason="useradd is not available"),
    pytest.mark.skipif(shutil.which("ssh") is None, reason="ssh client is not installed"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path, comment: str) -> tuple[Path, str]:
    """A new ed25519 pair at `path`: (private key path, "public line<TAB>SHA256 fingerprint")."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True
    )
    pub = path.with_suffix(".pub").read_text().strip()
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(path) + ".pub"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return path, f"{pub}\t{out[1]}"


def key_pairs(tmp: Path, names: Sequence[str]) -> dict[str, tuple[Path, str, str]]:
    """name -> (private key path, public line, SHA256 fingerprint), one new ed25519 pair each."""
    keys: dict[str, tuple[Path, str, str]] = {}
    for name in names:
        path, both = keygen(tmp / f"id_{name}", f"{name}@e2e")
        line, fp = both.split("\t")
        keys[name] = (path, line, fp)
    return keys


def write_authorized_keys(pw: pwd.struct_passwd, text: str) -> Path:
    """~/.ssh (0700) and ~/.ssh/authorized_keys (0600) holding `text`, owned by the account."""
    ssh_dir = Path(pw.pw_dir) / ".ssh"
    ssh_dir.mkdir(mode=0o700)
    os.chown(ssh_dir, pw.pw_uid, pw.pw_gid)
    ak = ssh_dir / "authorized_keys"
    ak.write_text(text)
    os.chown(ak, pw.pw_uid, pw.pw_gid)
    os.chmod(ak, 0o600)
    return ak


def enrolled_host_id(url: str, bootstrap_token: str, hostname: str) -> str:
    """Enroll a new machine with the reference control plane; its host_id."""
    import httpx

    answer = httpx.post(
        f"{url}/v1/agents/enroll",
        headers={"Authorization": f"Bearer {bootstrap_token}"},
        json={"machine_id": secrets.token_hex(16), "hostname": hostname},
        timeout=10,
    )
    return str(answer.json()["host_id"])


def add_user(prefix: str = "sshklm") -> tuple[str, pwd.struct_passwd]:
    """A throwaway account with a home, usable without PAM (password field '*', not locked '!')."""
    user = f"{prefix}{secrets.token_hex(3)}"
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", user], check=True)
    subprocess.run(["usermod", "-p", "*", user], check=True)
    return user, pwd.getpwnam(user)


def remove_user(user: str) -> None:
    subprocess.run(["userdel", "-r", user], check=False, capture_output=True)


def sshd_config_text(tmp: Path, port: int, extra: str = "") -> str:
    return (
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp / 'hostkey'}\nPidFile {tmp / 'sshd.pid'}\n"
        "UsePAM no\nStrictModes yes\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nAuthorizedKeysFile .ssh/authorized_keys\nLogLevel VERBOSE\n" + extra
    )


def start_sshd(tmp: Path, config: Path, port: int) -> subprocess.Popen[bytes]:
    """sshd -D on `config` (its host key made in `tmp` if absent), once it accepts connections."""
    if not (tmp / "hostkey").exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "hostkey")], check=True
        )
    os.makedirs("/run/sshd", exist_ok=True)
    sshd = subprocess.Popen([SSHD, "-D", "-f", str(config), "-E", str(tmp / "sshd.log")])
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return sshd
        except OSError:
            if time.monotonic() > deadline or sshd.poll() is not None:
                raise RuntimeError("sshd did not start: " + (tmp / "sshd.log").read_text()) from None
            time.sleep(0.05)


def ssh_login(
    user: str, port: int, identity: Path, certificate: Path | None = None, source: str = "127.0.0.1"
) -> bool:
    """Does `ssh user@127.0.0.1 true` succeed with this key (and certificate), connecting from the
    loopback address `source` (sshd's `from=` sees it)?"""
    options = ["-o", f"CertificateFile={certificate}"] if certificate is not None else []
    proc = subprocess.run(
        [
            "ssh",
            "-b",
            source,
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "LogLevel=ERROR",
            *options,
            "-i",
            str(identity),
            "-p",
            str(port),
            f"{user}@127.0.0.1",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return proc.returncode == 0


@dataclass
class NullHooks:
    """No daemon around the applier: events are kept, managed lines go nowhere, no jobs, no scans."""

    host_id_value: str
    policy_value: Policy

    def __post_init__(self) -> None:
        self.events: list[Event] = []

    def host_id(self) -> str | None:
        return self.host_id_value

    def policy(self) -> Policy:
        return self.policy_value

    def emit(self, events: Sequence[Event]) -> None:
        self.events.extend(events)

    def note_managed(
        self, fingerprint: str, user: str | None, path: str, managed_by: str, expires_at: datetime | None
    ) -> None:
        return None

    def schedule_once(self, job_id: str, fn: Callable[[], None], when: datetime) -> None:
        return None

    def run_scan(self, scan_id: str) -> None:
        raise RuntimeError("no scans here")


@dataclass
class Site:
    """A user with keys in authorized_keys, and an sshd whose RevokedKeys, TrustedUserCAKeys and
    AuthorizedPrincipalsFile point into a fresh agent directory (`trust_dir`, under /run: see
    tests/integration/test_e2e_trust.py for why not /tmp). `close()` undoes it all."""

    tmp: Path
    base: Path
    trust_dir: Path
    user: str
    home: Path
    port: int
    config: Path
    keys: dict[str, tuple[Path, str, str]]  # name -> (private key, public line, fingerprint)
    sshd: subprocess.Popen[bytes] | None = None

    def login(self, key: str) -> bool:
        return ssh_login(self.user, self.port, self.keys[key][0])

    def start_sshd(self) -> None:
        self.sshd = start_sshd(self.tmp, self.config, self.port)

    def close(self) -> None:
        if self.sshd is not None:
            self.sshd.terminate()
            self.sshd.wait(timeout=10)
        remove_user(self.user)
        shutil.rmtree(self.base, ignore_errors=True)


def make_site(
    tmp: Path, authorized: Sequence[str] = ("member", "bystander"), others: Sequence[str] = ()
) -> Site:
    """Key pairs named `authorized` (in the user's authorized_keys) and `others` (not). sshd is not
    started yet: the agent creates its files first (`Site.start_sshd` afterwards)."""
    import tempfile

    tmp.mkdir(exist_ok=True)
    tmp.chmod(0o755)
    base = Path(tempfile.mkdtemp(prefix="sshklm-e2e-", dir="/run"))
    os.chmod(base, 0o755)
    trust_dir = base / "sshklm-agent"
    user, pw = add_user()
    keys = key_pairs(tmp, (*authorized, *others))
    write_authorized_keys(pw, "".join(f"{keys[name][1]}\n" for name in authorized))
    port = free_port()
    config = tmp / "sshd_config"
    config.write_text(
        sshd_config_text(
            tmp,
            port,
            f"RevokedKeys {trust_dir}/revoked_keys\nTrustedUserCAKeys {trust_dir}/trusted_user_ca_keys\n"
            f"AuthorizedPrincipalsFile {trust_dir}/principals/%u\n",
        )
    )
    return Site(tmp, base, trust_dir, user, Path(pw.pw_dir), port, config, keys)
