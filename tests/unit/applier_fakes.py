"""In-memory fakes of the applier's ports (agent/instructions/ports.py), for unit tests without root.

`FakeHostFiles` keeps directories (owner, mode) and files (bytes, owner, mode, inode, mtime) in
dictionaries and behaves like the safe file layer where the applier's logic depends on it: a
directory is opened (created when asked: the user's inside the user's home, root's elsewhere), it
knows whether it is inside the home and whether a new file there may be the user's, a write is
refused "changed since read" when the file is not the one its read saw, paths can be made unsafe,
and hooks run just before a write lands (a concurrent change) or instead of it (a crash). It
records what happened:
the writes, the directories opened and whether they were closed. The production implementation
is `agent.instructions.host_files.SafeHostFiles`; the root tests (tests/integration/test_apply*.py)
run the same logic over it.
"""

from __future__ import annotations

import itertools
import posixpath
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.host.safefs import CHANGED_SINCE_READ, CreateSpec, FileInfo, ReadResult, UnsafePath
from agent.host.users import User
from agent.instructions.apply import Applier, ApplierSettings
from agent.inventory.evaluate import Policy
from agent.inventory.model import Event, ScanError
from agent.ssh.sshd_config import ParsedSshdConfig, parse_sshd_config
from agent.store.db import open_database
from agent.store.state import StateStore
from tests.integration.apply_support import HOST_ID, POLICY, Signer

SSHD_CONFIG = "/etc/ssh/sshd_config"


@dataclass
class FakeFile:
    data: bytes
    uid: int
    gid: int
    mode: int  # permission bits
    ino: int
    mtime: float


class FakeKeysDir:
    def __init__(self, host: FakeHostFiles, path: str, home: str | None, user_may_own: bool) -> None:
        self.host = host
        self._path = path
        self._home = home
        self._user_may_own = user_may_own
        self.closed = False

    @property
    def path(self) -> str:
        return self._path

    @property
    def home(self) -> str | None:
        return self._home

    @property
    def user_may_own(self) -> bool:
        return self._user_may_own

    def _child(self, name: str) -> str:
        assert not self.closed, "used after close"
        assert "/" not in name
        path = posixpath.join(self._path, name)
        self.host.check_safe(path)
        return path

    def read(self, name: str) -> ReadResult | None:
        path = self._child(name)
        self.host.reads.append(path)
        f = self.host.files.get(path)
        truncated = path in self.host.too_large
        return None if f is None else ReadResult(f.data, self.host.info(path, f), path, (), truncated)

    def _guard(self, path: str, expect: FileInfo | None) -> None:
        if expect is None:
            return
        f = self.host.files.get(path)
        if f is None or (f.ino, len(f.data), f.mtime) != (expect.ino, expect.size, expect.mtime):
            raise UnsafePath(CHANGED_SINCE_READ, path)

    def replace(
        self, name: str, data: bytes, *, uid: int, gid: int, mode: int, expect: FileInfo | None
    ) -> None:
        path = self._child(name)
        self._guard(path, expect)
        hook = self.host.before_write.pop(path, None)
        if hook is not None:
            hook()  # a concurrent change, or a crash (raise)
        self._guard(path, expect)
        self.host.files[path] = FakeFile(data, uid, gid, mode, self.host.new_ino(), self.host.tick())
        self.host.writes.append(path)

    def remove(self, name: str, *, expect: FileInfo) -> None:
        path = self._child(name)
        self._guard(path, expect)
        del self.host.files[path]
        self.host.writes.append(path)

    def close(self) -> None:
        self.closed = True


class FakeHostFiles:
    """`HostFiles` in memory (see the module docstring)."""

    def __init__(self) -> None:
        self.dirs: dict[str, tuple[int, int, int]] = {"/": (0, 0, 0o755), "/home": (0, 0, 0o755)}
        self.files: dict[str, FakeFile] = {}
        self.backups: dict[str, bytes] = {}
        self.sshd_config_text = "AuthorizedKeysFile .ssh/authorized_keys .ssh/authorized_keys2\n"
        self.unsafe: dict[str, str] = {}  # path -> reason: any operation on it is refused
        self.too_large: set[str] = set()  # paths whose reads are cut at the byte cap (truncated)
        self.before_write: dict[str, Callable[[], None]] = {}  # path -> run once, just before a write lands
        self.writes: list[str] = []
        self.reads: list[str] = []
        self.opened: list[FakeKeysDir] = []
        self.created_dirs: list[str] = []
        self._inos = itertools.count(1000)
        self._clock = itertools.count(1)

    # -- set-up and inspection --

    def new_ino(self) -> int:
        return next(self._inos)

    def tick(self) -> float:
        return float(next(self._clock))

    def add_home(self, user: User, *, ssh_dir: bool = True) -> None:
        self.dirs[user.home] = (user.uid, user.gid, 0o755)
        if ssh_dir:
            self.dirs[user.home + "/.ssh"] = (user.uid, user.gid, 0o700)

    def put(self, path: str, data: bytes, *, uid: int, gid: int, mode: int = 0o600) -> None:
        assert posixpath.dirname(path) in self.dirs
        self.files[path] = FakeFile(data, uid, gid, mode, self.new_ino(), self.tick())

    def text(self, path: str) -> str | None:
        f = self.files.get(path)
        return None if f is None else f.data.decode()

    def info(self, path: str, f: FakeFile) -> FileInfo:
        return FileInfo(path, f.uid, f.gid, stat.S_IFREG | f.mode, len(f.data), f.mtime, 1, f.ino, 1, "tmpfs")

    def check_safe(self, path: str) -> None:
        if path in self.unsafe:
            raise UnsafePath(self.unsafe[path], path)

    def all_closed(self) -> bool:
        return all(d.closed for d in self.opened)

    # -- HostFiles --

    def read(self, path: str, *, confine: str, user_uid: int) -> bytes:
        self.check_safe(path)
        self.reads.append(path)
        f = self.files.get(path)
        if f is None:
            raise FileNotFoundError(2, "No such file or directory", path)
        return f.data

    def sshd_config(self, path: str) -> ParsedSshdConfig:
        assert path == SSHD_CONFIG
        return parse_sshd_config(self.sshd_config_text, path, lambda pattern: [])

    def open_dir(self, path: str, *, confine: str, user_uid: int, create: CreateSpec | None) -> FakeKeysDir:
        in_home = path == confine or path.startswith(confine.rstrip("/") + "/")
        self.check_safe(path)
        if path not in self.dirs:
            parent = posixpath.dirname(path)
            if create is None or parent not in self.dirs:
                raise FileNotFoundError(2, "No such file or directory", path)
            if in_home and self.dirs[parent][0] == user_uid:
                self.dirs[path] = (create.uid, create.gid, create.mode)
            else:
                self.dirs[path] = (0, 0, 0o755)
            self.created_dirs.append(path)
        mine = in_home and self.dirs[path][0] == user_uid
        handle = FakeKeysDir(self, path, confine if in_home else None, mine)
        self.opened.append(handle)
        return handle

    def write_backup(self, name: str, data: bytes) -> None:
        assert name not in self.backups
        self.backups[name] = data

    def read_backup(self, name: str) -> bytes:
        if name not in self.backups:
            raise FileNotFoundError(2, "No such file or directory", name)
        return self.backups[name]

    def delete_backup(self, name: str) -> None:
        if self.backups.pop(name, None) is None:
            raise FileNotFoundError(2, "No such file or directory", name)


class FakeUsers:
    def __init__(self, users: Sequence[User]) -> None:
        self.by_name = {u.name: u for u in users}

    def all(self) -> list[User]:
        return list(self.by_name.values())

    def get(self, name: str) -> User | None:
        return self.by_name.get(name)

    def problems(self) -> list[ScanError]:
        return []


@dataclass
class RecordingHooks:
    """`DaemonHooks` that record what the applier tells the daemon."""

    policy_value: Policy = POLICY
    events: list[Event] = field(default_factory=list)
    managed: list[tuple[str, str | None, str, str, datetime | None]] = field(default_factory=list)
    scheduled: dict[str, tuple[Callable[[], None], datetime]] = field(default_factory=dict)
    scans: list[str] = field(default_factory=list)
    fail_emit: bool = False
    fail_scan: bool = False

    def host_id(self) -> str | None:
        return HOST_ID

    def policy(self) -> Policy:
        return self.policy_value

    def emit(self, events: Sequence[Event]) -> None:
        if self.fail_emit:
            raise RuntimeError("outbox unavailable")
        self.events.extend(events)

    def note_managed(
        self, fingerprint: str, user: str | None, path: str, managed_by: str, expires_at: datetime | None
    ) -> None:
        self.managed.append((fingerprint, user, path, managed_by, expires_at))

    def schedule_once(self, job_id: str, fn: Callable[[], None], when: datetime) -> None:
        self.scheduled[job_id] = (fn, when)

    def run_scan(self, scan_id: str) -> None:
        if self.fail_scan:
            raise RuntimeError("scan broke")
        self.scans.append(scan_id)


@dataclass
class Clock:
    now: datetime = field(default_factory=lambda: datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


ALICE = User("alice", 2001, 2001, "/home/alice", "/bin/sh", ("alice",))
BOB = User("bob", 2002, 2002, "/home/bob", "/bin/sh", ("bob",))
ROOT = User("root", 0, 0, "/root", "/bin/sh", ("root",))


@dataclass
class World:
    """An applier over the fakes, with everything a test looks at."""

    applier: Applier
    files: FakeHostFiles
    hooks: RecordingHooks
    store: StateStore
    clock: Clock
    signer: Signer
    state_dir: Path

    def restart(self) -> World:
        """A new applier over the same host, store and clock (after a crash)."""
        return make_world(self.state_dir, files=self.files, clock=self.clock, signer=self.signer)

    def token(self, kind: str, body: dict[str, object], **kw: object) -> str:
        return self.signer.token(kind, body, now=self.clock().timestamp(), **kw)  # type: ignore[arg-type]

    def apply(self, kind: str, body: dict[str, object], **kw: object) -> dict[str, object]:
        _, result = self.applier.handle(self.token(kind, body, **kw))
        return result


def make_world(
    state_dir: Path,
    *,
    files: FakeHostFiles | None = None,
    clock: Clock | None = None,
    signer: Signer | None = None,
    policy: Policy = POLICY,
    sweep_s: float = 60.0,
) -> World:
    if files is None:
        files = FakeHostFiles()
        for user in (ALICE, BOB, ROOT):
            files.add_home(user)
    clock = clock or Clock()
    signer = signer or Signer()
    hooks = RecordingHooks(policy)
    store = StateStore(open_database(state_dir))
    settings = ApplierSettings(
        sshd_config=SSHD_CONFIG,
        public_keys=(signer.public_openssh,),
        leeway_s=5,
        backups_per_file=3,
        ephemeral_sweep_s=sweep_s,
    )
    applier = Applier(settings, files, FakeUsers([ALICE, BOB, ROOT]), store, hooks, clock=clock)
    return World(applier, files, hooks, store, clock, signer, state_dir)
