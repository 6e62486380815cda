"""A real OpenSSH sshd for end-to-end tests (root only): keys made by the real ssh-keygen, a
throwaway sshd on a loopback port, and a real `ssh` login as the proof of access."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path, comment: str) -> tuple[Path, str]:
    """A new ed25519 key at `path`: (path, "<public line>\\t<SHA256 fingerprint>")."""
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


def start_sshd(work: Path, port: int, settings: str) -> subprocess.Popen[bytes]:
    """sshd -D on 127.0.0.1:`port` with its own host key and pid file under `work`, plus
    `settings` (sshd_config lines); returns once it accepts connections."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / "hostkey")], check=True)
    config = work / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {work / 'hostkey'}\nPidFile {work / 'sshd.pid'}\n"
        + settings
    )
    os.makedirs("/run/sshd", exist_ok=True)
    sshd = subprocess.Popen([SSHD, "-D", "-f", str(config), "-E", str(work / "sshd.log")])
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return sshd
        except OSError:
            if time.monotonic() > deadline or sshd.poll() is not None:
                sshd.kill()
                raise RuntimeError("sshd did not start: " + (work / "sshd.log").read_text()) from None
            time.sleep(0.05)


def ssh_login(key: Path, port: int, user: str) -> bool:
    """Does `ssh -i key user@127.0.0.1 true` get in?"""
    proc = subprocess.run(
        [
            "ssh",
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
            "-i",
            str(key),
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
