"""The watcher's pure parts: the target index and what two polling snapshots mean."""

from __future__ import annotations

from agent.daemon.watch_poll import changed_targets, listed_dir, poll_paths
from agent.daemon.watch_targets import below, build_targets, child_toward, join_path, parent_of

AK = "/home/alice/.ssh/authorized_keys"
AK2 = "/home/alice/.ssh/authorized_keys2"
BOB_SSH = "/home/bob/.ssh"


def test_build_targets_normalizes_and_derives_the_needed_dirs() -> None:
    t = build_targets([AK, "/home//alice/.ssh/authorized_keys2", "/etc/ssh/sshd_config"], [BOB_SSH + "/"], [])
    assert list(t.files) == [AK, AK2, "/etc/ssh/sshd_config"]
    assert list(t.dir_targets) == [BOB_SSH]
    assert t.sorted_dirs == ["/etc/ssh", "/home/alice/.ssh", BOB_SSH]
    assert t.sorted_targets == sorted([AK, AK2, "/etc/ssh/sshd_config", BOB_SSH])


def test_build_targets_reuses_the_strings_of_dirs_already_held() -> None:
    held = "".join(["/home/alice/", ".ssh"])  # a fresh object, not an interned constant
    t = build_targets([AK], [], [held])
    assert t.sorted_dirs[0] is held


def test_targets_and_needed_dirs_at_or_below_a_name() -> None:
    t = build_targets([AK, AK2, "/home/alicia/.ssh/authorized_keys"], [BOB_SSH], [])
    assert t.targets_under("/home/alice") == {AK, AK2}  # not /home/alicia: a path prefix is no parent
    assert t.targets_under(BOB_SSH) == {BOB_SSH}
    assert t.targets_under(AK) == {AK}
    assert t.targets_under("/") == {AK, AK2, "/home/alicia/.ssh/authorized_keys", BOB_SSH}
    assert t.dirs_at_or_under("/home/alice") == ["/home/alice/.ssh"]
    assert t.dirs_at_or_under("/home/alice/.ssh") == ["/home/alice/.ssh"]
    assert t.dirs_at_or_under("/etc") == []
    assert t.is_needed(BOB_SSH) and not t.is_needed("/home/bob")
    assert t.count_by_dir() == {"/home/alice/.ssh": 2, "/home/alicia/.ssh": 1, BOB_SSH: 1}


def test_path_helpers() -> None:
    assert parent_of("/home/alice") == "/home" and parent_of("/home") == "/" and parent_of("/") == "/"
    assert join_path("/", "etc") == "/etc" and join_path("/etc", "ssh") == "/etc/ssh"
    assert child_toward("/home", "/home/alice/.ssh") == "/home/alice"
    assert child_toward("/", "/home/alice") == "/home"
    assert child_toward("/home", "/home/alice") == "/home/alice"
    assert list(below(["/a", "/a/b", "/a/b/c", "/ab", "/b"], "/a")) == ["/a/b", "/a/b/c"]


def test_poll_paths_cover_the_dir_its_parent_and_its_own_target_files() -> None:
    t = build_targets([AK, "/home/alice/.ssh/sub/keys"], [BOB_SSH], [])
    assert poll_paths(t, "/home/alice/.ssh") == [
        ("/home/alice/.ssh", True),
        ("/home/alice", True),
        (AK, False),
    ]
    assert listed_dir(t, BOB_SSH) == BOB_SSH
    assert listed_dir(t, "/home/alice/.ssh") is None


def test_changed_targets_of_two_snapshots() -> None:
    t = build_targets([AK, AK2], [], [])
    d = "/home/alice/.ssh"
    before = {d: (1,), "/home/alice": (2,), AK: (3,), AK2: (4,)}
    assert changed_targets(t, d, before, dict(before)) == set()
    assert changed_targets(t, d, before, {**before, AK: (5,)}) == {AK}
    assert changed_targets(t, d, before, {**before, AK2: None}) == {AK2}
    # The dir or its parent changed (chmod, replaced): every target below it may have.
    assert changed_targets(t, d, before, {**before, "/home/alice": (9,)}) == {AK, AK2}
    assert changed_targets(t, d, before, {**before, d: None}) == {AK, AK2}
