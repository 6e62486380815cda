"""The hostile-home suite: an account that controls a directory at or above its home, or a
component of a central AuthorizedKeysFile, must not steer the agent (a root process) anywhere
else — neither its writes (the applier) nor its reads (discovery).

Every case snapshots the whole fake root, (dev, inode, mtime, size, owner, mode, content) of
every entry, before and after: a refused instruction changes nothing at all, an applied one
changes only the user's own file (and the ~/.ssh it may create). The trust rules under test are
written down in docs/rotation.md ("Trust rules for every path component").
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
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

REASON = "accounts with distinct uids need root (chown)"
pytestmark = [pytest.mark.root(reason=REASON), pytest.mark.skipif(os.geteuid() != 0, reason=REASON)]

ALICE_SRV = "/srv/alice"


# -- the tree, exactly ---------------------------------------------------------------------------------


def tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under root (root itself included) with its dev, inode, mtime (ns), size, owner,
    mode and a digest of the content: see `snapshot(exact=True)`."""
    return snapshot(root, exact=True)


def changes(before: dict[str, tuple[Any, ...]], root: Path) -> set[str]:
    return changed(before, tree(root))


# -- the host -------------------------------------------------------------------------------------------


def set_home(host: FakeHost, user: str, home: str) -> None:
    """Point `user`'s passwd entry at `home` (a path inside the fake root)."""
    passwd = host.root / "etc" / "passwd"
    lines = []
    for line in passwd.read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            fields[5] = home
        lines.append(":".join(fields))
    passwd.write_text("\n".join(lines) + "\n")


def add_account(host: FakeHost, name: str, uid: int, home: str) -> None:
    with (host.root / "etc" / "passwd").open("a") as f:
        f.write(f"{name}:x:{uid}:{uid}::{home}:/bin/sh\n")
    with (host.root / "etc" / "group").open("a") as f:
        f.write(f"{name}:x:{uid}:\n")


def mkdir(host: FakeHost, path: str, uid: int, mode: int = 0o755) -> Path:
    target = host.root / path.lstrip("/")
    target.mkdir(parents=True, exist_ok=True)
    os.chown(target, uid, uid)
    os.chmod(target, mode)
    return target


def root_keys(host: FakeHost) -> tuple[Path, str]:
    """/root/.ssh/authorized_keys with one key of root's (root-owned, 0600)."""
    line, _ = public_line("root-only")
    ssh = mkdir(host, "/root/.ssh", 0, 0o700)
    (ssh / "authorized_keys").write_text(line + "\n")
    os.chmod(ssh / "authorized_keys", 0o600)
    return ssh / "authorized_keys", line


def alice_owns_parent(host: FakeHost) -> Path:
    """alice's home is /srv/alice/home and alice owns /srv/alice (the directory above her home)."""
    uid = host.uids["alice"]
    mkdir(host, "/srv", 0)
    mkdir(host, ALICE_SRV, uid)
    home = mkdir(host, ALICE_SRV + "/home", uid)
    mkdir(host, ALICE_SRV + "/home/.ssh", uid, 0o700)
    set_home(host, "alice", ALICE_SRV + "/home")
    return home


def aim_alice_home_at_root(host: FakeHost) -> None:
    """What alice can do with a directory she owns above her home: replace the home by a link."""
    srv = host.root / ALICE_SRV.lstrip("/")
    shutil.rmtree(srv / "home")
    (srv / "home").symlink_to("/root")
    os.lchown(srv / "home", host.uids["alice"], host.uids["alice"])


def add(host: FakeHost, signer: Signer, user: str = "alice", **kw: Any) -> dict[str, Any]:
    new, _ = public_line("added-by-the-agent")
    body = {"rotation_id": "rot_h1", "user": user, "action": "add", "new_key": new}
    applier = make_applier(host, signer, **kw)
    return applier.handle(signer.token("rotation", body))[1]


def grant(host: FakeHost, signer: Signer, user: str = "alice") -> dict[str, Any]:
    from datetime import UTC, datetime, timedelta

    key, _ = public_line("visitor")
    expires = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = {"grant_id": "eph_h1", "user": user, "public_key": key, "expires_at": expires}
    return make_applier(host, signer).handle(signer.token("ephemeral", body))[1]


def scan_json(host: FakeHost, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(["scan", "--root", str(host.root), "--format", "json"]) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def comments_of(inv: dict[str, Any], user: str) -> set[str]:
    return {k["comment"] for k in inv["keys"] if k["user"] == user}


# -- High: writes above the home -----------------------------------------------------------------------


@pytest.mark.parametrize("root_has_ssh", [True, False], ids=["root has ~/.ssh", "root without ~/.ssh"])
@pytest.mark.parametrize("instruction", ["add", "ephemeral"])
def test_home_replaced_by_a_link_to_root_is_refused(
    host: FakeHost, signer: Signer, root_has_ssh: bool, instruction: str
) -> None:
    alice_owns_parent(host)
    aim_alice_home_at_root(host)
    if root_has_ssh:
        root_keys(host)
    before = tree(host.root)
    result = add(host, signer) if instruction == "add" else grant(host, signer)
    assert result["status"] == "failed", result
    assert result["error"]["code"] == "UNSAFE_PATH"
    assert changes(before, host.root) == set()
    assert root_has_ssh or not (host.root / "root" / ".ssh").exists()


def test_home_below_a_user_owned_directory_is_written_when_it_is_a_real_directory(
    host: FakeHost, signer: Signer
) -> None:
    """sshd accepts a home below a directory the user owns; so does the agent, as long as nothing
    there is a link: everything it can put there is hers."""
    alice_owns_parent(host)
    before = tree(host.root)
    result = add(host, signer)
    assert result["status"] == "applied", result
    ak = "srv/alice/home/.ssh/authorized_keys"
    assert changes(before, host.root) == {"srv/alice/home/.ssh", ak}
    st = os.stat(host.root / ak)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (host.uids["alice"], 0o600)


def test_home_swapped_for_a_link_between_check_and_write_lands_in_the_checked_directory(
    host: FakeHost, signer: Signer
) -> None:
    """The race: after every check and right before the rename, alice swaps her home for a link
    to /root. The write happens in the directory held by descriptor (her real ~/.ssh, moved), and
    the result does not claim an effect sshd will not see."""
    alice_owns_parent(host)
    write_ak(host, "alice", b"")  # so the file exists below /srv/alice/home/.ssh
    shutil.move(host.ak("alice"), host.root / "srv/alice/home/.ssh/authorized_keys")
    root_ak, _ = root_keys(host)
    srv = host.root / "srv" / "alice"

    def swap(dirh: DirHandle, name: str) -> None:
        (srv / "home").rename(srv / "moved")
        (srv / "home").symlink_to("/root")

    root_before = tree(host.root / "root")
    result = add(host, signer, before_rename=swap)
    # The write is not in effect where sshd looks now (the home is a link alice made), and the
    # read-back after the write says so: failed, with what differs; root's file untouched.
    assert result["status"] == "failed", result
    assert result["error"]["code"] == "KEY_NOT_IN_EFFECT", result
    assert tree(host.root / "root") == root_before
    assert b"added-by-the-agent" in (srv / "moved" / ".ssh" / "authorized_keys").read_bytes()
    assert b"added-by-the-agent" not in root_ak.read_bytes()


@pytest.mark.parametrize("target", ["/root/.ssh", "/home/bob/.ssh", "/etc"])
def test_user_owned_component_of_a_central_authorized_keys_file_is_refused(
    host: FakeHost, signer: Signer, target: str
) -> None:
    """AuthorizedKeysFile /srv/keys/%u/ssh/authorized_keys, /srv/keys/alice owned by alice, who
    points `ssh` elsewhere."""
    root_keys(host)
    (host.root / "etc/ssh/sshd_config").write_text("AuthorizedKeysFile /srv/keys/%u/ssh/authorized_keys\n")
    mkdir(host, "/srv/keys", 0)
    mine = mkdir(host, "/srv/keys/alice", host.uids["alice"])
    (mine / "ssh").symlink_to(target)
    os.lchown(mine / "ssh", host.uids["alice"], host.uids["alice"])
    before = tree(host.root)
    result = add(host, signer)
    assert result["status"] == "failed", result
    assert changes(before, host.root) == set()


def test_central_file_below_a_user_owned_directory_never_gets_a_user_owned_file(
    host: FakeHost, signer: Signer
) -> None:
    """No link this time: /srv/keys/alice/ssh is a real directory of alice's. The file the agent
    creates outside her home is root's (she may still delete it: the directory is hers)."""
    (host.root / "etc/ssh/sshd_config").write_text("AuthorizedKeysFile /srv/keys/%u/ssh/authorized_keys\n")
    mkdir(host, "/srv/keys", 0)
    mkdir(host, "/srv/keys/alice", host.uids["alice"])
    before = tree(host.root)
    result = add(host, signer)
    assert result["status"] == "applied", result
    assert changes(before, host.root) == {
        "srv/keys/alice",
        "srv/keys/alice/ssh",
        "srv/keys/alice/ssh/authorized_keys",
    }
    for rel in ("srv/keys/alice/ssh", "srv/keys/alice/ssh/authorized_keys"):
        assert os.stat(host.root / rel).st_uid == 0, rel


def test_root_without_ssh_dir_gets_a_root_owned_one(host: FakeHost, signer: Signer) -> None:
    before = tree(host.root)
    result = add(host, signer, user="root")
    assert result["status"] == "applied", result
    assert changes(before, host.root) == {"root", "root/.ssh", "root/.ssh/authorized_keys"}
    for rel, mode in (("root/.ssh", 0o700), ("root/.ssh/authorized_keys", 0o600)):
        st = os.stat(host.root / rel)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, mode), rel


@pytest.mark.parametrize("home", ["/", "/root", "/etc", "/home/bob"])
def test_home_that_is_root_owned_or_another_accounts_is_refused(
    host: FakeHost, signer: Signer, home: str
) -> None:
    root_keys(host)
    set_home(host, "alice", home)
    before = tree(host.root)
    result = add(host, signer)
    assert result["status"] == "failed", result
    assert result["error"]["code"] == "UNSAFE_PATH"
    assert changes(before, host.root) == set()


def test_home_linked_by_root_into_another_accounts_home_is_refused(host: FakeHost, signer: Signer) -> None:
    """Root's own link (/home is root's) is followed — but it must not make alice's key a key of
    bob's: a home that is another account's is refused."""
    shutil.rmtree(host.home("alice"))
    host.home("alice").symlink_to("/home/bob")
    before = tree(host.root)
    result = add(host, signer)
    assert result["status"] == "failed", result
    assert changes(before, host.root) == set()


def test_home_linked_by_root_elsewhere_is_followed(host: FakeHost, signer: Signer) -> None:
    """/home/alice -> /data/alice, made by root: root's layout, followed; the file lands there."""
    data = mkdir(host, "/data", 0)
    shutil.move(host.home("alice"), data / "alice")
    host.home("alice").symlink_to("/data/alice")
    before = tree(host.root)
    result = add(host, signer)
    assert result["status"] == "applied", result
    assert changes(before, host.root) == {"data/alice/.ssh", "data/alice/.ssh/authorized_keys"}


def test_shared_home_is_refused(host: FakeHost, signer: Signer) -> None:
    """carol (another uid) has alice's home too: a key added for alice would open carol's account."""
    add_account(host, "carol", 2999, "/home/alice")
    before = tree(host.root)
    result = add(host, signer)
    assert result["status"] == "failed", result
    assert "carol" in result["error"]["message"]
    assert changes(before, host.root) == set()


def test_hard_link_to_roots_file_is_neither_written_nor_attributed(
    host: FakeHost, signer: Signer, capsys: pytest.CaptureFixture[str]
) -> None:
    root_ak, _ = root_keys(host)
    host.ak("alice").unlink(missing_ok=True)
    os.link(root_ak, host.ak("alice"))
    before = tree(host.root)
    result = add(host, signer)
    assert result["status"] == "failed", result
    assert changes(before, host.root) == set()
    inv = scan_json(host, capsys)
    assert "root-only" not in comments_of(inv, "alice")
    assert any(e["path"] == "/home/alice/.ssh/authorized_keys" for e in inv["errors"])


def test_bind_mount_of_another_users_ssh_dir_is_refused(host: FakeHost, signer: Signer) -> None:
    bob_line, _ = public_line("bob")
    write_ak(host, "bob", (bob_line + "\n").encode())
    alice_ssh, bob_ssh = host.home("alice") / ".ssh", host.home("bob") / ".ssh"
    mounted = subprocess.run(
        ["mount", "--bind", str(bob_ssh), str(alice_ssh)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"mount --bind refused here: {mounted.stderr.decode().strip()}")
    try:
        before = tree(host.root)
        result = add(host, signer)
        assert result["status"] == "failed", result
        assert changes(before, host.root) == set()
    finally:
        subprocess.run(["umount", str(alice_ssh)], check=True)


# -- the same resolution serves discovery --------------------------------------------------------------


def test_scan_does_not_attribute_roots_keys_to_the_user_who_aimed_her_home_at_root(
    host: FakeHost, capsys: pytest.CaptureFixture[str]
) -> None:
    alice_owns_parent(host)
    aim_alice_home_at_root(host)
    root_keys(host)
    inv = scan_json(host, capsys)
    assert comments_of(inv, "alice") == set()
    assert comments_of(inv, "root") == {"root-only"}
    assert any(e["user"] == "alice" and e["path"].startswith(ALICE_SRV) for e in inv["errors"])


def test_scan_does_not_follow_a_user_owned_component_of_a_central_file(
    host: FakeHost, capsys: pytest.CaptureFixture[str]
) -> None:
    root_keys(host)
    (host.root / "etc/ssh/sshd_config").write_text("AuthorizedKeysFile /srv/keys/%u/ssh/authorized_keys\n")
    mkdir(host, "/srv/keys", 0)
    mine = mkdir(host, "/srv/keys/alice", host.uids["alice"])
    (mine / "ssh").symlink_to("/root/.ssh")
    os.lchown(mine / "ssh", host.uids["alice"], host.uids["alice"])
    inv = scan_json(host, capsys)
    assert "root-only" not in comments_of(inv, "alice")
    assert any(e["path"] == "/srv/keys/alice/ssh/authorized_keys" for e in inv["errors"])


@pytest.mark.parametrize("mode", [0o775, 0o1777], ids=["group-writable /home", "sticky world-writable /home"])
def test_a_parent_others_can_write_steers_nothing(
    host: FakeHost, signer: Signer, capsys: pytest.CaptureFixture[str], mode: int
) -> None:
    """/home writable by a group (or by everybody, sticky like /tmp): its members could swap homes,
    so nothing is written below it, and a home link in it (made by alice) is not followed."""
    root_keys(host)
    os.chmod(host.root / "home", mode)
    before = tree(host.root)
    result = add(host, signer)
    assert result["status"] == "failed", result
    assert "group- or other-writable" in result["error"]["message"]
    assert changes(before, host.root) == set()
    shutil.rmtree(host.home("alice"))
    host.home("alice").symlink_to("/root")
    os.lchown(host.home("alice"), host.uids["alice"], host.uids["alice"])
    inv = scan_json(host, capsys)
    assert "root-only" not in comments_of(inv, "alice")
    assert any(e["user"] == "alice" and "symlink in /home" in e["error"] for e in inv["errors"])
