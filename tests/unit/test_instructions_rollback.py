"""Backups and rollback decisions over in-memory host files (no root): what a backup holds,
pruning, and a rollback that restores all files or none."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.instructions.backups import backup_name, decode_backup, encode_backup
from agent.instructions.errors import RollbackRefused
from tests.integration.apply_support import public_line
from tests.unit.applier_fakes import ALICE, World, make_world

AK = "/home/alice/.ssh/authorized_keys"
AK2 = "/home/alice/.ssh/authorized_keys2"


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path / "state")


def test_backup_format_round_trips() -> None:
    raw = encode_backup(AK, "alice", b"# keys\r\nssh-ed25519 AAAA x")
    assert (
        raw.split(b"\n", 1)[0] == b'{"path":"/home/alice/.ssh/authorized_keys","user":"alice","existed":true}'
    )
    assert decode_backup("b", raw) == (
        b"# keys\r\nssh-ed25519 AAAA x",
        {"path": AK, "user": "alice", "existed": True},
    )
    assert decode_backup("b", encode_backup(AK, "alice", None))[1]["existed"] is False
    with pytest.raises(RollbackRefused, match="unreadable"):
        decode_backup("b", b"not json\n")
    name = backup_name(datetime(2026, 1, 1, tzinfo=UTC), AK, "0a0b0c0d")
    assert name.startswith("1767225600-") and name.endswith("-0a0b0c0d.bak")


def _rotate_both(world: World) -> tuple[bytes, bytes]:
    old, old_fp = public_line("o")
    first, second = f"# mine\r\n{old}\r\n".encode(), f"{old}\n".encode()
    world.files.put(AK, first, uid=0, gid=0, mode=0o640)
    world.files.put(AK2, second, uid=ALICE.uid, gid=ALICE.gid)
    new, _ = public_line("n")
    body = {"rotation_id": "rot_r", "user": "alice", "action": "replace", "old_fingerprint": old_fp}
    assert world.apply("rotation", {**body, "new_key": new})["status"] == "applied"
    return first, second


def test_rollback_restores_every_file(world: World) -> None:
    first, second = _rotate_both(world)
    assert world.applier.rollback("rot_r") == [AK, AK2]
    assert (world.files.files[AK].data, world.files.files[AK2].data) == (first, second)
    f = world.files.files[AK]
    assert (f.uid, f.mode) == (0, 0o640)  # owner and mode kept (StrictModes-clean)


def test_rollback_restores_nothing_when_one_file_changed(world: World) -> None:
    _rotate_both(world)
    rotated = world.files.files[AK].data
    world.files.put(AK2, b"# edited since\n", uid=ALICE.uid, gid=ALICE.gid)
    writes = list(world.files.writes)
    with pytest.raises(RollbackRefused, match=f"{AK2}: changed since rotation rot_r"):
        world.applier.rollback("rot_r")
    assert world.files.writes == writes and world.files.files[AK].data == rotated
    assert world.files.all_closed()


def test_rollback_removes_a_file_the_rotation_created(world: World) -> None:
    new, _ = public_line("n")
    body = {"rotation_id": "rot_c", "user": "alice", "action": "add", "new_key": new}
    assert world.apply("rotation", body)["status"] == "applied"
    assert AK in world.files.files
    assert world.applier.rollback("rot_c") == [AK]
    assert AK not in world.files.files


def test_rollback_refusals(world: World) -> None:
    with pytest.raises(RollbackRefused, match="no backups recorded for rot_unknown"):
        world.applier.rollback("rot_unknown")
    _rotate_both(world)
    [backup, _] = world.store.backups_for("rot_r")
    meta, data = world.files.backups[backup.backup_file].split(b"\n", 1)
    world.files.backups[backup.backup_file] = meta.replace(b"/home/alice", b"/home/bob") + b"\n" + data
    with pytest.raises(RollbackRefused, match="backup metadata does not match"):
        world.applier.rollback("rot_r")


def test_backups_are_pruned_per_file_by_the_sweep(world: World) -> None:
    for i in range(5):
        key, _ = public_line(f"k{i}")
        body = {"rotation_id": f"rot_{i}", "user": "alice", "action": "add", "new_key": key}
        assert world.apply("rotation", body)["status"] == "applied"
    assert len(world.files.backups) == 5
    world.applier.sweep_ephemeral()
    assert len(world.files.backups) == 3  # backups_per_file
    assert sorted(b.rotation_id for b in world.store.backups_for("rot_4")) == ["rot_4"]
    assert world.store.backups_for("rot_0") == []
