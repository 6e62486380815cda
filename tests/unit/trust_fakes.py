"""In-memory fakes of the trust ports (agent/instructions/trust_ports.py), for unit tests of
revocation.py, ca_trust.py and trust.py without root, sshd or ssh-keygen.

`FakeTrustFiles` keeps the agent's files (bytes, owner, mode, inode) and behaves like
`AgentTrustFiles` where the logic depends on it: a write guarded by a read is refused when the file
changed since, a write can be made to fail (disk full) or a path unsafe. `FakeKeygen` "builds" a KRL
as a recognisable text listing the entries (with the KRL magic) and lists it back, and can be made
missing, failing, or lying. `FakeSshd` answers `sshd -T` from a dict and parses an sshd_config text.
The real implementations run in tests/integration/test_e2e_trust*.py and test_trust_files.py.
"""

from __future__ import annotations

import errno
import itertools
import json
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from agent.host.keygen import KeygenError
from agent.host.safefs import CHANGED_SINCE_READ, FileInfo, UnsafePath
from agent.host.sshd_control import SshdError
from agent.host.trust_files import Current, TrustLayout
from agent.instructions.trust import Trust
from agent.ssh.krl import KRL_MAGIC, KrlContents, RevocationEntry, expected_contents
from agent.ssh.sshd_config import ParsedSshdConfig, parse_sshd_config
from agent.store.db import open_database
from agent.store.state import StateStore
from agent.store.trust_state import TrustState

LAYOUT = TrustLayout("/etc/ssh/sshklm-agent")


@dataclass
class FakeFile:
    data: bytes
    uid: int = 0
    gid: int = 0
    mode: int = 0o644
    ino: int = 0


class FakeTrustFiles:
    def __init__(self) -> None:
        self.files: dict[str, FakeFile] = {}
        self.fail_write: dict[str, OSError] = {}  # name -> raised by every write of it
        self.unsafe: set[str] = set()
        self.writes: list[str] = []
        self.removes: list[str] = []
        self.ensured = 0
        self._inos = itertools.count(1)

    def path(self, name: str) -> str:
        return LAYOUT.path_of(name)

    def put(self, name: str, data: bytes, **kw: int) -> None:
        self.files[name] = FakeFile(data, ino=next(self._inos), **kw)

    def _current(self, name: str) -> Current | None:
        f = self.files.get(name)
        if f is None:
            return None
        info = FileInfo(
            self.path(name), f.uid, f.gid, stat.S_IFREG | f.mode, len(f.data), 0.0, 1, f.ino, 1, None
        )
        return Current(f.data, info)

    def read(self, name: str) -> Current | None:
        if name in self.unsafe:
            raise UnsafePath("symlink on the path", self.path(name))
        return self._current(name)

    def _guard(self, name: str, expect: Current | None) -> None:
        now = self.files.get(name)
        if expect is not None and (now is None or now.ino != expect.info.ino):
            raise UnsafePath(CHANGED_SINCE_READ, self.path(name))

    def write(self, name: str, data: bytes, *, expect: Current | None) -> None:
        if name in self.fail_write:
            raise self.fail_write[name]
        self._guard(name, expect)
        self.put(name, data)
        self.writes.append(name)

    def remove(self, name: str, *, expect: Current) -> None:
        self._guard(name, expect)
        del self.files[name]
        self.removes.append(name)

    def list_principals(self) -> list[str]:
        return sorted(n.split("/", 1)[1] for n in self.files if n.startswith("principals/"))

    def ensure_dirs(self) -> None:
        self.ensured += 1


def disk_full() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


class FakeKeygen:
    """A KRL is the magic, then JSON {"version", "entries"}; `list_krl` reads that back."""

    def __init__(self) -> None:
        self.missing = False
        self.fail_build: str | None = None  # ssh-keygen's complaint
        self.drop_from_listing = False  # list one entry fewer than built (a broken tool)
        self.builds = 0

    def build_krl(
        self, entries: Iterable[RevocationEntry], *, version: int, comment: str, work_dir: str
    ) -> bytes:
        if self.missing:
            raise KeygenError("KEYGEN_MISSING", "/usr/bin/ssh-keygen is not installed")
        if self.fail_build is not None:
            raise KeygenError("KEYGEN_FAILED", f"ssh-keygen -k: {self.fail_build}")
        self.builds += 1
        doc = {"version": version, "entries": [e.to_json() for e in sorted(set(entries))]}
        return KRL_MAGIC + json.dumps(doc).encode()

    def list_krl(self, data: bytes) -> KrlContents:
        if self.missing:
            raise KeygenError("KEYGEN_MISSING", "/usr/bin/ssh-keygen is not installed")
        try:
            doc = json.loads(data[len(KRL_MAGIC) :]) if data.startswith(KRL_MAGIC) else None
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise KeygenError("KRL_INVALID", "ssh-keygen -Q -l: Invalid KRL file")
        entries = [RevocationEntry.from_json(e) for e in doc["entries"]]
        if self.drop_from_listing and entries:
            entries = entries[1:]
        contents = expected_contents(entries)
        return KrlContents(version=doc["version"], sha256=contents.sha256, certificates=contents.certificates)


@dataclass
class FakeSshd:
    values: dict[str, str] = field(
        default_factory=lambda: {
            "revokedkeys": LAYOUT.revoked_keys,
            "trustedusercakeys": LAYOUT.trusted_user_ca_keys,
            "authorizedprincipalsfile": LAYOUT.principals_template,
        }
    )
    config_text: str = ""
    broken: str | None = None  # sshd -T fails with this complaint

    def effective(self) -> dict[str, str]:
        if self.broken is not None:
            raise SshdError(f"sshd -T: {self.broken}")
        return dict(self.values)

    def parsed(self) -> ParsedSshdConfig:
        return parse_sshd_config(self.config_text, "/etc/ssh/sshd_config", lambda pattern: [])


@dataclass
class TrustWorld:
    trust: Trust
    files: FakeTrustFiles
    keygen: FakeKeygen
    sshd: FakeSshd
    state: TrustState
    sshd_version: list[str]  # [version]: tests change it


def make_trust_world(state_dir: Path, *, files: FakeTrustFiles | None = None) -> TrustWorld:
    files = files or FakeTrustFiles()
    keygen, sshd = FakeKeygen(), FakeSshd()
    state = TrustState(StateStore(open_database(state_dir)))
    version = ["OpenSSH_9.2p1"]
    trust = Trust(
        files,
        keygen,
        sshd,
        state,
        LAYOUT,
        work_dir=str(state_dir / "krl"),
        sshd_version=lambda: version[0],
    )
    return TrustWorld(trust, files, keygen, sshd, state, version)
