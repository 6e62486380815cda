"""agent.host.safefs against real hostile trees in tmp dirs.

Symlinks, loops, FIFOs, sockets, devices, hard links and mid-write races; every hostile write
compares a snapshot of the whole tree before and after.
"""

from __future__ import annotations

import errno
import functools
import os
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.host import safefs
from agent.host.safefs import (
    MAX_SYMLINKS,
    CreateSpec,
    DirHandle,
    FileInfo,
    HostFS,
    Mount,
    UnsafePath,
    parse_mountinfo,
)

IS_ROOT = os.geteuid() == 0
NOT_ROOT_REASON = "chown to another uid needs root"
SECRET = b"root:$6$hash-that-must-never-leak:19000::::::\n"
KEYS = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLEEXAMPLEEXAMPLEEXAMPLEEXAMPLEEXAMP user@host\n"


# -- helpers ---------------------------------------------------------------------------------------


def snapshot(top: Path) -> dict[str, tuple[Any, ...]]:
    """Every path under top with its type, mode, owner and content (link target for links).
    Never opens anything but regular files, so FIFOs cannot hang it."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, top)
            if stat.S_ISLNK(st.st_mode):
                content: Any = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                content = Path(p).read_bytes()
            else:
                content = None
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, content)
    return out


def changed_paths(before: dict[str, tuple[Any, ...]], after: dict[str, tuple[Any, ...]]) -> set[str]:
    return {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}


def run_with_timeout(fn: Callable[[], Any], seconds: float = 5.0) -> Any:
    """Run fn in a thread; fail (instead of hanging the suite) if it blocks."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "call blocked"
    if "error" in box:
        raise box["error"]
    return box.get("value")


@pytest.fixture
def owner() -> tuple[int, int]:
    """The uid/gid owning the fake user's files: a throwaway uid as root, ourselves otherwise."""
    return (12345, 12345) if IS_ROOT else (os.getuid(), os.getgid())


@pytest.fixture
def root(tmp_path: Path, owner: tuple[int, int]) -> Path:
    """A fake root: /etc/shadow (secret), /home/u/.ssh/authorized_keys owned by the user, /srv/victim."""
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    (r / "etc" / "shadow").write_bytes(SECRET)
    (r / "etc" / "shadow").chmod(0o600)
    (r / "etc" / "hostname").write_bytes(b"fake-root\n")
    home = r / "home" / "u"
    ssh = home / ".ssh"
    ssh.mkdir(parents=True)
    home.chmod(0o750)
    ssh.chmod(0o700)
    (ssh / "authorized_keys").write_bytes(KEYS)
    (ssh / "authorized_keys").chmod(0o600)
    victim = r / "srv" / "victim"
    victim.mkdir(parents=True)
    (victim / "authorized_keys").write_bytes(b"victim keys\n")
    for p in (home, ssh, ssh / "authorized_keys"):
        os.chown(p, *owner)
    return r


@pytest.fixture
def fs(root: Path) -> Iterator[HostFS]:
    with HostFS(str(root)) as hostfs:
        yield hostfs


HOME = "/home/u"
SSH = "/home/u/.ssh"
AK = "/home/u/.ssh/authorized_keys"


# -- UnsafePath, mountinfo -------------------------------------------------------------------------


def test_unsafe_path_str_is_path_and_reason() -> None:
    exc = UnsafePath("is a FIFO", "/home/u/.ssh/authorized_keys")
    assert str(exc) == "/home/u/.ssh/authorized_keys: is a FIFO"
    assert (exc.reason, exc.path) == ("is a FIFO", "/home/u/.ssh/authorized_keys")


def test_parse_mountinfo_unescapes_and_skips_garbage() -> None:
    text = (
        "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
        "40 27 0:50 / /mnt/my\\040share rw shared:5 - cifs //srv/x rw\n"
        "garbage line\n"
        "41 27 0:51 / /home rw - nfs4 srv:/home rw\n"
    )
    mounts = parse_mountinfo(text)
    assert mounts == [
        Mount("/", "ext4", os.makedev(254, 0)),
        Mount("/mnt/my share", "cifs", os.makedev(0, 50)),
        Mount("/home", "nfs4", os.makedev(0, 51)),
    ]
    table = safefs.MountTable(mounts)
    assert table.fstype(os.makedev(0, 51), "/whatever") == "nfs4"  # by device first
    assert table.fstype(os.makedev(9, 9), "/home/u/.ssh") == "nfs4"  # longest prefix fallback
    assert table.fstype(os.makedev(9, 9), "/homeless") == "ext4"
    assert table.fstype(os.makedev(9, 9), "/mnt/my share/a") == "cifs"


# -- reading ---------------------------------------------------------------------------------------


def test_read_plain_file_with_chain(fs: HostFS, root: Path, owner: tuple[int, int]) -> None:
    result = fs.read(AK, confine=HOME)
    assert result.data == KEYS
    assert not result.truncated
    assert result.realpath == AK
    assert result.info.path == AK
    assert stat.S_ISREG(result.info.mode) and stat.S_IMODE(result.info.mode) == 0o600
    assert (result.info.uid, result.info.gid) == owner
    assert result.info.size == len(KEYS)
    assert [d.path for d in result.chain] == ["/", "/home", "/home/u", "/home/u/.ssh"]
    assert [stat.S_IMODE(d.mode) for d in result.chain[2:]] == [0o750, 0o700]
    assert stat.S_IMODE(result.chain[0].mode) == stat.S_IMODE(os.stat(root).st_mode)
    assert all(stat.S_ISDIR(d.mode) for d in result.chain)
    assert result.chain[3].ino == os.stat(root / "home/u/.ssh").st_ino
    assert result.info.fstype is not None  # /proc/self/mountinfo is readable here
    assert "hash-that" not in repr(result)  # content never in a repr


def test_symlink_inside_home_is_followed(fs: HostFS, root: Path) -> None:
    ssh = root / "home/u/.ssh"
    (ssh / "keys").mkdir()
    (ssh / "keys" / "real").write_bytes(b"real\n")
    (ssh / "authorized_keys").unlink()
    (ssh / "authorized_keys").symlink_to("keys/real")
    result = fs.read(AK, confine=HOME)
    assert result.data == b"real\n"
    assert result.realpath == "/home/u/.ssh/keys/real"
    assert [d.path for d in result.chain][-1] == "/home/u/.ssh/keys"


@pytest.mark.parametrize("target", ["/home/u/.ssh/real", "../../u/.ssh/real", "/home/../home/u/.ssh/real"])
def test_symlink_leaving_and_reentering_home_is_allowed(fs: HostFS, root: Path, target: str) -> None:
    ssh = root / "home/u/.ssh"
    (ssh / "real").write_bytes(b"real\n")
    (ssh / "authorized_keys").unlink()
    (ssh / "authorized_keys").symlink_to(target)
    result = fs.read(AK, confine=HOME)
    assert (result.data, result.realpath) == (b"real\n", "/home/u/.ssh/real")


@pytest.mark.parametrize(
    "target", ["/etc/shadow", "../../../etc/shadow", "../../../../../../../../etc/shadow"]
)
def test_symlink_out_of_home_refused_with_confine(fs: HostFS, root: Path, target: str) -> None:
    ak = root / "home/u/.ssh/authorized_keys"
    ak.unlink()
    ak.symlink_to(target)
    with pytest.raises(UnsafePath) as info:
        fs.read(AK, confine=HOME)
    assert info.value.reason == "symlink leaves /home/u"
    assert "hash-that" not in str(info.value) and "hash-that" not in repr(info.value)
    # Without an account (root's own files) a link is followed only in a directory of root's: as
    # root, the user's ~/.ssh is not one; unprivileged, the tree is the agent's own and the link
    # is followed, re-rooted at the fake root (never the host's /etc).
    if IS_ROOT:
        with pytest.raises(UnsafePath, match="symlink in /home/u/.ssh, owned by uid 12345"):
            fs.read(AK)
    else:
        assert fs.read(AK).data == SECRET


def test_directory_symlink_out_of_home_refused(fs: HostFS, root: Path) -> None:
    ssh = root / "home/u/.ssh"
    (ssh / "authorized_keys").unlink()
    ssh.rmdir()
    ssh.symlink_to("/etc")
    with pytest.raises(UnsafePath, match="symlink leaves /home/u"):
        fs.read("/home/u/.ssh/shadow", confine=HOME)


def test_nested_symlink_out_of_home_refused(fs: HostFS, root: Path) -> None:
    ssh = root / "home/u/.ssh"
    (ssh / "authorized_keys").unlink()
    (ssh / "hop").symlink_to("/srv/victim")
    (ssh / "authorized_keys").symlink_to("hop/authorized_keys")
    with pytest.raises(UnsafePath, match="symlink leaves /home/u"):
        fs.read(AK, confine=HOME)


def test_system_symlink_above_home_is_followed(tmp_path: Path) -> None:
    # /home -> /data/home is root's layout, not the user's: it is followed, chain uses the real path.
    r = tmp_path / "r"
    (r / "data/home/u/.ssh").mkdir(parents=True)
    (r / "data/home/u/.ssh/authorized_keys").write_bytes(b"k\n")
    (r / "home").symlink_to("/data/home")
    with HostFS(str(r)) as fs:
        result = fs.read(AK, confine=HOME)
    assert result.realpath == "/data/home/u/.ssh/authorized_keys"
    assert [d.path for d in result.chain] == ["/", "/data", "/data/home", "/data/home/u", "/data/home/u/.ssh"]


def test_absolute_symlink_is_rerooted(fs: HostFS, root: Path) -> None:
    (root / "etc" / "link").symlink_to("/etc/hostname")
    result = fs.read("/etc/link")
    assert (result.data, result.realpath) == (b"fake-root\n", "/etc/hostname")
    (root / "etc" / "null").symlink_to("/dev/null")  # the host's /dev/null is not inside the root
    with pytest.raises(FileNotFoundError):
        fs.read("/etc/null")


@pytest.mark.parametrize(
    "path", ["/../../../../etc/hostname", "/etc/../../etc/hostname", "/home/u/../../../../etc/hostname"]
)
def test_dotdot_never_climbs_above_root(fs: HostFS, path: str) -> None:
    assert fs.read(path).data == b"fake-root\n"


def test_relative_symlink_dotdot_clamped_at_root(fs: HostFS, root: Path) -> None:
    (root / "etc/up").symlink_to("../../../../../../../../../etc/hostname")
    result = fs.read("/etc/up")
    assert (result.data, result.realpath) == (b"fake-root\n", "/etc/hostname")


def test_symlink_loops_refused(fs: HostFS, root: Path) -> None:
    ssh = root / "home/u/.ssh"
    (ssh / "a").symlink_to("b")
    (ssh / "b").symlink_to("a")
    (ssh / "self").symlink_to("self")
    (ssh / "dirloop").symlink_to(".")
    for name in ("a", "self"):
        with pytest.raises(UnsafePath, match="too many symlinks"):
            fs.read(f"{SSH}/{name}", confine=HOME)
    # Many hops through a directory link are counted too.
    with pytest.raises(UnsafePath, match="too many symlinks"):
        fs.read(SSH + "/dirloop" * (MAX_SYMLINKS + 1) + "/authorized_keys", confine=HOME)
    assert fs.read(SSH + "/dirloop" * MAX_SYMLINKS + "/authorized_keys", confine=HOME).data == KEYS


def test_chain_of_exactly_max_links_is_followed(fs: HostFS, root: Path) -> None:
    ssh = root / "home/u/.ssh"
    (ssh / "l0").symlink_to("authorized_keys")
    for i in range(1, MAX_SYMLINKS):
        (ssh / f"l{i}").symlink_to(f"l{i - 1}")
    assert fs.read(f"{SSH}/l{MAX_SYMLINKS - 1}", confine=HOME).data == KEYS
    (ssh / f"l{MAX_SYMLINKS}").symlink_to(f"l{MAX_SYMLINKS - 1}")
    with pytest.raises(UnsafePath, match="too many symlinks"):
        fs.read(f"{SSH}/l{MAX_SYMLINKS}", confine=HOME)


def test_fifo_is_refused_without_hanging(fs: HostFS, root: Path) -> None:
    ak = root / "home/u/.ssh/authorized_keys"
    ak.unlink()
    os.mkfifo(ak)
    (root / "home/u/.ssh/via_link").symlink_to("authorized_keys")
    for path in (AK, f"{SSH}/via_link"):
        with pytest.raises(UnsafePath, match="is a FIFO"):
            run_with_timeout(functools.partial(fs.read, path, confine=HOME))


def test_socket_is_refused(fs: HostFS, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(root / "home/u/.ssh")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("sock")  # relative: sun_path is short
        with pytest.raises(UnsafePath, match="is a socket"):
            fs.read(f"{SSH}/sock")


@pytest.mark.root(reason="mknod of a device needs root")
@pytest.mark.skipif(not IS_ROOT, reason="mknod of a device needs root")
def test_device_is_refused_and_never_opened(fs: HostFS, root: Path) -> None:
    os.mknod(root / "home/u/.ssh/null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    (root / "home/u/.ssh/authorized_keys").unlink()
    (root / "home/u/.ssh/authorized_keys").symlink_to("null")
    with pytest.raises(UnsafePath, match="is a character device"):
        fs.read(AK, confine=HOME)


def test_directory_is_refused(fs: HostFS) -> None:
    with pytest.raises(UnsafePath, match="is a directory"):
        fs.read(SSH)


def test_missing_and_not_a_directory(fs: HostFS, root: Path) -> None:
    with pytest.raises(FileNotFoundError):
        fs.read("/home/u/.ssh/nope")
    with pytest.raises(NotADirectoryError):
        fs.read("/home/u/.ssh/authorized_keys/x")
    (root / "home/u/dangling").symlink_to("nowhere")
    with pytest.raises(FileNotFoundError):
        fs.read("/home/u/dangling", confine=HOME)
    with pytest.raises(ValueError):
        fs.read("relative/path")


def test_oversized_file_is_truncated(root: Path) -> None:
    ak = root / "home/u/.ssh/authorized_keys"
    with HostFS(str(root), max_bytes=100) as fs:
        ak.write_bytes(b"x" * 100)
        exact = fs.read(AK)
        assert (len(exact.data), exact.truncated) == (100, False)
        ak.write_bytes(b"x" * 101)
        over = fs.read(AK)
        assert (over.data, over.truncated) == (b"x" * 100, True)
        assert over.info.size == 101
        assert fs.read(AK, max_bytes=1000).truncated is False


def test_200kb_line_reads_fine(fs: HostFS, root: Path) -> None:
    line = b"ssh-rsa " + b"A" * 200_000 + b" big\n"
    (root / "home/u/.ssh/authorized_keys").write_bytes(line)
    result = fs.read(AK, confine=HOME)
    assert (result.data, result.truncated) == (line, False)


def test_stat_listdir_exists(fs: HostFS, root: Path) -> None:
    ssh = root / "home/u/.ssh"
    (ssh / "link").symlink_to("authorized_keys")
    (ssh / "id_ed25519").write_bytes(b"")
    link = fs.stat(f"{SSH}/link")
    assert link is not None and stat.S_ISLNK(link.mode)  # lstat semantics on the final component
    assert fs.stat("/home/u/.ssh/missing") is None
    assert fs.stat("/home/u/.ssh/authorized_keys/x") is None
    home = fs.stat(HOME)
    assert home is not None and stat.S_ISDIR(home.mode) and home.path == HOME
    assert fs.listdir(SSH) == ["authorized_keys", "id_ed25519", "link"]
    assert fs.exists(f"{SSH}/link", confine=HOME) and not fs.exists(f"{SSH}/missing")
    (ssh / "dangling").symlink_to("/home/u/nowhere")
    assert not fs.exists(f"{SSH}/dangling", confine=HOME)
    with pytest.raises(NotADirectoryError):
        fs.listdir(AK)
    (root / "home/u/evil").symlink_to("/etc")
    with pytest.raises(UnsafePath):
        fs.listdir("/home/u/evil", confine=HOME)
    if IS_ROOT:  # without an account only root's links are followed: /home/u is the user's
        with pytest.raises(UnsafePath, match="symlink in /home/u, owned by uid 12345"):
            fs.listdir("/home/u/evil")
    else:  # unprivileged, the whole tree is the agent's own: re-rooted at the fake root
        assert fs.listdir("/home/u/evil") == ["hostname", "shadow"]


def test_glob(fs: HostFS, root: Path) -> None:
    conf = root / "etc/ssh/sshd_config.d"
    conf.mkdir(parents=True)
    for name in ("10-a.conf", "20-b.conf", "readme", ".hidden.conf"):
        (conf / name).write_text("")
    (root / "etc/ssh/ssh_host_ed25519_key.pub").write_text("")
    (root / "etc/ssh/ssh_host_rsa_key.pub").write_text("")
    assert fs.glob("/etc/ssh/sshd_config.d/*.conf") == [
        "/etc/ssh/sshd_config.d/10-a.conf",
        "/etc/ssh/sshd_config.d/20-b.conf",
    ]
    assert fs.glob("/etc/ssh/ssh_host_*_key.pub") == [
        "/etc/ssh/ssh_host_ed25519_key.pub",
        "/etc/ssh/ssh_host_rsa_key.pub",
    ]
    assert fs.glob("/etc/*/sshd_config.d/1?-*") == ["/etc/ssh/sshd_config.d/10-a.conf"]
    assert fs.glob("/etc/ssh/sshd_config.d/.*") == ["/etc/ssh/sshd_config.d/.hidden.conf"]
    assert fs.glob("/etc/ssh/sshd_config.d/readme") == ["/etc/ssh/sshd_config.d/readme"]
    assert fs.glob("/etc/ssh/missing/*") == []
    assert fs.glob("/etc/ssh/nope") == []


# -- writing ---------------------------------------------------------------------------------------


def test_replace_happy_path_changes_only_the_file(fs: HostFS, root: Path, owner: tuple[int, int]) -> None:
    before = snapshot(root)
    with fs.open_dir(SSH, confine=HOME) as dirh:
        assert dirh.path == SSH
        assert [d.path for d in dirh.chain] == ["/", "/home", "/home/u", "/home/u/.ssh"]
        old = fs.read_at(dirh, "authorized_keys")
        assert old is not None and old.data == KEYS and old.chain == dirh.chain
        info = fs.atomic_replace(
            dirh, "authorized_keys", b"new\n", uid=owner[0], gid=owner[1], mode=0o600, expect=old.info
        )
    after = snapshot(root)
    assert changed_paths(before, after) == {"home/u/.ssh/authorized_keys"}
    assert after["home/u/.ssh/authorized_keys"] == (stat.S_IFREG, 0o600, *owner, b"new\n")
    assert info.path == AK and info.size == 4 and (info.uid, info.gid) == owner
    assert info.ino == os.stat(root / "home/u/.ssh/authorized_keys").st_ino != old.info.ino


def test_create_dir_and_file_modes_and_owners(fs: HostFS, root: Path, owner: tuple[int, int]) -> None:
    ssh = root / "home/u/.ssh"
    (ssh / "authorized_keys").unlink()
    ssh.rmdir()
    before = snapshot(root)
    with fs.open_dir(SSH, confine=HOME, create=CreateSpec(owner[0], owner[1], 0o700)) as dirh:
        assert fs.read_at(dirh, "authorized_keys") is None
        fs.atomic_replace(dirh, "authorized_keys", KEYS, uid=owner[0], gid=owner[1], mode=0o600, expect=None)
    after = snapshot(root)
    assert changed_paths(before, after) == {"home/u/.ssh", "home/u/.ssh/authorized_keys"}
    assert after["home/u/.ssh"] == (stat.S_IFDIR, 0o700, *owner, None)
    assert after["home/u/.ssh/authorized_keys"] == (stat.S_IFREG, 0o600, *owner, KEYS)


@pytest.mark.root(reason=NOT_ROOT_REASON)
@pytest.mark.skipif(not IS_ROOT, reason=NOT_ROOT_REASON)
def test_create_chowns_to_another_user(fs: HostFS, root: Path) -> None:
    with fs.open_dir("/home/u/.ssh2", confine=HOME, create=CreateSpec(12345, 4242, 0o711)) as dirh:
        info = fs.atomic_replace(dirh, "keys", b"k\n", uid=12345, gid=4242, mode=0o640, expect=None)
    st = os.stat(root / "home/u/.ssh2")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (12345, 4242, 0o711)
    st = os.stat(root / "home/u/.ssh2/keys")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (12345, 4242, 0o640)
    assert (info.uid, info.gid, stat.S_IMODE(info.mode)) == (12345, 4242, 0o640)


@pytest.mark.skipif(IS_ROOT, reason="checks the unprivileged failure mode")
def test_unprivileged_chown_to_other_uid_fails_cleanly(fs: HostFS, root: Path) -> None:
    before = snapshot(root)
    with fs.open_dir(SSH, confine=HOME) as dirh, pytest.raises(PermissionError):
        fs.atomic_replace(dirh, "authorized_keys", b"x", uid=0, gid=0, mode=0o600, expect=None)
    assert snapshot(root) == before


def test_symlinked_ssh_dir_refused(fs: HostFS, root: Path, owner: tuple[int, int]) -> None:
    ssh = root / "home/u/.ssh"
    (ssh / "authorized_keys").unlink()
    ssh.rmdir()
    ssh.symlink_to("/srv/victim")
    before = snapshot(root)
    for create in (None, CreateSpec(*owner)):
        with pytest.raises(UnsafePath, match="symlink on the write path"):
            fs.open_dir(SSH, confine=HOME, create=create)
    assert snapshot(root) == before


def test_symlinked_authorized_keys_refused(fs: HostFS, root: Path, owner: tuple[int, int]) -> None:
    ak = root / "home/u/.ssh/authorized_keys"
    ak.unlink()
    ak.symlink_to("/srv/victim/authorized_keys")
    before = snapshot(root)
    with fs.open_dir(SSH, confine=HOME) as dirh:
        with pytest.raises(UnsafePath, match="is a symlink"):
            fs.read_at(dirh, "authorized_keys")
        with pytest.raises(UnsafePath, match="is a symlink"):
            fs.atomic_replace(
                dirh, "authorized_keys", b"x\n", uid=owner[0], gid=owner[1], mode=0o600, expect=None
            )
    assert snapshot(root) == before


def test_hardlinked_authorized_keys_refused(fs: HostFS, root: Path, owner: tuple[int, int]) -> None:
    ak = root / "home/u/.ssh/authorized_keys"
    ak.unlink()
    os.link(root / "etc/shadow", ak)
    before = snapshot(root)
    with fs.open_dir(SSH, confine=HOME) as dirh:
        with pytest.raises(UnsafePath, match="has 2 hard links"):
            fs.read_at(dirh, "authorized_keys")
        with pytest.raises(UnsafePath, match="has 2 hard links"):
            fs.atomic_replace(
                dirh, "authorized_keys", b"x\n", uid=owner[0], gid=owner[1], mode=0o600, expect=None
            )
    assert snapshot(root) == before


def test_fifo_in_place_of_file_refused(fs: HostFS, root: Path, owner: tuple[int, int]) -> None:
    ak = root / "home/u/.ssh/authorized_keys"
    ak.unlink()
    os.mkfifo(ak)
    before = snapshot(root)
    with fs.open_dir(SSH, confine=HOME) as dirh:
        with pytest.raises(UnsafePath, match="is a FIFO"):
            run_with_timeout(lambda: fs.read_at(dirh, "authorized_keys"))
        with pytest.raises(UnsafePath, match="is a FIFO"):
            run_with_timeout(
                lambda: fs.atomic_replace(
                    dirh, "authorized_keys", b"x", uid=owner[0], gid=owner[1], mode=0o600, expect=None
                )
            )
    assert snapshot(root) == before


def test_directory_in_place_of_file_refused(fs: HostFS, root: Path, owner: tuple[int, int]) -> None:
    ak = root / "home/u/.ssh/authorized_keys"
    ak.unlink()
    ak.mkdir()
    before = snapshot(root)
    with fs.open_dir(SSH, confine=HOME) as dirh:
        with pytest.raises(UnsafePath, match="is a directory"):
            fs.read_at(dirh, "authorized_keys")
        with pytest.raises(UnsafePath, match="is a directory"):
            fs.atomic_replace(
                dirh, "authorized_keys", b"x", uid=owner[0], gid=owner[1], mode=0o600, expect=None
            )
    assert snapshot(root) == before


def test_file_or_fifo_in_place_of_directory_refused(fs: HostFS, root: Path, owner: tuple[int, int]) -> None:
    (root / "home/u/.ssh2").write_bytes(b"")
    os.mkfifo(root / "home/u/.ssh3")
    before = snapshot(root)
    with pytest.raises(UnsafePath, match="is not a directory"):
        fs.open_dir("/home/u/.ssh2", confine=HOME, create=CreateSpec(*owner))
    with pytest.raises(UnsafePath, match="is a FIFO"):
        run_with_timeout(lambda: fs.open_dir("/home/u/.ssh3", confine=HOME, create=CreateSpec(*owner)))
    assert snapshot(root) == before


def test_expect_mismatch_refused(fs: HostFS, root: Path, owner: tuple[int, int]) -> None:
    ak = root / "home/u/.ssh/authorized_keys"
    with fs.open_dir(SSH, confine=HOME) as dirh:
        old = fs.read_at(dirh, "authorized_keys")
        assert old is not None
        with ak.open("ab") as fh:  # someone edits the file after our read
            fh.write(b"ssh-ed25519 AAAA added-by-user\n")
        before = snapshot(root)
        with pytest.raises(UnsafePath, match="changed since read"):
            fs.atomic_replace(
                dirh, "authorized_keys", b"new\n", uid=owner[0], gid=owner[1], mode=0o600, expect=old.info
            )
        assert snapshot(root) == before
        ak.unlink()  # gone entirely
        with pytest.raises(UnsafePath, match="changed since read"):
            fs.atomic_replace(
                dirh, "authorized_keys", b"new\n", uid=owner[0], gid=owner[1], mode=0o600, expect=old.info
            )
    assert not ak.exists()
    assert os.listdir(root / "home/u/.ssh") == []  # no temp file left behind


def test_bad_directory_owner_or_mode_refused(fs: HostFS, root: Path, owner: tuple[int, int]) -> None:
    home = root / "home/u"
    before = snapshot(root)
    home.chmod(0o770)
    with pytest.raises(UnsafePath, match="group- or other-writable"):
        fs.open_dir(SSH, confine=HOME)
    home.chmod(0o750)
    (root / "home/u/.ssh").chmod(0o702)
    with pytest.raises(UnsafePath, match="group- or other-writable"):
        fs.open_dir(SSH, confine=HOME)
    (root / "home/u/.ssh").chmod(0o700)
    if IS_ROOT:
        os.chown(root / "home/u/.ssh", 23456, 23456)
        with pytest.raises(UnsafePath, match="bad owner"):
            fs.open_dir(SSH, confine=HOME, user_uid=owner[0])
        os.chown(root / "home/u/.ssh", *owner)
    assert snapshot(root) == before


def test_write_path_outside_the_home_or_dotdot(fs: HostFS, root: Path, owner: tuple[int, int]) -> None:
    """A directory outside the home (a central AuthorizedKeysFile) is written only through root's
    directories, and nothing new there is the user's."""
    before = snapshot(root)
    with fs.open_dir("/srv/victim", confine=HOME) as dirh:
        assert dirh.home is None and not dirh.user_may_own
        if IS_ROOT:
            with pytest.raises(UnsafePath, match="created only in that user's own directories"):
                fs.atomic_replace(dirh, "new", b"k\n", uid=owner[0], gid=owner[1], mode=0o600, expect=None)
            with pytest.raises(UnsafePath, match="a file owned by uid 4242 is not written here"):
                fs.atomic_replace(dirh, "new", b"k\n", uid=4242, gid=4242, mode=0o600, expect=None)
    assert snapshot(root) == before
    with pytest.raises(UnsafePath, match="'..'"):
        fs.open_dir("/home/u/../../srv/victim", confine=HOME)
    with pytest.raises(FileNotFoundError):
        fs.open_dir("/home/u/missing/deeper", confine=HOME, create=CreateSpec(*owner))


def test_names_must_be_single_components(fs: HostFS, owner: tuple[int, int]) -> None:
    with fs.open_dir(SSH, confine=HOME) as dirh:
        for name in ("", ".", "..", "../x", "a/b"):
            with pytest.raises(ValueError):
                fs.read_at(dirh, name)
            with pytest.raises(ValueError):
                fs.atomic_replace(dirh, name, b"", uid=owner[0], gid=owner[1], mode=0o600, expect=None)


def test_selinux_label_is_copied(fs: HostFS, root: Path, owner: tuple[int, int]) -> None:
    ak = root / "home/u/.ssh/authorized_keys"
    label = b"unconfined_u:object_r:ssh_home_t:s0\x00"
    try:
        os.setxattr(ak, safefs.SELINUX_XATTR, label)
    except OSError as exc:
        pytest.skip(f"cannot set {safefs.SELINUX_XATTR} here: {exc.strerror}")
    with fs.open_dir(SSH, confine=HOME) as dirh:
        fs.atomic_replace(
            dirh, "authorized_keys", b"new\n", uid=owner[0], gid=owner[1], mode=0o600, expect=None
        )
    assert os.getxattr(ak, safefs.SELINUX_XATTR) == label
    assert ak.read_bytes() == b"new\n"


@pytest.mark.parametrize("where", ["get", "set"])
def test_selinux_enotsup_is_tolerated(
    fs: HostFS, root: Path, owner: tuple[int, int], monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    def unsupported(*args: object, **kwargs: object) -> bytes:
        raise OSError(errno.ENOTSUP, "Operation not supported")

    monkeypatch.setattr(os, "getxattr", unsupported if where == "get" else lambda *a, **k: b"label\x00")
    monkeypatch.setattr(os, "setxattr", unsupported)
    with fs.open_dir(SSH, confine=HOME) as dirh:
        fs.atomic_replace(
            dirh, "authorized_keys", b"new\n", uid=owner[0], gid=owner[1], mode=0o600, expect=None
        )
    assert (root / "home/u/.ssh/authorized_keys").read_bytes() == b"new\n"


def test_selinux_other_errors_abort_and_clean_up(
    fs: HostFS, root: Path, owner: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "getxattr", lambda *a, **k: b"label\x00")
    monkeypatch.setattr(os, "setxattr", denied)
    before = snapshot(root)
    with fs.open_dir(SSH, confine=HOME) as dirh, pytest.raises(PermissionError):
        fs.atomic_replace(
            dirh, "authorized_keys", b"new\n", uid=owner[0], gid=owner[1], mode=0o600, expect=None
        )
    assert snapshot(root) == before


def test_mid_write_swap_of_ssh_dir_lands_in_held_directory(root: Path, owner: tuple[int, int]) -> None:
    home = root / "home/u"

    def swap(dirh: DirHandle, name: str) -> None:
        (home / ".ssh").rename(home / ".ssh-old")
        (home / ".ssh").symlink_to("/srv/victim")  # an attacker points ~/.ssh elsewhere mid-write

    with HostFS(str(root), before_rename=swap) as fs, fs.open_dir(SSH, confine=HOME) as dirh:
        old = fs.read_at(dirh, "authorized_keys")
        assert old is not None
        before = snapshot(root)
        fs.atomic_replace(
            dirh, "authorized_keys", b"new\n", uid=owner[0], gid=owner[1], mode=0o600, expect=old.info
        )
    after = snapshot(root)
    assert after["srv/victim/authorized_keys"] == before["srv/victim/authorized_keys"]
    assert after["home/u/.ssh-old/authorized_keys"] == (stat.S_IFREG, 0o600, *owner, b"new\n")
    expected = {
        "home/u/.ssh",  # now the attacker's symlink
        "home/u/.ssh-old",
        "home/u/.ssh/authorized_keys",
        "home/u/.ssh-old/authorized_keys",
    }
    assert changed_paths(before, after) == expected
    assert after["home/u/.ssh"] == (stat.S_IFLNK, 0o777, os.geteuid(), os.getegid(), ("link", "/srv/victim"))


def test_mid_write_swap_of_file_for_symlink_is_refused(root: Path, owner: tuple[int, int]) -> None:
    ak = root / "home/u/.ssh/authorized_keys"

    def swap(dirh: DirHandle, name: str) -> None:
        ak.unlink()
        ak.symlink_to("/etc/shadow")

    with (
        HostFS(str(root), before_rename=swap) as fs,
        fs.open_dir(SSH, confine=HOME) as dirh,
        pytest.raises(UnsafePath, match="is a symlink"),
    ):
        fs.atomic_replace(
            dirh, "authorized_keys", b"new\n", uid=owner[0], gid=owner[1], mode=0o600, expect=None
        )
    assert os.listdir(root / "home/u/.ssh") == ["authorized_keys"]  # temp file removed
    assert os.readlink(ak) == "/etc/shadow"
    assert (root / "etc/shadow").read_bytes() == SECRET


def test_failure_before_rename_removes_temp(root: Path, owner: tuple[int, int]) -> None:
    def boom(dirh: DirHandle, name: str) -> None:
        raise RuntimeError("disk on fire")

    before = snapshot(root)
    with (
        HostFS(str(root), before_rename=boom) as fs,
        fs.open_dir(SSH, confine=HOME) as dirh,
        pytest.raises(RuntimeError),
    ):
        fs.atomic_replace(
            dirh, "authorized_keys", b"new\n", uid=owner[0], gid=owner[1], mode=0o600, expect=None
        )
    assert snapshot(root) == before


def test_file_info_is_frozen_and_comparable(fs: HostFS) -> None:
    a = fs.stat(AK)
    b = fs.stat(AK)
    assert isinstance(a, FileInfo) and a == b
    with pytest.raises(AttributeError):
        a.uid = 0  # type: ignore[misc]


def test_roots_own_file_outside_any_home(fs: HostFS, root: Path) -> None:
    """How a root-owned file outside any home is written (a KRL, a CA list under /etc/ssh): the
    directory opened with itself as `confine` and root as the account; the file root's."""
    me = 0 if IS_ROOT else os.geteuid()
    (root / "etc" / "ssh").mkdir()
    before = snapshot(root)
    with fs.open_dir("/etc/ssh", confine="/etc/ssh", user_uid=me) as dirh:
        assert dirh.user_may_own and fs.read_at(dirh, "revoked_keys") is None
        fs.atomic_replace(
            dirh, "revoked_keys", b"k\n", uid=me, gid=me if IS_ROOT else os.getegid(), mode=0o644, expect=None
        )
    assert changed_paths(before, snapshot(root)) == {"etc/ssh/revoked_keys"}
    st = os.stat(root / "etc/ssh/revoked_keys")
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (me, 0o644)
