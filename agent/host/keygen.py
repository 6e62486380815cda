"""OpenSSH's `ssh-keygen` as the agent's KRL tool: build a KRL from the agent's entries
(`ssh-keygen -k`, `-u` for each CA's certificate entries) and read one back (`ssh-keygen -Q -l`).

Why not our own encoder: sshd reads the KRL with the very code `ssh-keygen` writes it with, so a
KRL built and listed by ssh-keygen is one sshd reads the same way, whatever the OpenSSH version.

A build runs in a fresh private directory (0700, under the agent's state directory): the spec
files and CA keys are written there, ssh-keygen writes the KRL there, the bytes are read back and
the directory is removed. The live file is never handed to ssh-keygen: the caller checks the new
bytes and installs them atomically. Errors are `KeygenError` with a code and a message that names
the step and ssh-keygen's own complaint (one line, no key material: ssh-keygen prints none).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from typing import Final

from agent.host.safefs import open_private_dir, write_all
from agent.ssh.krl import KrlContents, KrlError, RevocationEntry, is_krl, parse_dump, render_specs

DEFAULT_SSH_KEYGEN: Final = "/usr/bin/ssh-keygen"
TIMEOUT_S: Final = 60.0
_MESSAGE_MAX: Final = 200


class KeygenError(Exception):
    """`code`: KEYGEN_MISSING (not installed / not executable), KEYGEN_FAILED (it refused or
    crashed: disk full, bad spec), KRL_INVALID (the bytes are not a KRL ssh-keygen can read),
    IO_ERROR (the scratch directory could not be written)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _complaint(stderr: bytes) -> str:
    """ssh-keygen's last non-empty stderr line, printable and short (it never prints key material)."""
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    text = lines[-1] if lines else "no message"
    return "".join(ch if ch.isprintable() else "?" for ch in text)[:_MESSAGE_MAX]


class SshKeygen:
    """Runs ssh-keygen (path from `trust.ssh_keygen`). Thread-safe: no shared state."""

    def __init__(self, binary: str = DEFAULT_SSH_KEYGEN, *, timeout_s: float = TIMEOUT_S) -> None:
        self.binary = binary
        self.timeout_s = timeout_s

    def _run(self, args: list[str], *, stdin: bytes | None = None, what: str) -> bytes:
        try:
            proc = subprocess.run(
                [self.binary, *args],
                input=stdin,
                capture_output=True,
                timeout=self.timeout_s,
                check=False,
                env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
            )
        except FileNotFoundError:
            raise KeygenError("KEYGEN_MISSING", f"{self.binary} is not installed") from None
        except PermissionError:
            raise KeygenError("KEYGEN_MISSING", f"{self.binary} cannot be run (permission denied)") from None
        except subprocess.TimeoutExpired:
            raise KeygenError("KEYGEN_FAILED", f"{what}: ssh-keygen timed out") from None
        except OSError as exc:
            raise KeygenError("KEYGEN_FAILED", f"{what}: {exc.strerror or type(exc).__name__}") from None
        if proc.returncode != 0:
            raise KeygenError("KEYGEN_FAILED", f"{what}: {_complaint(proc.stderr)}")
        return proc.stdout

    # -- reading ------------------------------------------------------------------------------

    def list_krl(self, data: bytes) -> KrlContents:
        """What a KRL revokes, as `ssh-keygen -Q -l` lists it (fed on stdin: the file is read by
        the caller through the safe file layer). KeygenError KRL_INVALID when it is not one."""
        if not is_krl(data):
            raise KeygenError("KRL_INVALID", "not a KRL (no KRL header)")
        try:
            out = self._run(["-Q", "-l", "-f", "/dev/stdin"], stdin=data, what="ssh-keygen -Q -l")
        except KeygenError as exc:
            if exc.code == "KEYGEN_FAILED":
                raise KeygenError("KRL_INVALID", exc.message) from None
            raise
        try:
            return parse_dump(out.decode("utf-8", "replace"))
        except KrlError as exc:
            raise KeygenError("KRL_INVALID", f"ssh-keygen -Q -l: {exc}") from None

    # -- building -----------------------------------------------------------------------------

    def build_krl(
        self, entries: Iterable[RevocationEntry], *, version: int, comment: str, work_dir: str
    ) -> bytes:
        """A KRL revoking exactly `entries`, numbered `version` (`-z`, listed as "KRL version"),
        built in a fresh private directory under `work_dir` and returned as bytes."""
        plain_spec, ca_specs = render_specs(entries)
        try:
            return self._build(plain_spec, ca_specs, version, comment, work_dir)
        except OSError as exc:  # the scratch directory: disk full, read-only, ...
            raise KeygenError("IO_ERROR", f"building the KRL: {exc.strerror or type(exc).__name__}") from None

    def _build(
        self, plain_spec: str, ca_specs: dict[str, str], version: int, comment: str, work_dir: str
    ) -> bytes:
        with _scratch(work_dir) as scratch:
            out = os.path.join(scratch, "krl")
            spec = _write(scratch, "spec", plain_spec.encode("ascii"))
            self._run(["-k", "-q", "-f", out, "-z", str(version), "-C", comment, spec], what="ssh-keygen -k")
            for index, (ca_key, text) in enumerate(ca_specs.items()):
                ca_file = _write(scratch, f"ca{index}.pub", (ca_key + "\n").encode("ascii"))
                spec = _write(scratch, f"spec{index}", text.encode("utf-8"))
                self._run(
                    ["-k", "-u", "-q", "-f", out, "-s", ca_file, "-z", str(version), spec],
                    what="ssh-keygen -k -u -s CA",
                )
            with open(out, "rb") as fh:
                return fh.read()


@contextlib.contextmanager
def _scratch(work_dir: str) -> Iterator[str]:
    """A fresh 0700 directory under the private `work_dir`; removed afterwards, whatever happens."""
    os.close(open_private_dir(work_dir))
    scratch = tempfile.mkdtemp(prefix="krl-", dir=work_dir)
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _write(directory: str, name: str, data: bytes) -> str:
    path = os.path.join(directory, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)
    return path
