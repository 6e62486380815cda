"""Discovery reads each directory once (DirReads); the result must equal reading every target
with its own full safe walk (HostFS.read), on a root full of hostile layouts."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.host.safefs import DirReads, HostFS, UnsafePath
from agent.host.scan import (
    ScanContext,
    ScanSettings,
    assemble,
    read_target,
    scan_host,
    target_key,
)
from agent.host.users import RootUserSource
from tests.fakeroot import FakeRoot, ed25519_line, ed25519_private_openssh

SHADOW = "root:$6$must-not-leak:19000::::::\n"


def hostile_root(base: Path) -> FakeRoot:
    fr = FakeRoot(base / "root")
    fr.write_sshd_config("AuthorizedKeysFile .ssh/authorized_keys .ssh/authorized_keys2 /etc/ssh/keys/%u\n")
    fr.write("/etc/shadow", SHADOW)
    fr.write("/etc/ssh/keys/alice", ed25519_line("central") + "\n", 0o644)

    fr.add_user("alice", 1000)  # plain: both files, an identity key with its .pub, other files
    fr.authorized_keys("alice", [ed25519_line("a1"), 'from="10.0.0.0/8",no-pty ' + ed25519_line("a2")])
    fr.authorized_keys("alice", [ed25519_line("a3"), "garbage line"], name="authorized_keys2")
    private, public = ed25519_private_openssh()
    fr.write("/home/alice/.ssh/id_ed25519", private)
    fr.write("/home/alice/.ssh/id_ed25519.pub", public + " alice@laptop\n", 0o644)
    fr.write("/home/alice/.ssh/notes.txt", "not a key\n")

    home = fr.add_user("bob", 1001)  # ~/.ssh is a symlink inside the home
    (home / ".ssh").rmdir()
    (home / "dotfiles/ssh").mkdir(parents=True)
    (home / ".ssh").symlink_to("dotfiles/ssh")
    fr.write("/home/bob/dotfiles/ssh/authorized_keys", ed25519_line("b1") + "\n")

    home = fr.add_user("carol", 1002)  # ~/.ssh points out of the home
    (home / ".ssh").rmdir()
    (home / ".ssh").symlink_to("/etc")

    home = fr.add_user("dave", 1003)  # final symlinks: one inside the home, one to /etc/shadow
    fr.write("/home/dave/keys", ed25519_line("d1") + "\n")
    (home / ".ssh/authorized_keys").symlink_to("../keys")
    (home / ".ssh/authorized_keys2").symlink_to("/etc/shadow")
    (home / ".ssh/id_rsa").symlink_to("/etc/shadow")

    home = fr.add_user("erin", 1004)  # ~/.ssh is a regular file
    (home / ".ssh").rmdir()
    fr.write("/home/erin/.ssh", "x\n")

    fr.add_user("frank", 1005, make_home=False)  # no home at all

    home = fr.add_user("gina", 1006)  # FIFO and a directory where files are expected
    os.mkfifo(home / ".ssh/authorized_keys")
    (home / ".ssh/authorized_keys2").mkdir()
    os.mkfifo(home / ".ssh/id_ecdsa")

    fr.add_account("hank", 1007, 1007, "/home/hank")  # the home itself is a symlink (root's layout)
    fr.write("/srv/hank/.ssh/authorized_keys", ed25519_line("h1") + "\n")
    fr.path("/home/hank").symlink_to("/srv/hank")

    home = fr.add_user("ivan", 1008)  # symlink loop
    (home / ".ssh").rmdir()
    (home / ".ssh").symlink_to(".ssh")

    home = fr.add_user("ken", 1009)  # StrictModes: group/other-writable ~/.ssh
    fr.authorized_keys("ken", [ed25519_line("k1")])
    os.chmod(home / ".ssh", 0o777)

    fr.write("/home/zed/.ssh/authorized_keys", ed25519_line("orphan") + "\n")  # no account
    return fr


def _context() -> ScanContext:
    return ScanContext(now=datetime(2026, 1, 1, tzinfo=UTC), local_tz=UTC, snapshot_id="s")


def test_batched_reads_equal_one_walk_per_target(tmp_path: Path) -> None:
    fr = hostile_root(tmp_path)
    with HostFS(str(fr.root)) as fs:
        users = RootUserSource(fs)
        ctx = _context()
        plan, batched, inventory = scan_host(fs, users, ScanSettings(), ctx)
        single = {target_key(t): read_target(fs, t, plan, ctx) for t in plan.targets}
        reference = assemble(plan, single, ctx, [t.path for t in plan.targets if single[target_key(t)].read])
    assert batched == single
    assert inventory == reference
    # The layouts above really were exercised: keys found, refusals reported, secrets not read.
    comments = {k.comment for k in inventory.keys}
    assert {"a1", "a2", "a3", "central", "b1", "d1", "h1", "k1", "orphan", "alice@laptop"} <= comments
    reasons = {(e.path, e.error) for e in inventory.errors}
    assert ("/home/dave/.ssh/authorized_keys2", "symlink leaves /home/dave") in reasons
    assert ("/home/carol/.ssh/authorized_keys", "symlink leaves /home/carol") in reasons
    assert ("/home/gina/.ssh/authorized_keys", "is a FIFO") in reasons
    assert ("/home/gina/.ssh/authorized_keys2", "is a directory") in reasons
    assert any(path == "/home/ivan/.ssh/authorized_keys" for path, _ in reasons)
    assert "must-not-leak" not in repr(inventory)


def test_dir_reads_keeps_one_directory_and_remembers_its_failure(tmp_path: Path) -> None:
    fr = hostile_root(tmp_path)
    with HostFS(str(fr.root)) as fs, DirReads(fs) as reads:
        first = reads.read("/home/alice/.ssh/authorized_keys", confine="/home/alice")
        second = reads.read("/home/alice/.ssh/authorized_keys2", confine="/home/alice")
        assert first.realpath == "/home/alice/.ssh/authorized_keys"
        assert first.chain == second.chain  # one walk served both
        assert [i.path for i in first.chain] == ["/", "/home", "/home/alice", "/home/alice/.ssh"]
        assert "id_ed25519" in reads.listdir("/home/alice/.ssh")
        for name in ("authorized_keys", "authorized_keys2"):
            with pytest.raises(UnsafePath) as caught:
                reads.read(f"/home/carol/.ssh/{name}", confine="/home/carol")
            assert caught.value.path == f"/home/carol/.ssh/{name}"
        # Unconfined, the same directory resolves (re-rooted inside the fake root).
        assert "shadow" in reads.listdir("/home/carol/.ssh")
        with pytest.raises(FileNotFoundError):
            reads.read("/home/frank/.ssh/authorized_keys", confine="/home/frank")
        with pytest.raises(NotADirectoryError):
            reads.read("/home/erin/.ssh/authorized_keys", confine="/home/erin")
