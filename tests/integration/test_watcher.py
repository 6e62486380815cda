"""The change watcher against real inotify in temporary roots.

Each test builds a fake host root (homes, /etc/ssh, /etc/passwd) under tmp_path, starts a Watcher on
it and makes a real change the way a tool does it; it then waits (bounded) for the callback.
Failures (ENOSPC, queue overflow, network filesystems) go through the seams: a backend subclass and
a synthetic mount table. Nothing here changes host settings.
"""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.daemon import inotify
from agent.daemon.inotify import InotifyEvent
from agent.daemon.watch_targets import normalize_host_path
from agent.daemon.watcher import (
    REASON_OVERFLOW,
    REASON_WATCH_LIMIT,
    WATCH_MASK,
    InotifyBackend,
    Watcher,
    fstype_of,
    is_network_fstype,
    parse_mountinfo,
)

AK = "/home/alice/.ssh/authorized_keys"
SSH_DIR = "/home/alice/.ssh"
SSHD_CONFIG = "/etc/ssh/sshd_config"
PASSWD = "/etc/passwd"
TIMEOUT = 5.0


class Recorder:
    """Collects callbacks from the watcher's dispatch thread."""

    def __init__(self) -> None:
        self.changes: list[set[str]] = []
        self.rescans: list[str] = []
        self._cond = threading.Condition()

    def on_changes(self, paths: set[str]) -> None:
        with self._cond:
            self.changes.append(set(paths))
            self._cond.notify_all()

    def on_rescan(self, reason: str) -> None:
        with self._cond:
            self.rescans.append(reason)
            self._cond.notify_all()

    def seen(self) -> set[str]:
        with self._cond:
            return set().union(*self.changes) if self.changes else set()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def wait_path(self, path: str, timeout: float = TIMEOUT) -> bool:
        return self.wait_for(lambda: any(path in c for c in self.changes), timeout)

    def clear(self) -> None:
        with self._cond:
            self.changes.clear()
            self.rescans.clear()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "home/alice/.ssh").mkdir(parents=True)
    (r / "home/alice/.ssh/authorized_keys").write_text("ssh-ed25519 AAAA alice\n")
    (r / "etc/ssh").mkdir(parents=True)
    (r / "etc/ssh/sshd_config").write_text("PermitRootLogin no\n")
    (r / "etc/passwd").write_text("alice:x:1000:1000::/home/alice:/bin/sh\n")
    return r


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


WatcherFactory = Callable[..., Watcher]


@pytest.fixture
def make_watcher(root: Path, rec: Recorder) -> Iterator[WatcherFactory]:
    started: list[Watcher] = []

    def make(
        files: tuple[str, ...] = (AK, SSHD_CONFIG, PASSWD),
        dirs: tuple[str, ...] = (SSH_DIR,),
        **kwargs: object,
    ) -> Watcher:
        kwargs.setdefault("debounce_s", 0.05)
        kwargs.setdefault("poll_interval_s", 3600.0)
        w = Watcher(on_changes=rec.on_changes, on_rescan=rec.on_rescan, root=str(root), **kwargs)  # type: ignore[arg-type]
        w.set_targets(files, dirs)
        w.start()
        started.append(w)
        return w

    yield make
    for w in started:
        w.stop()


def host(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def append(root: Path, path: str, line: str) -> None:
    """Append one line to the host file ``path`` (an edit of an existing file: IN_MODIFY)."""
    with open(host(root, path), "a") as f:
        f.write(line + "\n")


def settle() -> None:
    """Let in-flight events of the set-up reach the dispatcher, then forget them."""
    time.sleep(0.15)


# ------------------------------------------------------------------------------ editing styles


def test_editor_atomic_save_is_seen(root: Path, rec: Recorder, make_watcher: WatcherFactory) -> None:
    make_watcher()
    tmp = host(root, "/home/alice/.ssh/.authorized_keys.swp-new")
    tmp.write_text("ssh-ed25519 BBBB new\n")
    os.rename(tmp, host(root, AK))
    assert rec.wait_path(AK)


def test_sed_in_place_is_seen(root: Path, rec: Recorder, make_watcher: WatcherFactory) -> None:
    make_watcher()
    subprocess.run(["sed", "-i", "s/alice/bob/", str(host(root, AK))], check=True)
    assert rec.wait_path(AK)
    assert "bob" in host(root, AK).read_text()


def test_vim_backup_dance_is_seen(root: Path, rec: Recorder, make_watcher: WatcherFactory) -> None:
    make_watcher(dirs=())
    target = host(root, AK)
    backup = target.with_name("authorized_keys~")
    os.rename(target, backup)  # vim with backupcopy=no: rename the original away
    target.write_text("ssh-ed25519 CCCC vim\n")  # write the new file
    backup.unlink()  # nowritebackup=off, nobackup: delete the backup
    assert rec.wait_path(AK)
    assert AK + "~" not in rec.seen()  # not a target (no dir target here)


@pytest.mark.skipif(shutil.which("vim") is None, reason="vim not installed")
def test_real_vim_write_with_backupcopy_no_is_seen(
    root: Path, rec: Recorder, make_watcher: WatcherFactory
) -> None:
    make_watcher(dirs=())
    subprocess.run(
        ["vim", "-u", "NONE", "-i", "NONE", "-N", "-n", "-es",
         "-c", "set backupcopy=no writebackup nobackup", "-c", "normal Gocomment", "-c", "wq",
         str(host(root, AK))],
        check=True, timeout=30, stdin=subprocess.DEVNULL, capture_output=True,
    )  # fmt: skip
    assert rec.wait_path(AK)
    assert "comment" in host(root, AK).read_text()


def test_append_is_seen(root: Path, rec: Recorder, make_watcher: WatcherFactory) -> None:
    make_watcher()
    append(root, AK, "ssh-ed25519 DDDD appended")
    assert rec.wait_path(AK)


def test_chmod_is_seen(root: Path, rec: Recorder, make_watcher: WatcherFactory) -> None:
    make_watcher()
    os.chmod(host(root, AK), 0o666)
    assert rec.wait_path(AK)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_chown_is_seen(root: Path, rec: Recorder, make_watcher: WatcherFactory) -> None:
    make_watcher()
    os.chown(host(root, AK), 4242, 4242)
    assert rec.wait_path(AK)


def test_chmod_of_ssh_dir_reports_its_targets(
    root: Path, rec: Recorder, make_watcher: WatcherFactory
) -> None:
    make_watcher(dirs=())
    os.chmod(host(root, SSH_DIR), 0o777)  # StrictModes input: the key file's verdict may change
    assert rec.wait_path(AK)


def test_file_created_where_none_was_is_seen(root: Path, rec: Recorder, make_watcher: WatcherFactory) -> None:
    ak2 = "/home/alice/.ssh/authorized_keys2"
    make_watcher(files=(AK, ak2))
    host(root, ak2).write_text("ssh-ed25519 EEEE\n")
    assert rec.wait_path(ak2)


def test_new_identity_key_in_ssh_dir_target_is_seen(
    root: Path, rec: Recorder, make_watcher: WatcherFactory
) -> None:
    make_watcher()
    host(root, SSH_DIR + "/id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    assert rec.wait_path(SSH_DIR + "/id_ed25519")


def test_atomic_replace_of_etc_passwd_is_seen(
    root: Path, rec: Recorder, make_watcher: WatcherFactory
) -> None:
    make_watcher()
    new = host(root, "/etc/passwd+")
    new.write_text("alice:x:1000:1000::/home/alice:/bin/sh\nbob:x:1001:1001::/home/bob:/bin/sh\n")
    os.rename(new, host(root, PASSWD))  # how useradd/vipw replace it
    assert rec.wait_path(PASSWD)
    assert "/etc/passwd+" not in rec.seen()


# ------------------------------------------------------------------------------ structure changes


def test_rm_rf_ssh_dir_then_recreate_is_seen_and_watch_comes_back(
    root: Path, rec: Recorder, make_watcher: WatcherFactory
) -> None:
    w = make_watcher()
    shutil.rmtree(host(root, SSH_DIR))
    assert rec.wait_path(AK)  # the file vanished
    rec.clear()
    host(root, SSH_DIR).mkdir()
    host(root, AK).write_text("ssh-ed25519 FFFF recreated\n")
    assert rec.wait_path(AK)
    settle()
    rec.clear()
    # The new ~/.ssh is watched again: a later edit is reported too.
    append(root, AK, "ssh-ed25519 GGGG later")
    assert rec.wait_path(AK)
    assert w.stats().watches == 5  # ~/.ssh, /home; /etc/ssh, /etc; / (grandparent of both)
    assert w.is_alive()


def test_home_created_after_start_is_seen(root: Path, rec: Recorder, make_watcher: WatcherFactory) -> None:
    bob_ak = "/home/bob/.ssh/authorized_keys"
    make_watcher(files=(AK, bob_ak))  # the daemon re-targets after /etc/passwd changed; home comes later
    bob_ssh = host(root, "/home/bob/.ssh")
    bob_ssh.mkdir(parents=True)
    (bob_ssh / "authorized_keys").write_text("ssh-ed25519 HHHH bob\n")
    assert rec.wait_path(bob_ak)
    settle()
    rec.clear()
    with open(bob_ssh / "authorized_keys", "a") as f:
        f.write("ssh-ed25519 IIII bob2\n")
    assert rec.wait_path(bob_ak)


def test_unrelated_files_in_watched_dirs_are_not_reported(
    root: Path, rec: Recorder, make_watcher: WatcherFactory
) -> None:
    make_watcher()
    for i in range(50):
        append(root, "/home/alice/.bash_history", f"ls {i}")
    host(root, "/etc/hostname").write_text("box\n")
    # A marker change proves the events above were processed before we look.
    os.chmod(host(root, SSHD_CONFIG), 0o600)
    assert rec.wait_path(SSHD_CONFIG)
    assert rec.seen() == {SSHD_CONFIG}


def test_a_burst_on_one_file_yields_one_callback(
    root: Path, rec: Recorder, make_watcher: WatcherFactory
) -> None:
    make_watcher(debounce_s=0.3)
    for i in range(20):
        append(root, AK, f"ssh-ed25519 AAAA{i} burst")
        time.sleep(0.01)
    assert rec.wait_path(AK)
    time.sleep(0.5)
    assert sum(1 for c in rec.changes if AK in c) == 1


def test_renamed_ancestor_is_found_by_the_audit(
    root: Path, rec: Recorder, make_watcher: WatcherFactory
) -> None:
    deep_ssh = "/srv/data/users/alice/.ssh"
    deep_ak = deep_ssh + "/authorized_keys"
    host(root, deep_ssh).mkdir(parents=True)
    host(root, deep_ak).write_text("ssh-ed25519 JJJJ\n")
    w = make_watcher(files=(deep_ak,), dirs=())
    assert w.stats().watches == 2  # ~/.ssh and its grandparent /srv/data/users
    # Renaming /srv/data reaches neither watch (they follow their inodes and their own names did
    # not change); the periodic audit notices that the watched paths now name other directories.
    os.rename(host(root, "/srv/data"), host(root, "/srv/data.old"))
    host(root, deep_ssh).mkdir(parents=True)
    host(root, deep_ak).write_text("ssh-ed25519 JJJJ\n")
    settle()
    assert deep_ak not in rec.seen()
    w.poll_once()
    assert rec.wait_path(deep_ak)
    settle()
    rec.clear()
    append(root, deep_ak, "ssh-ed25519 KKKK")
    assert rec.wait_path(deep_ak)
    # The old tree is no longer watched:
    append(root, "/srv/data.old/users/alice/.ssh/authorized_keys", "ssh-ed25519 LLLL")
    time.sleep(0.2)
    assert sum(1 for c in rec.changes if deep_ak in c) == 1


def test_renamed_grandparent_is_seen_at_once(root: Path, rec: Recorder, make_watcher: WatcherFactory) -> None:
    make_watcher(dirs=())
    # /home is ~/.ssh's grandparent, so it is watched: its own IN_MOVE_SELF re-plans at once.
    os.rename(host(root, "/home"), host(root, "/home.old"))
    assert rec.wait_path(AK)
    rec.clear()
    host(root, SSH_DIR).mkdir(parents=True)
    host(root, AK).write_text("ssh-ed25519 JJJJ\n")
    assert rec.wait_path(AK)  # no poll_once(): the anchor reported the new tree


# ------------------------------------------------------------------------------ watch levels

BOB_SSH = "/home/bob/.ssh"
BOB_AK = BOB_SSH + "/authorized_keys"


def add_user(root: Path, name: str, *, ssh: bool = True) -> str:
    """Creates /home/<name> (with ~/.ssh/authorized_keys when ``ssh``); returns the key file's path."""
    ak = f"/home/{name}/.ssh/authorized_keys"
    if ssh:
        host(root, ak).parent.mkdir(parents=True)
        host(root, ak).write_text(f"ssh-ed25519 AAAA {name}\n")
    else:
        host(root, f"/home/{name}").mkdir(parents=True)
    return ak


def wait_marker(root: Path, rec: Recorder) -> None:
    """A change of sshd_config, waited for: events queued before it have been dispatched."""
    os.chmod(host(root, SSHD_CONFIG), 0o600 if host(root, SSHD_CONFIG).stat().st_mode & 0o44 else 0o644)
    assert rec.wait_path(SSHD_CONFIG)


def test_chmod_of_a_home_reports_only_that_users_targets(
    root: Path, rec: Recorder, make_watcher: WatcherFactory
) -> None:
    add_user(root, "bob")
    make_watcher(files=(AK, BOB_AK, SSHD_CONFIG), dirs=(SSH_DIR, BOB_SSH))
    os.chmod(host(root, "/home/alice"), 0o777)  # StrictModes: alice's keys may no longer be accepted
    assert rec.wait_path(AK)
    assert SSH_DIR in rec.seen()
    wait_marker(root, rec)
    assert not {BOB_AK, BOB_SSH} & rec.seen()


def test_chmod_of_the_shared_grandparent_reports_nothing(
    root: Path, rec: Recorder, make_watcher: WatcherFactory
) -> None:
    # sshd's StrictModes stops at the home: the mode of /home changes no verdict, and reporting every
    # user's files would make `touch /home` cost a full rescan.
    add_user(root, "bob")
    make_watcher(files=(AK, BOB_AK, SSHD_CONFIG), dirs=(SSH_DIR, BOB_SSH))
    os.chmod(host(root, "/home"), 0o775)
    os.utime(host(root, "/home"))
    wait_marker(root, rec)
    assert rec.seen() == {SSHD_CONFIG}


def test_home_renamed_and_recreated_is_seen(root: Path, rec: Recorder, make_watcher: WatcherFactory) -> None:
    w = make_watcher()
    watches = w.stats().watches
    os.rename(host(root, "/home/alice"), host(root, "/home/alice2"))  # mv /home/alice /home/alice2
    assert rec.wait_path(AK)
    rec.clear()
    add_user(root, "alice")
    assert rec.wait_path(AK)
    settle()
    rec.clear()
    append(root, AK, "ssh-ed25519 PPPP later")
    assert rec.wait_path(AK)  # the new ~/.ssh is watched
    append(root, "/home/alice2/.ssh/authorized_keys", "ssh-ed25519 QQQQ old tree")
    wait_marker(root, rec)
    assert sum(1 for c in rec.changes if AK in c) == 1  # the old tree is no longer watched
    assert w.stats().watches == watches


def test_rm_rf_ssh_dir_then_immediate_recreate_and_write_is_seen(
    root: Path, rec: Recorder, make_watcher: WatcherFactory
) -> None:
    w = make_watcher()
    watches = w.stats().watches
    # No pause: the dispatcher re-plans while ~/.ssh is missing, or after it is back, or in between.
    shutil.rmtree(host(root, SSH_DIR))
    host(root, SSH_DIR).mkdir()
    host(root, AK).write_text("ssh-ed25519 RRRR recreated\n")
    assert rec.wait_path(AK)
    settle()
    rec.clear()
    append(root, AK, "ssh-ed25519 SSSS later")
    assert rec.wait_path(AK)
    assert w.stats().watches == watches


def test_symlinked_ssh_dir_swapped_with_ln_sfn_is_seen_at_once(
    root: Path, rec: Recorder, make_watcher: WatcherFactory
) -> None:
    for keys in ("keys1", "keys2"):
        host(root, f"/data/{keys}").mkdir(parents=True)
        host(root, f"/data/{keys}/authorized_keys").write_text(f"ssh-ed25519 AAAA {keys}\n")
    shutil.rmtree(host(root, SSH_DIR))
    os.symlink("../../data/keys1", host(root, SSH_DIR))  # relative: resolves inside the fake root
    w = make_watcher(files=(AK,), dirs=(SSH_DIR,))
    assert w.stats().watches == 3  # ~/.ssh (where it points), the home (holds the link), /home
    # ln -sfn ../../data/keys2 ~/.ssh: a new link renamed over the old one.
    tmp = host(root, "/home/alice/.ssh.tmp")
    os.symlink("../../data/keys2", tmp)
    os.rename(tmp, host(root, SSH_DIR))
    assert rec.wait_path(AK)  # poll_interval_s is an hour: this is inotify, not the audit
    settle()
    rec.clear()
    append(root, "/data/keys2/authorized_keys", "ssh-ed25519 TTTT via new link")
    assert rec.wait_path(AK)  # the watch follows the new link target
    settle()
    rec.clear()
    append(root, "/data/keys1/authorized_keys", "ssh-ed25519 UUUU old target")
    time.sleep(0.2)
    assert AK not in rec.seen()


def test_chmod_of_a_symlinked_homes_target_is_seen(
    root: Path, rec: Recorder, make_watcher: WatcherFactory
) -> None:
    host(root, "/data").mkdir()
    os.rename(host(root, "/home/alice"), host(root, "/data/alice"))
    os.symlink("../data/alice", host(root, "/home/alice"))
    make_watcher(files=(AK,), dirs=())
    # /data/alice is not a name in /home: only a watch on the home itself (through the link) sees it.
    os.chmod(host(root, "/data/alice"), 0o777)
    assert rec.wait_path(AK)


def test_plain_users_cost_one_watch_each_plus_shared_ones(
    root: Path, rec: Recorder, make_watcher: WatcherFactory
) -> None:
    users = 50
    files = [SSHD_CONFIG, PASSWD] + [add_user(root, f"user{i:03d}") for i in range(users)]
    w = make_watcher(files=tuple(files), dirs=tuple(posixpath.dirname(f) for f in files[2:]))
    # One ~/.ssh each; shared: /home, /etc/ssh, /etc and / (the grandparent of /etc/ssh and /etc).
    assert w.stats().watches == users + 4
    assert w.stats().targets_inotify == 2 * users + 2
    os.chmod(host(root, "/home/user007"), 0o700)
    assert rec.wait_path("/home/user007/.ssh/authorized_keys")


def test_home_without_ssh_dir_costs_one_watch_and_its_creation_is_seen(
    root: Path, rec: Recorder, make_watcher: WatcherFactory
) -> None:
    add_user(root, "bob", ssh=False)
    w = make_watcher(files=(BOB_AK,), dirs=(BOB_SSH,))
    assert w.stats().watches == 1  # the home: the anchor of the missing ~/.ssh
    host(root, BOB_SSH).mkdir()
    host(root, BOB_AK).write_text("ssh-ed25519 VVVV bob\n")
    assert rec.wait_path(BOB_AK)
    settle()
    assert w.stats().watches == 2  # now ~/.ssh and /home
    rec.clear()
    append(root, BOB_AK, "ssh-ed25519 WWWW bob later")
    assert rec.wait_path(BOB_AK)


# ------------------------------------------------------------------------------ set_targets


def test_set_targets_again_adds_and_removes_watches(
    root: Path, rec: Recorder, make_watcher: WatcherFactory
) -> None:
    w = make_watcher(files=(AK,), dirs=())
    assert w.stats().watches == 2  # ~/.ssh and /home (its grandparent)
    carol_ak = "/srv/keys/carol"
    host(root, "/srv/keys").mkdir(parents=True)
    w.set_targets([carol_ak], [])
    assert w.stats().watches == 2  # /srv/keys and / (its grandparent); alice's two are gone
    host(root, carol_ak).write_text("ssh-ed25519 LLLL\n")
    append(root, AK, "ssh-ed25519 MMMM")
    assert rec.wait_path(carol_ak)
    time.sleep(0.2)
    assert AK not in rec.seen()


def test_set_targets_rejects_relative_paths(make_watcher: WatcherFactory) -> None:
    w = make_watcher()
    with pytest.raises(ValueError, match="absolute"):
        w.set_targets(["home/alice/.ssh/authorized_keys"])


# ------------------------------------------------------------------------------ robustness


def test_exception_in_on_changes_does_not_kill_the_watcher(
    root: Path, rec: Recorder, make_watcher: WatcherFactory, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[set[str]] = []
    first_call = threading.Event()

    def flaky(paths: set[str]) -> None:
        calls.append(paths)
        if len(calls) == 1:
            first_call.set()
            raise RuntimeError("secret-ish message that must not be logged")
        rec.on_changes(paths)

    w = Watcher(on_changes=flaky, on_rescan=rec.on_rescan, root=str(root), debounce_s=0.05)
    w.set_targets([AK])
    w.start()
    try:
        os.chmod(host(root, AK), 0o640)
        assert first_call.wait(TIMEOUT)
        time.sleep(0.1)
        os.chmod(host(root, AK), 0o600)
        assert rec.wait_path(AK)
        assert w.is_alive()
        assert "RuntimeError" in caplog.text
        assert "secret-ish" not in caplog.text
    finally:
        w.stop()


def test_is_alive_is_false_when_a_thread_died(make_watcher: WatcherFactory) -> None:
    holder: list[InotifyBackend] = []

    def factory() -> InotifyBackend:
        holder.append(InotifyBackend())
        return holder[0]

    w = make_watcher(inotify_factory=factory)
    assert w.is_alive()
    assert w.stats().threads == 3
    holder[0].stop(TIMEOUT)  # the reader thread ends, as if it had crashed
    assert not w.is_alive()


def test_stop_ends_all_threads(make_watcher: WatcherFactory) -> None:
    before = threading.active_count()
    w = make_watcher()
    assert threading.active_count() == before + 3
    w.stop()
    assert not w.is_alive()
    assert threading.active_count() == before


def test_queue_overflow_triggers_rescan_and_watching_continues(
    root: Path, rec: Recorder, make_watcher: WatcherFactory
) -> None:
    holder: list[InotifyBackend] = []

    def factory() -> InotifyBackend:
        holder.append(InotifyBackend())
        return holder[0]

    w = make_watcher(inotify_factory=factory)
    # The kernel's overflow event (wd -1), fed through the backend's own dispatch.
    holder[0].deliver([InotifyEvent(-1, inotify.IN_Q_OVERFLOW, 0, b"")])
    assert rec.wait_for(lambda: rec.rescans == [REASON_OVERFLOW])
    assert w.stats().overflows == 1
    os.chmod(host(root, AK), 0o644)
    assert rec.wait_path(AK)
    assert rec.rescans == [REASON_OVERFLOW]


def max_queued_events() -> int:
    """fs.inotify.max_queued_events: read, never changed (other tests share the host)."""
    return int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())


def flood(directory: Path, events: int) -> None:
    """``events`` IN_ATTRIB events on names in ``directory``: two files touched in turn (the kernel
    merges an event into an identical one queued just before it)."""
    names = [directory / "flood-a", directory / "flood-b"]
    for name in names:
        name.touch()
    for i in range(events):
        os.utime(names[i % 2])


class HeldBackend(InotifyBackend):
    """The real backend whose reader thread can be held in ``deliver``: nothing reads the inotify
    descriptor then, so the kernel's queue fills up and overflows for real."""

    def __init__(self) -> None:
        super().__init__()
        self.released = threading.Event()
        self.released.set()
        self.holding = threading.Event()

    def deliver(self, events: list[InotifyEvent]) -> None:
        if not self.released.is_set():
            self.holding.set()
            self.released.wait()
        super().deliver(events)


def test_real_queue_overflow_triggers_rescan_and_watching_continues(
    root: Path, rec: Recorder, make_watcher: WatcherFactory
) -> None:
    backend = HeldBackend()
    w = make_watcher(inotify_factory=lambda: backend)
    settle()
    backend.released.clear()
    try:
        # /etc is watched (it holds /etc/passwd). Held, the reader reads one buffer at most; the
        # queue holds max_queued_events: twice that plus a buffer's worth overflows it for sure.
        flood(host(root, "/etc"), 2 * max_queued_events() + inotify.READ_SIZE // inotify.EVENT_HEADER.size)
        assert backend.holding.wait(TIMEOUT)
        append(root, AK, "ssh-ed25519 XXXX during the overflow")  # the kernel drops this event
    finally:
        backend.released.set()
    assert rec.wait_for(lambda: rec.rescans == [REASON_OVERFLOW])  # the daemon rescans on this
    assert w.stats().overflows == 1
    wait_marker(root, rec)
    assert AK not in rec.seen()  # the event itself was lost: only the rescan finds the change
    append(root, AK, "ssh-ed25519 YYYY after the overflow")
    assert rec.wait_path(AK)
    assert rec.rescans == [REASON_OVERFLOW]
    assert w.is_alive() and w.stats().threads == 3


class LimitedBackend(InotifyBackend):
    """Fails inotify_add_watch with ENOSPC once ``limit`` watches exist, like max_user_watches."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.live: set[int] = set()

    def add(self, path: bytes, mask: int) -> int:
        if len(self.live) >= self.limit:
            raise OSError(errno.ENOSPC, "inotify watch limit reached")
        wd = super().add(path, mask)
        self.live.add(wd)
        return wd

    def remove(self, wd: int) -> None:
        self.live.discard(wd)
        super().remove(wd)


def test_watch_limit_falls_back_to_polling(root: Path, rec: Recorder, make_watcher: WatcherFactory) -> None:
    # Targets in /etc/ssh take 2 watches (/etc/ssh and /); alice's dir then hits the limit.
    w = make_watcher(
        files=(SSHD_CONFIG, AK), dirs=(), inotify_factory=lambda: LimitedBackend(limit=2), poll_interval_s=0.2
    )
    stats = w.stats()
    assert stats.watches == 2
    assert stats.targets_inotify == 1
    assert stats.targets_polled == 1
    assert stats.polling_reasons == {REASON_WATCH_LIMIT: 1}
    append(root, AK, "ssh-ed25519 NNNN")
    assert rec.wait_path(AK)  # seen by the poller thread
    os.chmod(host(root, SSHD_CONFIG), 0o600)
    assert rec.wait_path(SSHD_CONFIG)  # still seen by inotify


def test_polled_dir_sees_ssh_dir_removal_and_recreation(
    root: Path, rec: Recorder, make_watcher: WatcherFactory
) -> None:
    w = make_watcher(files=(AK,), dirs=(SSH_DIR,), inotify_factory=lambda: LimitedBackend(limit=0))
    assert w.stats().targets_polled == 2
    shutil.rmtree(host(root, SSH_DIR))
    w.poll_once()
    assert rec.wait_path(AK)
    assert SSH_DIR in rec.seen()  # the dir target itself: rescan all of it
    rec.clear()
    host(root, SSH_DIR).mkdir()
    host(root, SSH_DIR + "/id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    w.poll_once()
    assert rec.wait_path(SSH_DIR)


def test_network_filesystem_targets_are_polled(
    root: Path, rec: Recorder, make_watcher: WatcherFactory
) -> None:
    mountinfo = (
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        f"90 22 0:50 /export/home {root}/home rw,relatime shared:50 - nfs4 srv:/export/home rw,vers=4.2\n"
    )
    w = make_watcher(files=(AK, SSHD_CONFIG), dirs=(), read_mountinfo=lambda: mountinfo, poll_interval_s=0.2)
    stats = w.stats()
    assert stats.polling_reasons == {"network filesystem (nfs4)": 1}
    assert stats.targets_inotify == 1
    assert stats.watches == 2  # /etc/ssh and / only
    os.chmod(host(root, AK), 0o640)
    assert rec.wait_path(AK)


def test_set_targets_hands_over_from_polling_without_losing_a_change(
    root: Path, rec: Recorder, make_watcher: WatcherFactory
) -> None:
    backend = LimitedBackend(limit=0)
    w = make_watcher(files=(AK,), dirs=(), inotify_factory=lambda: backend)
    assert w.stats().targets_polled == 1
    append(root, AK, "ssh-ed25519 OOOO")  # between two polls
    backend.limit = 100  # the administrator raised max_user_watches
    w.set_targets([AK])
    assert w.stats().targets_inotify == 1
    assert rec.wait_path(AK)


# ------------------------------------------------------------------------------ pure helpers


def test_parse_mountinfo_unescapes_and_finds_longest_mount() -> None:
    text = (
        "22 1 8:1 / / rw shared:1 - ext4 /dev/sda1 rw\n"
        "30 22 0:40 / /mnt/with\\040space rw - cifs //srv/share rw\n"
        "31 22 0:41 / /home rw master:3 - nfs srv:/home rw\n"
        "32 31 0:42 / /home/local rw - ext4 /dev/sdb1 rw\n"
        "garbage line\n"
    )
    mounts = parse_mountinfo(text)
    assert (mounts[1].mount_point, mounts[1].fstype) == ("/mnt/with space", "cifs")
    assert fstype_of("/home/alice/.ssh", mounts) == "nfs"
    assert fstype_of("/home/local/x", mounts) == "ext4"
    assert fstype_of("/homework", mounts) == "ext4"
    assert fstype_of("/mnt/with space/a", mounts) == "cifs"
    assert is_network_fstype("fuse.sshfs") and is_network_fstype("9p") and not is_network_fstype("xfs")


def test_watch_mask_has_no_read_events() -> None:
    for noisy in (inotify.IN_OPEN, inotify.IN_ACCESS, inotify.IN_CLOSE_NOWRITE):
        assert not WATCH_MASK & noisy


def test_normalize_host_path_keeps_normal_strings_and_fixes_the_others() -> None:
    normal = "".join(["/home/alice/", ".ssh"])  # a fresh object, not an interned constant
    assert normalize_host_path(normal) is normal
    for odd, fixed in [
        ("//home//alice/", "/home/alice"),
        ("/home/./alice/.", "/home/alice"),
        ("/home/bob/../alice/..", "/home"),
        ("/..", "/"),
        ("/", "/"),
        ("/home/.alice/..ssh", "/home/.alice/..ssh"),
    ]:
        assert normalize_host_path(odd) == fixed
    with pytest.raises(ValueError, match="absolute"):
        normalize_host_path("home/alice")
