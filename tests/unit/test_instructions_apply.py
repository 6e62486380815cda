"""The Applier's logic over in-memory host files (tests/unit/applier_fakes.py), without root:
the pipeline, planning and idempotency, ownership, the edit transaction (all files planned before
any write, re-planning on a concurrent change, cleanup on failure), results and events.
The same behaviour on a real filesystem: tests/integration/test_apply*.py (root)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from agent.host.safefs import FileInfo
from agent.instructions.edit import keep_or_default_ownership
from agent.inventory.evaluate import Policy
from tests.integration.apply_support import POLICY, public_line
from tests.unit.applier_fakes import ALICE, ROOT, World, make_world

AK = "/home/alice/.ssh/authorized_keys"
AK2 = "/home/alice/.ssh/authorized_keys2"


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path / "state")


def put(world: World, path: str, text: str, *, uid: int = ALICE.uid, mode: int = 0o600) -> None:
    world.files.put(path, text.encode(), uid=uid, gid=uid, mode=mode)


def rotation(action: str, **fields: object) -> dict[str, object]:
    return {"rotation_id": "rot_1", "user": "alice", "action": action, **fields}


# -- the pipeline -------------------------------------------------------------------------------


def test_add_creates_ssh_dir_and_file_owned_by_the_user(world: World) -> None:
    del world.files.dirs["/home/alice/.ssh"]
    new, new_fp = public_line("n")
    result = world.apply("rotation", rotation("add", new_key=new))
    assert (result["status"], result["error"], result["fingerprints_after"]) == ("applied", None, [new_fp])
    assert result["at"] == "2026-03-01T12:00:00Z"
    assert world.files.created_dirs == ["/home/alice/.ssh"]
    assert world.files.dirs["/home/alice/.ssh"] == (ALICE.uid, ALICE.gid, 0o700)
    f = world.files.files[AK]
    assert (f.data, f.uid, f.gid, f.mode) == ((new + "\n").encode(), ALICE.uid, ALICE.gid, 0o600)
    assert world.hooks.managed == [(new_fp, "alice", AK, "rotation:rot_1", None)]
    assert world.files.all_closed()


def test_applied_event_has_the_wire_shape(world: World) -> None:
    new, new_fp = public_line("n")
    world.apply("rotation", rotation("add", new_key=new), jti="ins_event1")
    (event,) = world.hooks.events
    wire = event.to_json()
    assert set(wire) == {"id", "seq", "at", "type", "user", "path", "fingerprint", "key", "detail"}
    assert (wire["type"], wire["user"], wire["path"], wire["fingerprint"], wire["key"]) == (
        "instruction_applied",
        "alice",
        AK,
        new_fp,
        None,
    )
    assert wire["at"] == "2026-03-01T12:00:00Z" and wire["seq"] == 0  # the outbox assigns seq
    assert wire["detail"] == {
        "jti": "ins_event1",
        "kind": "rotation",
        "added": [new_fp],
        "removed": [],
        "changed_files": [AK],
        "rotation_id": "rot_1",
        "action": "add",
        "managed_by": "rotation:rot_1",
    }
    assert new.split()[1] not in repr(wire)  # key material never in events


def test_already_applied_writes_nothing(world: World) -> None:
    new, new_fp = public_line("n")
    put(world, AK, f"{new}\n")
    result = world.apply("rotation", rotation("add", new_key=new))
    assert (result["status"], result["fingerprints_after"]) == ("applied", [new_fp])
    assert world.files.writes == [] and world.files.backups == {}
    assert world.store.unfinished_applies() == []
    assert world.hooks.events[-1].detail["changed_files"] == []


def test_a_rejected_token_opens_nothing(world: World) -> None:
    put(world, AK, "# keys\n")
    new, _ = public_line("n")
    forged = world.token("rotation", rotation("add", new_key=new), aud="hst_other")
    _, result = world.applier.handle(forged)
    assert result["status"] == "rejected"
    assert world.files.opened == [] and world.files.reads == [] and world.files.writes == []
    (event,) = world.hooks.events
    assert event.type == "instruction_failed" and event.detail["code"] == "AUTH_INVALID"


def test_an_invalid_body_opens_nothing_and_burns_the_jti(world: World) -> None:
    token = world.token("rotation", rotation("add", new_key="ssh-ed25519 AAAA\nssh-rsa x"))
    assert world.applier.handle(token)[1]["status"] == "rejected"
    assert world.files.opened == [] and world.files.reads == []
    again = world.applier.handle(token)[1]
    assert again["error"] == {"code": "REPLAYED", "message": "replayed jti"}


def test_a_replayed_applied_jti_is_answered_without_writing(world: World) -> None:
    old, old_fp = public_line("o")
    put(world, AK, f"{old}\n")
    new, new_fp = public_line("n")
    token = world.token("rotation", rotation("replace", old_fingerprint=old_fp, new_key=new))
    first = world.applier.handle(token)[1]
    writes = list(world.files.writes)
    second = world.applier.handle(token)[1]
    assert (first["status"], second["status"]) == ("applied", "applied")
    assert second["fingerprints_after"] == first["fingerprints_after"] == [new_fp]
    assert world.files.writes == writes


def test_replace_in_every_file_that_holds_the_old_key(world: World) -> None:
    old, old_fp = public_line("o")
    keep, keep_fp = public_line("k")
    new, new_fp = public_line("n")
    put(world, AK, f"# first\n{old}\n{keep}\n")
    put(world, AK2, f"{old}\r\n# two\r\n")
    result = world.apply("rotation", rotation("replace", old_fingerprint=old_fp, new_key=new))
    assert result["status"] == "applied"
    assert world.files.text(AK) == f"# first\n{new}\n{keep}\n"
    assert world.files.text(AK2) == f"{new}\r\n# two\r\n"
    assert result["fingerprints_after"] == [new_fp, keep_fp]
    assert sorted(world.files.writes) == [AK, AK2]


def test_replace_of_an_absent_key_fails_and_writes_nothing(world: World) -> None:
    put(world, AK, "# nothing here\n")
    _, missing = public_line()
    new, _ = public_line()
    result = world.apply("rotation", rotation("replace", old_fingerprint=missing, new_key=new))
    assert (result["status"], result["error"]["code"]) == ("failed", "KEY_NOT_FOUND")  # type: ignore[index]
    assert world.files.writes == []
    assert world.hooks.events[-1].type == "instruction_failed"


def test_remove_does_not_create_missing_files(world: World) -> None:
    old, old_fp = public_line("o")
    put(world, AK2, f"{old}\n")
    result = world.apply("rotation", rotation("remove", old_fingerprint=old_fp))
    assert result["status"] == "applied" and world.files.text(AK2) == ""
    assert AK not in world.files.files and world.files.writes == [AK2]


# -- ownership ------------------------------------------------------------------------------------


def _info(uid: int, mode: int) -> FileInfo:
    return FileInfo("/x", uid, uid, stat.S_IFREG | mode, 0, 0.0, 1, 1, 1, None)


@pytest.mark.parametrize(
    ("uid", "mode", "expected"),
    [
        (0, 0o640, (0, 0, 0o640)),  # root-owned, StrictModes-clean: kept
        (ALICE.uid, 0o644, (ALICE.uid, ALICE.uid, 0o644)),
        (ALICE.uid, 0o4644, (ALICE.uid, ALICE.uid, 0o644)),  # set-id bits dropped
        (ALICE.uid, 0o664, (ALICE.uid, ALICE.gid, 0o600)),  # group-writable: reset
        (4242, 0o600, (ALICE.uid, ALICE.gid, 0o600)),  # someone else's: reset
    ],
)
def test_keep_or_default_ownership(uid: int, mode: int, expected: tuple[int, int, int]) -> None:
    assert keep_or_default_ownership(_info(uid, mode), ALICE) == expected
    assert keep_or_default_ownership(None, ALICE) == (ALICE.uid, ALICE.gid, 0o600)


def test_a_group_writable_file_is_rewritten_user_owned_0600(world: World) -> None:
    old, old_fp = public_line("o")
    put(world, AK, f"{old}\n", uid=0, mode=0o664)
    assert world.apply("rotation", rotation("remove", old_fingerprint=old_fp))["status"] == "applied"
    f = world.files.files[AK]
    assert (f.uid, f.gid, f.mode) == (ALICE.uid, ALICE.gid, 0o600)


# -- the edit transaction -----------------------------------------------------------------------------


def test_an_unsafe_file_fails_the_edit_before_any_write(world: World) -> None:
    old, old_fp = public_line("o")
    new, _ = public_line("n")
    put(world, AK, f"{old}\n")
    put(world, AK2, f"{old}\n")
    world.files.unsafe[AK2] = "has 2 hard links"
    result = world.apply("rotation", rotation("replace", old_fingerprint=old_fp, new_key=new))
    assert result["status"] == "failed"
    assert result["error"] == {"code": "UNSAFE_PATH", "message": f"{AK2}: has 2 hard links"}
    assert world.files.writes == [] and world.files.backups == {}
    assert world.store.unfinished_applies() == []
    assert world.files.all_closed()


def test_a_concurrent_change_is_planned_again_and_kept(world: World) -> None:
    old, old_fp = public_line("o")
    new, _ = public_line("n")
    other, _ = public_line("added meanwhile")
    put(world, AK, f"{old}\n")

    def meanwhile() -> None:  # the user appends a key between our read and our write
        put(world, AK, f"{old}\n{other}\n")

    world.files.before_write[AK] = meanwhile
    result = world.apply("rotation", rotation("replace", old_fingerprint=old_fp, new_key=new))
    assert result["status"] == "applied"
    assert world.files.text(AK) == f"{new}\n{other}\n"
    assert len(world.files.backups) == 1  # the first attempt's backup was dropped
    assert world.store.unfinished_applies() == []


def test_a_file_that_keeps_changing_is_a_conflict_and_nothing_is_written(world: World) -> None:
    old, old_fp = public_line("o")
    new, _ = public_line("n")
    put(world, AK, f"{old}\n")
    edits = 0

    def meanwhile() -> None:
        nonlocal edits
        edits += 1
        put(world, AK, f"{old}\n# edit {edits}\n")
        world.files.before_write[AK] = meanwhile

    world.files.before_write[AK] = meanwhile
    token = world.token("rotation", rotation("replace", old_fingerprint=old_fp, new_key=new))
    _, result = world.applier.handle(token)
    assert result["error"] == {"code": "CONFLICT", "message": "the file kept changing while being updated"}
    assert edits == 3  # three attempts
    assert world.files.writes == [] and world.files.backups == {}
    assert world.store.unfinished_applies() == []
    assert world.applier.handle(token)[1]["error"]["code"] == "REPLAYED"  # type: ignore[index]


def test_too_large_a_file_is_not_rewritten(world: World) -> None:
    new, _ = public_line("n")
    put(world, AK, "# more than the byte cap\n")
    world.files.too_large.add(AK)
    result = world.apply("rotation", rotation("add", new_key=new))
    assert result["error"] == {"code": "UNSAFE_PATH", "message": f"{AK}: file too large to rewrite safely"}
    assert world.files.writes == [] and world.files.all_closed()


# -- policy, scans, reporting ------------------------------------------------------------------------


def test_root_replacement_keeping_options_without_from_is_refused(tmp_path: Path) -> None:
    strict = Policy(**{**POLICY.__dict__, "require_from_for_root": True})
    world = make_world(tmp_path / "state", policy=strict)
    ak = "/root/.ssh/authorized_keys"
    old, old_fp = public_line("o")
    fenced, fenced_fp = public_line("f")
    world.files.put(ak, f'{old}\nfrom="10.0.0.0/8" {fenced}\n'.encode(), uid=0, gid=0)
    new, new_fp = public_line("n")
    body = {"rotation_id": "rot_r1", "user": "root", "action": "replace", "new_key": new}
    result = world.apply("rotation", {**body, "old_fingerprint": old_fp})
    assert result["status"] == "rejected" and "from=" in result["error"]["message"]  # type: ignore[index]
    assert world.files.writes == []
    result = world.apply("rotation", {**body, "rotation_id": "rot_r2", "old_fingerprint": fenced_fp})
    assert result["status"] == "applied" and result["fingerprints_after"] == [old_fp, new_fp]
    assert world.files.text(ak) == f'{old}\nfrom="10.0.0.0/8" {new}\n'
    # An added key for root needs from= of its own.
    extra, _ = public_line("e")
    result = world.apply("rotation", {**body, "rotation_id": "rot_r3", "action": "add", "new_key": extra})
    assert result["status"] == "rejected"
    assert ROOT.uid == 0


def test_scan_instruction_and_a_failing_scan(world: World) -> None:
    assert world.apply("scan", {"scan_id": "scn_1"})["status"] == "applied"
    assert world.hooks.scans == ["scn_1"]
    world.hooks.fail_scan = True
    result = world.apply("scan", {"scan_id": "scn_2"})
    assert result["error"] == {"code": "SCAN_FAILED", "message": "scan failed (RuntimeError)"}


def test_events_that_cannot_be_queued_do_not_undo_the_apply(world: World) -> None:
    world.hooks.fail_emit = True
    new, _ = public_line("n")
    assert world.apply("rotation", rotation("add", new_key=new))["status"] == "applied"
    assert world.files.text(AK) == new + "\n"


def test_a_host_without_host_id_rejects(world: World) -> None:
    world.hooks.host_id = lambda: None  # type: ignore[method-assign]
    new, _ = public_line("n")
    result = world.apply("rotation", rotation("add", new_key=new))
    assert result["error"] == {"code": "AUTH_INVALID", "message": "this host has no host id yet"}
    assert world.files.opened == []
