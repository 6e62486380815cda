"""Shared fixtures for the Applier tests: a fake root with users, keys, a signer and a tree snapshot."""

from __future__ import annotations

import hashlib
import os
import stat
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.host.safefs import BeforeRename, HostFS
from agent.host.users import RootUserSource, UserSource
from agent.instructions.apply import Applier, ApplierSettings
from agent.instructions.host_files import SafeHostFiles
from agent.inventory.evaluate import Policy
from agent.inventory.model import Event
from agent.store.db import open_database
from agent.store.state import StateStore

HOST_ID = "hst_test0001"
POLICY = Policy(
    version=1,
    min_rsa_bits=2048,
    allowed_types=frozenset({"ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa", "sk-ssh-ed25519@openssh.com"}),
    max_key_age_days=365,
    require_from_for_root=False,
    ephemeral_max_ttl_s=86400,
)
# uid/gid per fake user: when not root, every file must belong to us, so everybody is "us".
_BASE_UID = 2001


def ssh_keypair(comment: str = "") -> tuple[Ed25519PrivateKey, str, str]:
    """(private key, "ssh-ed25519 AAAA... comment", SHA256 fingerprint)."""
    key = Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    blob = pub.split()[1]
    import base64

    digest = base64.b64encode(hashlib.sha256(base64.b64decode(blob)).digest()).decode().rstrip("=")
    line = pub.decode() + (f" {comment}" if comment else "")
    return key, line, f"SHA256:{digest}"


def public_line(comment: str = "") -> tuple[str, str]:
    _, line, fp = ssh_keypair(comment)
    return line, fp


@dataclass
class Signer:
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    @property
    def public_openssh(self) -> str:
        return (
            self.key.public_key()
            .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            .decode()
        )

    def token(
        self,
        kind: str,
        body: dict[str, Any],
        *,
        aud: str = HOST_ID,
        exp_in: int = 3600,
        jti: str | None = None,
        now: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        issued = int(now if now is not None else time.time())
        claims = {
            "jti": jti or f"ins_{uuid.uuid4().hex[:16]}",
            "aud": aud,
            "iat": issued,
            "exp": issued + exp_in,
            "kind": kind,
            "body": body,
            **(extra or {}),
        }
        return jwt.encode(claims, self.key, algorithm="EdDSA", headers={"kid": "test"})


@dataclass
class FakeHost:
    root: Path
    state: Path
    uids: dict[str, int]
    events: list[dict[str, Any]] = field(default_factory=list)
    managed: list[tuple[str, str | None, str, str, datetime | None]] = field(default_factory=list)
    scans: list[str] = field(default_factory=list)
    now: datetime | None = None

    def home(self, user: str) -> Path:
        return self.root / "home" / user

    def ak(self, user: str) -> Path:
        return self.home(user) / ".ssh" / "authorized_keys"

    def clock(self) -> datetime:
        return self.now or datetime.now(UTC)


def _owner(uid: int) -> int:
    return uid if os.geteuid() == 0 else os.geteuid()


def make_fake_host(tmp: Path, users: tuple[str, ...] = ("alice", "bob")) -> FakeHost:
    root = tmp / "root"
    (root / "etc" / "ssh").mkdir(parents=True)
    (root / "home").mkdir()
    uids = {name: _owner(_BASE_UID + i) for i, name in enumerate(users)}
    gid_of = {
        name: _owner(_BASE_UID + i) if os.geteuid() == 0 else os.getegid() for i, name in enumerate(users)
    }
    passwd = ["root:x:0:0:root:/root:/bin/bash"]
    group = ["root:x:0:"]
    for name in users:
        passwd.append(f"{name}:x:{uids[name]}:{gid_of[name]}::/home/{name}:/bin/bash")
        group.append(f"{name}:x:{gid_of[name]}:")
        home = root / "home" / name
        (home / ".ssh").mkdir(parents=True)
        os.chmod(home, 0o755)
        os.chmod(home / ".ssh", 0o700)
        if os.geteuid() == 0:
            os.chown(home, uids[name], gid_of[name])
            os.chown(home / ".ssh", uids[name], gid_of[name])
    (root / "etc" / "passwd").write_text("\n".join(passwd) + "\n")
    (root / "etc" / "group").write_text("\n".join(group) + "\n")
    (root / "etc" / "ssh" / "sshd_config").write_text(
        "AuthorizedKeysFile .ssh/authorized_keys .ssh/authorized_keys2\n"
    )
    (root / "root").mkdir(mode=0o700)
    state = tmp / "state"
    return FakeHost(root, state, uids)


def write_ak(host: FakeHost, user: str, data: bytes, mode: int = 0o600) -> Path:
    path = host.ak(user)
    path.write_bytes(data)
    os.chmod(path, mode)
    if os.geteuid() == 0:
        st = os.stat(host.home(user))
        os.chown(path, st.st_uid, st.st_gid)
    return path


@dataclass
class HostHooks:
    """The applier's DaemonHooks for a FakeHost: events (as their wire JSON), managed lines and
    scans are recorded on the host; one-off jobs go to `schedule` when given (else nowhere)."""

    host: FakeHost
    policy_value: Policy = POLICY
    scan: Callable[[str], None] | None = None
    schedule: Callable[[str, Callable[[], None], datetime], None] | None = None

    def host_id(self) -> str | None:
        return HOST_ID

    def policy(self) -> Policy:
        return self.policy_value

    def emit(self, events: Sequence[Event]) -> None:
        self.host.events.extend(event.to_json() for event in events)

    def note_managed(
        self, fingerprint: str, user: str | None, path: str, managed_by: str, expires_at: datetime | None
    ) -> None:
        self.host.managed.append((fingerprint, user, path, managed_by, expires_at))

    def schedule_once(self, job_id: str, fn: Callable[[], None], when: datetime) -> None:
        if self.schedule is not None:
            self.schedule(job_id, fn, when)

    def run_scan(self, scan_id: str) -> None:
        (self.scan or self.host.scans.append)(scan_id)


def make_applier(
    host: FakeHost,
    signer: Signer,
    *,
    before_rename: BeforeRename | None = None,
    require_signature: bool = True,
    run_scan: Callable[[str], None] | None = None,
    schedule_once: Callable[[str, Callable[[], None], datetime], None] | None = None,
    policy: Policy = POLICY,
    users: UserSource | None = None,
) -> Applier:
    """The Applier over the real safe file layer on the fake root (the daemon's wiring)."""
    fs = HostFS(str(host.root), before_rename=before_rename)
    store = StateStore(open_database(host.state))
    settings = ApplierSettings(
        sshd_config="/etc/ssh/sshd_config",
        public_keys=(signer.public_openssh,),
        require_signature=require_signature,
        leeway_s=5,
        backups_per_file=3,
    )
    return Applier(
        settings,
        SafeHostFiles(fs, str(host.state / "backups")),
        users if users is not None else RootUserSource(fs),
        store,
        HostHooks(host, policy, run_scan, schedule_once),
        clock=host.clock,
    )


def snapshot(root: Path, *, exact: bool = False) -> dict[str, tuple[Any, ...]]:
    """Every entry under root: type, mode, owner, size, inode, content digest or link target.
    `exact` adds root itself, each entry's device and mtime (ns): a directory's mtime moves when
    an entry is created and removed again in it, so a temp file that came and went shows."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        names = [*dirnames, *filenames]
        if exact and dirpath == str(root):
            names.append(".")
        for name in names:
            path = os.path.normpath(os.path.join(dirpath, name))
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            if stat.S_ISREG(st.st_mode):
                detail: Any = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                detail = os.readlink(path)
            else:
                detail = None
            out[rel] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                st.st_size,
                st.st_ino,
                st.st_nlink,
                detail,
                *((st.st_dev, st.st_mtime_ns) if exact else ()),
            )
    return out


def changed(before: dict[str, tuple[Any, ...]], after: dict[str, tuple[Any, ...]]) -> set[str]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


# Fixtures shared by the applier's test files (registered in tests/conftest.py).


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    return make_fake_host(tmp_path)


@pytest.fixture
def signer() -> Signer:
    return Signer()


@pytest.fixture
def applier(host: FakeHost, signer: Signer) -> Applier:
    return make_applier(host, signer)
