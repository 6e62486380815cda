"""An append-only (`chattr +a`) or immutable (`chattr +i`) ~/.ssh or authorized_keys: nothing can
be renamed or removed there, so an atomic replace cannot work. The applier says so clearly and
leaves nothing behind (no temp file); when a directory turns append-only between the checks and
the rename, so the temp file cannot be removed, the result says that, naming the file.

Needs root (chattr) and a filesystem with inode flags (ext4, xfs, btrfs, tmpfs >= 6.0): each test
skips with the reason when chattr is refused here."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.host.safefs import DirHandle
from tests.integration.apply_support import (
    FakeHost,
    Signer,
    changed,
    make_applier,
    public_line,
    snapshot,
    write_ak,
)

REASON = "chattr needs root"
pytestmark = [pytest.mark.root(reason=REASON), pytest.mark.skipif(os.geteuid() != 0, reason=REASON)]


def chattr(flag: str, path: Path) -> None:
    if shutil.which("chattr") is None:
        pytest.skip("chattr (e2fsprogs) is not installed")
    done = subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"chattr {flag} refused on this filesystem: {done.stderr.strip()}")


@pytest.fixture
def flagged() -> Iterator[list[Path]]:
    """Paths whose flags the test set: cleared again afterwards, so tmp_path can be removed."""
    paths: list[Path] = []
    yield paths
    for path in paths:
        subprocess.run(["chattr", "-a", "-i", str(path)], capture_output=True, check=False)


def _add(host: FakeHost, signer: Signer, **kw: Any) -> dict[str, Any]:
    new, _ = public_line("new")
    body = {"rotation_id": "rot_chattr", "user": "alice", "action": "add", "new_key": new}
    return make_applier(host, signer, **kw).handle(signer.token("rotation", body))[1]


@pytest.mark.parametrize(
    ("what", "flag"),
    [("~/.ssh", "+a"), ("~/.ssh", "+i"), ("authorized_keys", "+a"), ("authorized_keys", "+i")],
)
def test_append_only_or_immutable_is_reported_and_leaves_nothing(
    host: FakeHost, signer: Signer, flagged: list[Path], what: str, flag: str
) -> None:
    old, _ = public_line("old")
    write_ak(host, "alice", f"{old}\n".encode())
    target = host.ak("alice") if what == "authorized_keys" else host.home("alice") / ".ssh"
    chattr(flag, target)
    flagged.append(target)
    before = snapshot(host.root)
    result = _add(host, signer)
    assert result["status"] == "failed", result
    kind = "append-only" if flag == "+a" else "immutable"
    assert kind in result["error"]["message"], result
    assert changed(before, snapshot(host.root)) == set()
    assert sorted(p.name for p in (host.home("alice") / ".ssh").iterdir()) == ["authorized_keys"]


def test_a_temp_file_that_cannot_be_removed_is_named_in_the_result(
    host: FakeHost, signer: Signer, flagged: list[Path]
) -> None:
    old, _ = public_line("old")
    write_ak(host, "alice", f"{old}\n".encode())
    ssh = host.home("alice") / ".ssh"

    def turn_append_only(dirh: DirHandle, name: str) -> None:
        chattr("+a", ssh)  # after every check, before the rename
        flagged.append(ssh)

    result = _add(host, signer, before_rename=turn_append_only)
    assert result["status"] == "failed", result
    left = [p.name for p in ssh.iterdir() if p.name != "authorized_keys"]
    assert len(left) == 1 and left[0].startswith(".authorized_keys.sshklm-")
    message = result["error"]["message"]
    assert "could not be removed" in message and left[0] in message, message
    assert old.encode() in host.ak("alice").read_bytes()
