"""The usage follower against real files (append, partial lines, rotation, truncation), a fake
``journalctl`` child process (restart, process-group kill on stop) and, as root, a real sshd."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.daemon.usage import UsageFollower
from agent.daemon.usage_parse import UsageHit
from tests.integration.sshd_support import add_user, free_port, remove_user, ssh_login

FP = "SHA256:o6tOjwaQ04Kkn2YQuHGGGv4mPuuxvagTp3cv4XMQ1CM"
FP2 = "SHA256:QqLqKKFuR4SJcujBQ+977q1xdIaFNjjGr1DTdr1SV+c"


def accepted(user: str, fp: str = FP, port: int = 40000) -> str:
    return f"Accepted publickey for {user} from 203.0.113.9 port {port} ssh2: ED25519 {fp}"


def syslog(message: str, when: str = "2026-11-27T00:01:02.123456+00:00", tag: str = "sshd[77]") -> str:
    return f"{when} web-1 {tag}: {message}\n"


class Hits:
    """Collects on_hit calls from the follower thread."""

    def __init__(self) -> None:
        self.items: list[tuple[UsageHit, datetime]] = []
        self._cond = threading.Condition()

    def __call__(self, hit: UsageHit, at: datetime) -> None:
        with self._cond:
            self.items.append((hit, at))
            self._cond.notify_all()

    def users(self) -> list[str]:
        with self._cond:
            return [h.user for h, _ in self.items]

    def wait_for(self, count: int, timeout: float = 5.0) -> list[tuple[UsageHit, datetime]]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.items) >= count, timeout)
            assert len(self.items) >= count, f"expected {count} hits, got {self.users()}"
            return list(self.items)


def append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


@pytest.fixture
def followers() -> Iterator[list[UsageFollower]]:
    made: list[UsageFollower] = []
    yield made
    for f in made:
        f.stop()


def file_follower(
    followers: list[UsageFollower], path: Path, on_hit: Callable[[UsageHit, datetime], None], **kw: object
) -> UsageFollower:
    f = UsageFollower(on_hit, source="file", log_file=str(path), poll_interval_s=0.05, **kw)  # type: ignore[arg-type]
    followers.append(f)
    f.start()
    assert f.mode == "file" and f.is_alive()
    return f


# --- file ------------------------------------------------------------------------------------------


def test_file_tail_starts_at_the_end_and_reads_appended_lines(
    tmp_path: Path, followers: list[UsageFollower]
) -> None:
    log = tmp_path / "auth.log"
    log.write_text(syslog(accepted("old")) + syslog("Server listening on 0.0.0.0 port 22."))
    hits = Hits()
    file_follower(followers, log, hits)
    append(log, syslog("Invalid user x from 1.2.3.4 port 5", tag="sshd[1]"))
    append(log, syslog(accepted("cronjob"), tag="cron[9]"))  # other processes never count
    append(log, syslog(accepted("alice")))
    ((hit, at),) = hits.wait_for(1)
    assert hit == UsageHit("alice", "203.0.113.9", 40000, "ED25519", FP)
    assert at == datetime(2026, 11, 27, 0, 1, 2, 123456, tzinfo=UTC)  # the line's own time
    time.sleep(0.2)
    assert hits.users() == ["alice"]  # "old" was there before start


def test_partial_line_is_delivered_once_complete(tmp_path: Path, followers: list[UsageFollower]) -> None:
    log = tmp_path / "auth.log"
    log.write_text("")
    hits = Hits()
    file_follower(followers, log, hits)
    line = syslog(accepted("bob"))
    append(log, line[:30])
    time.sleep(0.2)
    assert hits.users() == []
    append(log, line[30:])
    hits.wait_for(1)
    assert hits.users() == ["bob"]


def test_rotation_by_rename_and_create(tmp_path: Path, followers: list[UsageFollower]) -> None:
    log = tmp_path / "auth.log"
    log.write_text("")
    hits = Hits()
    file_follower(followers, log, hits)
    append(log, syslog(accepted("before")))
    hits.wait_for(1)
    log.rename(tmp_path / "auth.log.1")
    log.write_text(syslog(accepted("new-1")))  # a new file is read from its start
    hits.wait_for(2)
    # rsyslog writes to the renamed file until logrotate's HUP: those lines still count
    append(tmp_path / "auth.log.1", syslog(accepted("late-old")))
    append(log, syslog(accepted("new-2")))
    hits.wait_for(4)
    assert hits.users()[:2] == ["before", "new-1"]
    assert sorted(hits.users()[2:]) == ["late-old", "new-2"]


def test_rotation_with_a_gap_before_the_new_file(tmp_path: Path, followers: list[UsageFollower]) -> None:
    log = tmp_path / "auth.log"
    log.write_text("")
    hits = Hits()
    follower = file_follower(followers, log, hits)
    log.rename(tmp_path / "auth.log.1")
    time.sleep(0.2)  # several polls with no file at the path
    assert follower.is_alive()
    log.write_text(syslog(accepted("after-gap")))
    hits.wait_for(1)
    assert hits.users() == ["after-gap"]


def test_truncation_restarts_at_zero(tmp_path: Path, followers: list[UsageFollower]) -> None:
    log = tmp_path / "auth.log"
    log.write_text(syslog("x" * 500))
    hits = Hits()
    file_follower(followers, log, hits)
    append(log, syslog(accepted("one")))
    hits.wait_for(1)
    with log.open("r+") as f:  # copytruncate
        f.truncate(0)
    time.sleep(0.2)
    append(log, syslog(accepted("two")))
    hits.wait_for(2)
    assert hits.users() == ["one", "two"]


def test_file_that_appears_after_start_is_read_from_its_start(
    tmp_path: Path, followers: list[UsageFollower]
) -> None:
    log = tmp_path / "later.log"
    hits = Hits()
    follower = file_follower(followers, log, hits)
    assert "not there yet" in follower.reason
    log.write_text(syslog(accepted("early")))
    hits.wait_for(1)
    assert hits.users() == ["early"]


def test_non_regular_file_is_refused(tmp_path: Path, followers: list[UsageFollower]) -> None:
    fifo = tmp_path / "auth.log"
    os.mkfifo(fifo)
    hits = Hits()
    follower = file_follower(followers, fifo, hits)
    time.sleep(0.3)
    assert follower.is_alive()  # not blocked on the FIFO, not dead
    fifo.unlink()
    fifo.write_text(syslog(accepted("regular-now")))
    hits.wait_for(1)


def test_overlong_line_is_skipped(tmp_path: Path, followers: list[UsageFollower]) -> None:
    log = tmp_path / "auth.log"
    log.write_text("")
    hits = Hits()
    file_follower(followers, log, hits)
    append(log, syslog(accepted("huge") + " " + "A" * 200_000))
    append(log, syslog(accepted("fine")))
    hits.wait_for(1)
    time.sleep(0.1)
    assert hits.users() == ["fine"]


def test_on_hit_exception_does_not_kill_the_thread(tmp_path: Path, followers: list[UsageFollower]) -> None:
    log = tmp_path / "auth.log"
    log.write_text("")
    hits = Hits()

    def on_hit(hit: UsageHit, at: datetime) -> None:
        if hit.user == "boom":
            raise RuntimeError("handler bug")
        hits(hit, at)

    follower = file_follower(followers, log, on_hit)
    append(log, syslog(accepted("boom")) + syslog(accepted("after")))
    hits.wait_for(1)
    assert hits.users() == ["after"]
    assert follower.is_alive()


def test_classic_stamp_year_rollover_and_plain_format(tmp_path: Path, followers: list[UsageFollower]) -> None:
    now = datetime(2027, 1, 1, 0, 0, 30, tzinfo=UTC)
    log = tmp_path / "auth.log"
    log.write_text("")
    hits = Hits()
    file_follower(followers, log, hits, clock=lambda: now, local_tz=UTC)
    append(log, f"Dec 31 23:59:59 web-1 sshd[5]: {accepted('newyear')}\n")
    ((_, at),) = hits.wait_for(1)
    assert at == datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)

    plain = tmp_path / "sshd.log"  # what `sshd -E FILE` writes: bare messages
    plain.write_text("")
    hits2 = Hits()
    file_follower(followers, plain, hits2, clock=lambda: now, file_format="plain")
    append(plain, accepted("bare") + "\n")
    ((hit, at),) = hits2.wait_for(1)
    assert (hit.user, at) == ("bare", now)


def test_stop_ends_the_file_thread(tmp_path: Path) -> None:
    log = tmp_path / "auth.log"
    log.write_text("")
    follower = UsageFollower(Hits(), source="file", log_file=str(log), poll_interval_s=0.5)
    follower.start()
    assert follower.is_alive()
    started = time.monotonic()
    follower.stop()
    assert not follower.is_alive()
    assert time.monotonic() - started < 2.0


# --- journal (fake journalctl) ----------------------------------------------------------------------


def journal_line(message: str, comm: str = "sshd", usec: int = 1795737662123456) -> str:
    entry = {
        "__REALTIME_TIMESTAMP": str(usec),
        "_COMM": comm,
        "_UID": "0",
        "SYSLOG_IDENTIFIER": comm,
        "MESSAGE": message,
    }
    return json.dumps(entry)


def fake_journalctl(
    tmp_path: Path, lines: list[str], *, then: str = "sleep 300 & echo $! > {d}/child; wait"
) -> Path:
    """A journalctl stand-in: records argv and pid, prints `lines`, then runs `then` (by default it
    stays alive with a grandchild holding the pipe, like a real follower)."""
    data = tmp_path / "journal.jsonl"
    data.write_text("".join(line + "\n" for line in lines))
    script = tmp_path / "journalctl"
    d = str(tmp_path)
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$@" > {d}/argv\n'
        f"echo $$ > {d}/pid\n"
        f"echo run >> {d}/runs\n"
        f"cat {data}\n" + then.format(d=d) + "\n"
    )
    script.chmod(0o755)
    return script


def _dead(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _wait_file(path: Path, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text()
        time.sleep(0.02)
    raise AssertionError(f"{path} never written")


def test_journal_hits_and_stop_kills_the_child_group(tmp_path: Path) -> None:
    script = fake_journalctl(
        tmp_path,
        [
            journal_line("Server listening on 0.0.0.0 port 22."),
            journal_line(accepted("spoof"), comm="logger"),
            journal_line(accepted("alice"), usec=1795737662000001),
            "{not json",
            journal_line(accepted("bob", FP2)),
        ],
    )
    hits = Hits()
    follower = UsageFollower(hits, source="journal", journalctl=str(script))
    follower.start()
    assert follower.mode == "journal"
    got = hits.wait_for(2)
    assert [(h.user, h.fingerprint) for h, _ in got] == [("alice", FP), ("bob", FP2)]
    assert got[0][1] == datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=1795737662000001)
    assert _wait_file(tmp_path / "argv").split() == [
        "-f",
        "-o",
        "json",
        "--no-pager",
        "-n",
        "0",
        "-u",
        "ssh.service",
        "-u",
        "sshd.service",
    ]
    pid = int(_wait_file(tmp_path / "pid"))
    child = int(_wait_file(tmp_path / "child"))
    assert not _dead(pid) and not _dead(child)

    started = time.monotonic()
    follower.stop()
    assert time.monotonic() - started < 2.5
    assert not follower.is_alive()
    deadline = time.monotonic() + 2
    while not (_dead(pid) and _dead(child)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _dead(pid) and _dead(child)  # the grandchild holding our pipe too


def test_journal_unit_option_and_restart_after_exit(tmp_path: Path) -> None:
    # This journalctl prints one hit and exits at once: the follower restarts it with backoff.
    script = fake_journalctl(tmp_path, [journal_line(accepted("carol"))], then="exit 3")
    hits = Hits()
    follower = UsageFollower(
        hits,
        source="journal",
        journalctl=str(script),
        journal_unit="openssh.service",
        restart_backoff_s=(0.05, 0.1),
    )
    follower.start()
    hits.wait_for(3)
    assert set(hits.users()) == {"carol"}
    assert len((tmp_path / "runs").read_text().split()) >= 3
    assert _wait_file(tmp_path / "argv").split()[-2:] == ["-u", "openssh.service"]
    follower.stop()
    assert not follower.is_alive()


def test_journal_follower_survives_a_missing_binary(tmp_path: Path) -> None:
    follower = UsageFollower(Hits(), source="journal", journalctl=str(tmp_path / "nope"))
    follower.start()
    assert follower.mode == "disabled" and "journalctl" in follower.reason
    assert not follower.is_alive()
    follower.stop()


# --- auto -----------------------------------------------------------------------------------------


def test_auto_picks_the_journal_when_systemd_runs(tmp_path: Path) -> None:
    script = fake_journalctl(tmp_path, [journal_line(accepted("dan"))])
    run_dir = tmp_path / "systemd"
    run_dir.mkdir()
    hits = Hits()
    follower = UsageFollower(
        hits,
        journalctl=str(script),
        systemd_run_dir=str(run_dir),
        default_log_files=[str(tmp_path / "auth.log")],
    )
    follower.start()
    try:
        assert follower.mode == "journal"
        hits.wait_for(1)
    finally:
        follower.stop()


def test_auto_asks_the_journal_for_ssh_entries_without_systemd(tmp_path: Path) -> None:
    # The probe run (-n 1, no -f) prints an entry: the journal is used even without /run/systemd/system.
    script = fake_journalctl(tmp_path, [journal_line(accepted("erin"))], then="exit 0")
    follower = UsageFollower(
        Hits(),
        journalctl=str(script),
        systemd_run_dir=str(tmp_path / "none"),
        default_log_files=[str(tmp_path / "auth.log")],
    )
    follower.start()
    try:
        assert follower.mode == "journal" and "ssh unit entries" in follower.reason
    finally:
        follower.stop()


def test_auto_falls_back_to_a_file_then_to_disabled(tmp_path: Path) -> None:
    empty_journal = fake_journalctl(tmp_path, [], then="exit 0")
    secure = tmp_path / "secure"
    secure.write_text("")
    hits = Hits()
    follower = UsageFollower(
        hits,
        journalctl=str(empty_journal),
        systemd_run_dir=str(tmp_path / "none"),
        default_log_files=[str(tmp_path / "auth.log"), str(secure)],
        poll_interval_s=0.05,
    )
    follower.start()
    try:
        assert (follower.mode, follower.path) == ("file", str(secure))
        append(secure, syslog(accepted("frank")))
        hits.wait_for(1)
    finally:
        follower.stop()

    disabled = UsageFollower(
        Hits(),
        journalctl=str(tmp_path / "nope"),
        systemd_run_dir=str(tmp_path / "none"),
        default_log_files=[str(tmp_path / "auth.log")],
    )
    disabled.start()
    assert disabled.mode == "disabled" and "journalctl not found" in disabled.reason
    assert not disabled.is_alive()


# --- a real sshd ------------------------------------------------------------------------------------

SSHD = "/usr/sbin/sshd"


@pytest.mark.root(reason="starts sshd and adds a throwaway user")
@pytest.mark.skipif(
    not os.path.exists(SSHD) or shutil.which("ssh") is None, reason="needs openssh-server and ssh"
)
def test_real_sshd_login_is_seen_with_the_keys_fingerprint(tmp_path: Path) -> None:
    work = tmp_path / "sshd"
    work.mkdir()
    os.chmod(tmp_path, 0o755)
    for name in ("host", "user"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / name)], check=True)
    fingerprint = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(work / "user.pub")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()[1]
    port = free_port()
    logfile = work / "sshd.log"
    user, account = add_user("sklmu")  # removed in the finally below
    (work / "config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {work / 'host'}\nPidFile {work / 'pid'}\n"
        "UsePAM no\nLogLevel INFO\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        f"AllowUsers {user}\n"
    )
    sshd: subprocess.Popen[bytes] | None = None
    follower: UsageFollower | None = None
    try:
        home = Path(account.pw_dir)
        (home / ".ssh").mkdir(mode=0o700)
        (home / ".ssh" / "authorized_keys").write_text((work / "user.pub").read_text())
        shutil.chown(home / ".ssh", user, user)
        shutil.chown(home / ".ssh" / "authorized_keys", user, user)

        hits = Hits()
        follower = UsageFollower(
            hits, source="file", log_file=str(logfile), file_format="plain", poll_interval_s=0.05
        )
        follower.start()
        os.makedirs("/run/sshd", exist_ok=True)
        sshd = subprocess.Popen([SSHD, "-D", "-f", str(work / "config"), "-E", str(logfile)])
        deadline = time.monotonic() + 10
        while "Server listening" not in (logfile.read_text() if logfile.exists() else ""):
            assert time.monotonic() < deadline and sshd.poll() is None, "sshd did not start"
            time.sleep(0.05)
        logged_in = ssh_login(user, port, work / "user")
        assert logged_in, logfile.read_text()[-2000:]
        ((hit, at),) = hits.wait_for(1, timeout=10)
        assert (hit.user, hit.address, hit.key_type, hit.fingerprint) == (
            user,
            "127.0.0.1",
            "ED25519",
            fingerprint,
        )
        assert hit.cert_id is None and not hit.partial
        assert abs((datetime.now(UTC) - at).total_seconds()) < 30
    finally:
        if follower is not None:
            follower.stop()
        if sshd is not None:
            sshd.terminate()
            sshd.wait(10)
        remove_user(user)
