"""`python -m tests.demoroot DIR`: a demo host for the README's walk-through (`--root DIR`).

A filesystem root with its own user database and homes, so the demo shows what it says on any
machine, as root or not: users alice and bob, an sshd_config, a host key, alice's keys (an ed25519
key on two lines, one of them expired, an RSA key, an invalid line) and identity keys (one without
a passphrase), and bob's world-writable authorized_keys (so StrictModes makes sshd ignore it).

The keys are always the same (README's `scan` sample is this root's output, compared by
tests/integration/test_readme.py): ed25519 keys come from fixed seeds, the RSA key is a fixed public
key, and its "passphrase-protected" identity file holds that public key with a filler where the
encrypted private part would be (an openssh-key-v1 file reveals its public half either way, which
is all a scan reads). Nobody can log in with any of it: this host exists only in a directory.

Run as root, the users get uids 1000 and 1001 and own their files; run unprivileged, both get the
caller's uid (a fake root cannot give files away), which the agent accepts the same way.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import uuid
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.fakeroot import FakeRoot
from tests.sshwire import s as put_string

HOSTNAME = "demo-host"
SSHD_CONFIG = "PubkeyAuthentication yes\nPasswordAuthentication no\nStrictModes yes\n"
RSA_PUBLIC = (
    "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCnqdqxduMi7ZJ5HVXdzL//IiPsEJ8gZDviytHdsm+iwL8C4yNo48TrW6UZI2x"
    "Tk5p7zKSqXuiNVnoEr52Eg1LEIsMRIpTIPsuGjo9DLQAVxiklgY9SmIWtItFY+WiGghS1b42w2sAP7z3a7Gq4MAYlAOVppHkto"
    "quwlkZs/ea9VtnHWFVAdntZ/BoLjoS6ZRl/hwY9hSuIUXgTpwDutXMtYoNVZseAh0vzOzm+JCvEzsg4WLYqHmYZ+jMfgQVv6Mzk"
    "b3JUp85ckaBHazQjCwy/P/U3RujYPo5nXOJd4M2CLWf+QfrHu8Ae4HTdn8v200PGc4em1DwcYXfz4YLL0PCd"
)


def _ed25519(name: str) -> ed25519.Ed25519PrivateKey:
    """A fixed ed25519 key for `name` (a demo: the seed is public, like everything here)."""
    return ed25519.Ed25519PrivateKey.from_private_bytes(
        hashlib.sha256(f"sshklm demo {name}".encode()).digest()
    )


def _public_line(key: ed25519.Ed25519PrivateKey, comment: str) -> str:
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{public.decode()} {comment}"


def _private_file(key: ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )


def _stand_in_encrypted_identity(public_line: str) -> bytes:
    """An openssh-key-v1 file that says "aes256-ctr + bcrypt" and holds `public_line`'s key; its
    encrypted section is filler (see the module docstring)."""
    import base64
    import textwrap

    blob = base64.b64decode(public_line.split()[1])
    body = (
        b"openssh-key-v1\x00"
        + put_string(b"aes256-ctr")
        + put_string(b"bcrypt")
        + put_string(put_string(b"\x00" * 16) + (16).to_bytes(4, "big"))
        + (1).to_bytes(4, "big")
        + put_string(blob)
        + put_string(b"\x00" * 64)
    )
    text = "\n".join(textwrap.wrap(base64.b64encode(body).decode(), 70))
    return f"-----BEGIN OPENSSH PRIVATE KEY-----\n{text}\n-----END OPENSSH PRIVATE KEY-----\n".encode()


def create(target: Path) -> FakeRoot:
    """Build the demo root in `target` (a new or empty directory)."""
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target} is not empty")
    privileged = os.geteuid() == 0
    root = FakeRoot(target, sshd_config=SSHD_CONFIG)
    laptop = _ed25519("alice laptop")
    laptop_line = _public_line(laptop, "alice@laptop")
    homes = {"alice": root.add_user("alice", 1000 if privileged else os.geteuid())}
    homes["bob"] = root.add_user("bob", 1001 if privileged else os.geteuid())
    root.authorized_keys(
        "alice",
        [
            laptop_line,
            f"{RSA_PUBLIC} alice-rsa",
            "ssh-ed25519",  # line 3: a key type and nothing else
            f'expiry-time="20200101" {laptop_line}',
        ],
    )
    root.authorized_keys("bob", [laptop_line], mode=0o666)
    root.write("/home/alice/.ssh/id_ed25519", _private_file(laptop), 0o600)
    root.write("/home/alice/.ssh/id_ed25519.pub", laptop_line + "\n", 0o644)
    root.write("/home/alice/.ssh/id_rsa", _stand_in_encrypted_identity(RSA_PUBLIC), 0o600)
    root.write("/home/alice/.ssh/id_rsa.pub", f"{RSA_PUBLIC} alice-rsa\n", 0o644)
    host = _ed25519("host")
    root.write("/etc/ssh/ssh_host_ed25519_key", _private_file(host), 0o600)
    root.write("/etc/ssh/ssh_host_ed25519_key.pub", _public_line(host, "root@host") + "\n", 0o644)
    root.write("/etc/hostname", HOSTNAME + "\n", 0o644)
    root.write("/etc/machine-id", uuid.uuid4().hex + "\n", 0o444)
    if privileged:
        for name, home in homes.items():
            uid = root.users[name][0]
            for path in (home, *home.joinpath(".ssh").rglob("*"), home / ".ssh"):
                os.chown(path, uid, uid)
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.demoroot", description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", help="where to create it (absent or empty)")
    args = parser.parse_args(argv)
    try:
        root = create(Path(args.dir))
    except (FileExistsError, OSError) as exc:
        print(f"demoroot: {exc}", file=sys.stderr)
        return 2
    users = ", ".join(f"{name} (uid {uid})" for name, (uid, _, _) in root.users.items() if name != "root")
    print(f"demo root {args.dir}: host {HOSTNAME}, users {users}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
