"""Build fake filesystem roots for `scan --root` tests and benchmarks (no real users touched)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

_PUB = (serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def ed25519_line(comment: str = "") -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(*_PUB).decode()
    return f"{key} {comment}".rstrip()


def rsa_line(bits: int = 2048, comment: str = "") -> str:
    key = (
        rsa.generate_private_key(public_exponent=65537, key_size=bits)
        .public_key()
        .public_bytes(*_PUB)
        .decode()
    )
    return f"{key} {comment}".rstrip()


def ecdsa_line(curve: ec.EllipticCurve | None = None, comment: str = "") -> str:
    key = ec.generate_private_key(curve or ec.SECP256R1()).public_key().public_bytes(*_PUB).decode()
    return f"{key} {comment}".rstrip()


def ed25519_private_openssh() -> tuple[bytes, str]:
    """(unencrypted private key file bytes, public line) of a fresh ed25519 key."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    return private, key.public_key().public_bytes(*_PUB).decode()


@dataclass
class FakeRoot:
    root: Path
    users: dict[str, tuple[int, int, str]] = field(default_factory=dict)
    sshd_config: str = ""

    def __post_init__(self) -> None:
        (self.root / "etc/ssh").mkdir(parents=True, exist_ok=True)
        self.add_account("root", 0, 0, "/root")
        self.write_sshd_config(self.sshd_config)

    def add_account(self, name: str, uid: int, gid: int, home: str) -> None:
        self.users[name] = (uid, gid, home)
        self._write_db()

    def add_user(self, name: str, uid: int, *, make_home: bool = True) -> Path:
        home = f"/home/{name}"
        self.add_account(name, uid, uid, home)
        path = self.path(home)
        if make_home:
            (path / ".ssh").mkdir(parents=True, exist_ok=True)
            os.chmod(path, 0o755)
            os.chmod(path / ".ssh", 0o700)
        return path

    def remove_user(self, name: str) -> None:
        del self.users[name]
        self._write_db()

    def _write_db(self) -> None:
        passwd = "".join(f"{n}:x:{u}:{g}::{h}:/bin/sh\n" for n, (u, g, h) in self.users.items())
        group = "".join(f"{n}:x:{g}:\n" for n, (u, g, h) in self.users.items())
        (self.root / "etc/passwd").write_text(passwd)
        (self.root / "etc/group").write_text(group)

    def path(self, host_path: str) -> Path:
        return self.root / host_path.lstrip("/")

    def write_sshd_config(self, text: str) -> None:
        self.sshd_config = text
        (self.root / "etc/ssh/sshd_config").write_text(text)

    def write(self, host_path: str, data: str | bytes, mode: int = 0o600) -> Path:
        target = self.path(host_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            data = data.encode()
        target.write_bytes(data)
        os.chmod(target, mode)
        return target

    def authorized_keys(
        self, user: str, lines: list[str], mode: int = 0o600, name: str = "authorized_keys"
    ) -> Path:
        home = self.users[user][2]
        return self.write(f"{home}/.ssh/{name}", "".join(line + "\n" for line in lines), mode)


def writable_root(path: Path, user: str = "alice", comment: str = "initial") -> FakeRoot:
    """A fake root with one user whose home, ~/.ssh and authorized_keys (one key) are owned by whoever
    runs the test (root in CI, else uid 1000 on paper), so the applier's owner checks pass."""
    uid = os.geteuid() or 1000
    fr = FakeRoot(path)
    home = fr.add_user(user, uid)
    fr.authorized_keys(user, [ed25519_line(comment)])
    if os.geteuid() == 0:
        for p in (home, home / ".ssh", home / ".ssh/authorized_keys"):
            os.chown(p, uid, uid)
    return fr
