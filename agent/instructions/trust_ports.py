"""What the revocation and CA-trust appliers need from the host, as small interfaces (ports).

Production has one implementation of each: `host.trust_files.AgentTrustFiles` (the agent's
directory through the safe file layer), `host.keygen.SshKeygen` (ssh-keygen -k / -Q -l) and
`host.sshd_control.SshdControl` (sshd -T). The unit tests drive revocation.py and ca_trust.py over
in-memory fakes (tests/unit/trust_fakes.py), failures included; the real-sshd tests use these.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from agent.host.trust_files import Current
from agent.ssh.krl import KrlContents, RevocationEntry
from agent.ssh.sshd_config import ParsedSshdConfig


class TrustFiles(Protocol):
    """The agent's files for sshd, by name relative to its directory ("revoked_keys",
    "trusted_user_ca_keys", "principals/<user>"). Errors: UnsafePath, OSError."""

    def path(self, name: str) -> str: ...

    def read(self, name: str) -> Current | None: ...

    def write(self, name: str, data: bytes, *, expect: Current | None) -> None: ...

    def remove(self, name: str, *, expect: Current) -> None: ...

    def list_principals(self) -> list[str]: ...

    def ensure_dirs(self) -> None: ...


class KrlTool(Protocol):
    """ssh-keygen. Errors: host.keygen.KeygenError."""

    def build_krl(
        self, entries: Iterable[RevocationEntry], *, version: int, comment: str, work_dir: str
    ) -> bytes: ...

    def list_krl(self, data: bytes) -> KrlContents: ...


class SshdConfigured(Protocol):
    """sshd's configuration as it would run: `sshd -T` (errors: host.sshd_control.SshdError), and
    the parsed sshd_config for the Match blocks `sshd -T` does not show."""

    def effective(self) -> dict[str, str]: ...

    def parsed(self) -> ParsedSshdConfig: ...
