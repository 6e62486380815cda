"""What one user's files can cost a scan: problems kept per file, files examined in ~/.ssh, bytes
read. The daemon's per-user re-read budget is tested in test_daemon_hostile.py and
tests/unit/test_discovery_budget.py; the figures are benchmarks/bench_local_dos.py's."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.cli import main
from agent.host.safefs import HostFS
from agent.host.scan import ScanContext, ScanSettings, scan_host
from agent.host.scan_read import MAX_PROBLEMS_PER_FILE, MAX_SSH_DIR_FILES
from agent.host.users import RootUserSource
from tests.fakeroot import FakeRoot, ed25519_line, ed25519_private_openssh

MIB = 1 << 20


@pytest.fixture
def fr(tmp_path: Path) -> FakeRoot:
    root = FakeRoot(tmp_path / "root")
    root.add_user("alice", os.geteuid() or 1000)
    root.add_user("bob", os.geteuid() or 1001)
    root.authorized_keys("bob", [ed25519_line("bob-key")])
    return root


def _scan(fr: FakeRoot, capsys: pytest.CaptureFixture[str]) -> dict:  # type: ignore[type-arg]
    assert main(["scan", "--root", str(fr.root), "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def _rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_problems_per_file_are_capped_and_the_rest_counted(
    fr: FakeRoot, capsys: pytest.CaptureFixture[str]
) -> None:
    """1 MiB of "a\\n" is 524,288 invalid lines: the first few are reported by number, the rest
    counted in one more problem; a key after them is still found."""
    key = ed25519_line("after-the-junk")
    fr.write("/home/alice/.ssh/authorized_keys", b"a\n" * (MIB // 2 - 100) + key.encode() + b"\n")
    inv = _scan(fr, capsys)
    mine = [e for e in inv["errors"] if e["path"] == "/home/alice/.ssh/authorized_keys"]
    assert len(mine) == MAX_PROBLEMS_PER_FILE + 1
    assert [e["line"] for e in mine[:MAX_PROBLEMS_PER_FILE]] == list(range(1, MAX_PROBLEMS_PER_FILE + 1))
    more = MIB // 2 - 100 - MAX_PROBLEMS_PER_FILE
    assert mine[-1]["error"] == f"and {more} more invalid lines"
    assert "after-the-junk" in {k["comment"] for k in inv["keys"]}
    assert "bob-key" in {k["comment"] for k in inv["keys"]}


def test_ssh_dir_examination_is_bounded(fr: FakeRoot, capsys: pytest.CaptureFixture[str]) -> None:
    """3,000 sparse 1 MiB files in ~/.ssh: the usual key names are still found (they come first),
    at most MAX_SSH_DIR_FILES files are opened, each read only as far as a private key can be
    long, and the rest is counted in one problem."""
    ssh = fr.path("/home/alice/.ssh")
    private, public = ed25519_private_openssh()
    (ssh / "id_ed25519").write_bytes(private)
    (ssh / "id_ed25519.pub").write_text(public + " alice@box\n")
    deploy, deploy_pub = ed25519_private_openssh()
    (ssh / "zz_deploy").write_bytes(deploy)
    (ssh / "zz_deploy.pub").write_text(deploy_pub + " deploy\n")
    for n in range(3000):
        with (ssh / f"aaa{n:05d}").open("wb") as f:
            f.truncate(MIB)
    ctx = ScanContext(now=datetime.now(UTC), local_tz=UTC)
    before = _rchar()
    with HostFS(str(fr.root)) as fs:
        _, _, inventory = scan_host(fs, RootUserSource(fs), ScanSettings(), ctx)
    read = _rchar() - before
    assert read < 64 * MIB, f"read {read / MIB:.0f} MiB for 3,000 sparse files"
    idents = {k.path.rsplit("/", 1)[1]: k for k in inventory.keys if k.kind == "identity_key"}
    assert set(idents) == {"id_ed25519", "zz_deploy"}
    assert idents["id_ed25519"].comment == "alice@box"
    not_examined = [e for e in inventory.errors if e.path == "/home/alice/.ssh"]
    assert len(not_examined) == 1
    assert not_examined[0].error == f"and {3000 - MAX_SSH_DIR_FILES + 2} more files not examined"


def test_a_private_key_with_a_name_of_its_own_and_no_pub_file_is_still_found(
    fr: FakeRoot, capsys: pytest.CaptureFixture[str]
) -> None:
    private, _ = ed25519_private_openssh()
    fr.write("/home/alice/.ssh/deploy_key", private)
    inv = _scan(fr, capsys)
    assert [k["path"] for k in inv["keys"] if k["kind"] == "identity_key"] == ["/home/alice/.ssh/deploy_key"]


def test_file_names_that_are_not_utf8_are_a_problem_not_a_crash(
    fr: FakeRoot, capsys: pytest.CaptureFixture[str]
) -> None:
    private, _ = ed25519_private_openssh()
    ssh = os.fsencode(fr.path("/home/alice/.ssh"))
    with open(os.path.join(ssh, b"id_\xff"), "wb") as f:
        f.write(private)
    inv = _scan(fr, capsys)
    json.dumps(inv, ensure_ascii=False).encode("utf-8")  # valid UTF-8 throughout
    assert [e["error"] for e in inv["errors"] if e["path"] == "/home/alice/.ssh/id_\\xff"] == [
        "file name is not valid UTF-8; not read"
    ]


def test_a_file_past_max_file_bytes_says_lines_were_not_checked_and_marks_its_keys(
    fr: FakeRoot, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """sshd reads a file of any size; the agent reads discovery.max_file_bytes of it. A key past
    the cap is not in the inventory, so the file's problem says lines were not checked, and the
    keys it did read carry the risk factor `file_partly_read` (another key may hide after them)."""
    before = ed25519_line("before-the-cap")
    hidden = ed25519_line("past-the-cap")
    fr.write("/home/alice/.ssh/authorized_keys", f"{before}\n{'#' * 300}\n{hidden}\n")
    cfg = tmp_path / "agent.toml"
    cfg.write_text("[discovery]\nmax_file_bytes = 200\n")
    assert main(["scan", "--root", str(fr.root), "--format", "json", "--config", str(cfg)]) == 0
    inv = json.loads(capsys.readouterr().out)
    keys = {k["comment"]: k for k in inv["keys"]}
    assert "past-the-cap" not in keys
    assert "file_partly_read" in keys["before-the-cap"]["risk"]["factors"]
    assert "file_partly_read" not in keys["bob-key"]["risk"]["factors"]
    problems = [e["error"] for e in inv["errors"] if e["path"] == "/home/alice/.ssh/authorized_keys"]
    assert problems == [
        "larger than discovery.max_file_bytes (200 bytes): the lines after line 1 were not "
        "checked, and sshd reads them"
    ]


def _deep_tree(fr: FakeRoot, depth: int) -> None:
    """~/.ssh/authorized_keys -> d/d/.../d/keys, `depth` directories down; plus a chain of
    `depth` links (chain -> l1 -> l2 ... -> authorized_keys2)."""
    ssh = fr.path("/home/alice/.ssh")
    here = os.open(ssh, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=here)
            below = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=here)
            os.close(here)
            here = below
        fd = os.open("keys", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=here)
        os.write(fd, (ed25519_line("deep-down") + "\n").encode())
        os.close(fd)
    finally:
        os.close(here)
    (ssh / "authorized_keys").symlink_to("d/" * depth + "keys")
    (ssh / "real2").write_text(ed25519_line("end-of-chain") + "\n")
    (ssh / f"l{depth}").symlink_to("real2")
    for n in range(depth - 1, 0, -1):
        (ssh / f"l{n}").symlink_to(f"l{n + 1}")
    (ssh / "authorized_keys2").symlink_to("l1")


@pytest.fixture
def deep(fr: FakeRoot) -> Iterator[FakeRoot]:
    _deep_tree(fr, 1500)
    yield fr
    # pytest's own clean-up of old temporary directories recurses once per level: too deep.
    subprocess.run(["rm", "-rf", str(fr.path("/home/alice/.ssh/d"))], check=True)


def test_a_1500_deep_tree_or_link_chain_is_refused_and_reported_without_exhausting_descriptors(
    deep: FakeRoot,
) -> None:
    """With 256 descriptors (a tight RLIMIT_NOFILE), a 1,500-deep tree and a 1,500-link chain are
    refused with their reason; the rest of the host is scanned."""
    fr = deep

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    done = subprocess.run(
        [sys.executable, "-m", "agent", "scan", "--root", str(fr.root), "--format", "json"],
        capture_output=True,
        preexec_fn=limit,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    inv = json.loads(done.stdout)
    errors = {e["path"]: e["error"] for e in inv["errors"]}
    assert errors["/home/alice/.ssh/authorized_keys"] == "deeper than 40 directories"
    assert errors["/home/alice/.ssh/authorized_keys2"] == "too many symlinks"
    comments = {k["comment"] for k in inv["keys"]}
    assert "bob-key" in comments and not comments & {"deep-down", "end-of-chain"}
