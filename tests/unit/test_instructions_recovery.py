"""The journal and crash recovery over in-memory host files: a crash at each point of an apply,
then `reconcile()` in a restarted applier decides from the files what happened (no root needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.apply_support import public_line
from tests.unit.applier_fakes import ALICE, World, make_world

AK = "/home/alice/.ssh/authorized_keys"
AK2 = "/home/alice/.ssh/authorized_keys2"


class Crash(BaseException):
    """The process dies here (not an Exception: nothing may handle it)."""


def crash() -> None:
    raise Crash()


def die_before_writing(world: World, path: str) -> None:
    """The process dies just before `path` is written (kill -9): nothing after that point runs,
    not even the edit's clean-up of its journal entry (which then dies too)."""

    def dead(*args: Any, **kw: Any) -> None:
        raise Crash()

    world.files.before_write[path] = crash
    world.store.finish_apply = dead  # type: ignore[method-assign]


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path / "state")


def _replace_both(world: World) -> tuple[str, str, str]:
    """alice's old key in both files; returns (token, old fingerprint, new fingerprint)."""
    old, old_fp = public_line("o")
    world.files.put(AK, f"{old}\n".encode(), uid=ALICE.uid, gid=ALICE.gid)
    world.files.put(AK2, f"# two\n{old}\n".encode(), uid=ALICE.uid, gid=ALICE.gid)
    new, new_fp = public_line("n")
    body = {"rotation_id": "rot_x", "user": "alice", "action": "replace", "old_fingerprint": old_fp}
    return world.token("rotation", {**body, "new_key": new}, jti="ins_crash1"), old_fp, new_fp


def test_crash_after_the_writes_before_completion_is_reconciled_applied(world: World) -> None:
    token, old_fp, new_fp = _replace_both(world)

    def dying(*args: Any, **kw: Any) -> None:
        raise Crash()

    world.store.complete_apply = dying  # type: ignore[method-assign]
    with pytest.raises(Crash):
        world.applier.handle(token)
    assert [p.jti for p in world.store.unfinished_applies()] == ["ins_crash1"]
    assert world.store.jti_seen("ins_crash1") is None

    restarted = world.restart()
    [(jti, result)] = restarted.applier.reconcile()
    assert (jti, result["status"], result["error"]) == ("ins_crash1", "applied", None)
    assert new_fp in result["fingerprints_after"] and old_fp not in result["fingerprints_after"]
    assert restarted.store.unfinished_applies() == []
    assert restarted.store.jti_seen("ins_crash1") == "applied"
    assert {b.path for b in restarted.store.backups_for("rot_x")} == {AK, AK2}  # re-indexed
    # The server re-sends it: answered applied, nothing written.
    writes = list(restarted.files.writes)
    assert restarted.applier.handle(token)[1]["status"] == "applied"
    assert restarted.files.writes == writes
    assert restarted.applier.rollback("rot_x") == [AK, AK2]  # the backups serve a rollback


def test_crash_before_the_first_write_is_reconciled_not_applied(world: World) -> None:
    token, old_fp, _ = _replace_both(world)
    before = (world.files.text(AK), world.files.text(AK2))
    die_before_writing(world, AK)
    with pytest.raises(Crash):
        world.applier.handle(token)
    assert world.files.writes == []
    [(_, result)] = world.restart().applier.reconcile()
    assert result["status"] == "failed"
    assert result["error"] == {
        "code": "INTERRUPTED",
        "message": "interrupted before the file was written; not applied",
    }
    assert old_fp in result["fingerprints_after"]
    assert (world.files.text(AK), world.files.text(AK2)) == before
    assert world.store.jti_seen("ins_crash1") == "failed"


def test_crash_between_two_files_is_reconciled_as_interrupted(world: World) -> None:
    token, _, _ = _replace_both(world)
    world.files.before_write[AK2] = crash
    with pytest.raises(Crash):
        world.applier.handle(token)
    assert world.files.writes == [AK]
    [(_, result)] = world.restart().applier.reconcile()
    assert result["error"] == {
        "code": "INTERRUPTED",
        "message": "interrupted apply; the file differs from what it wrote",
    }


def test_a_file_changed_after_the_crash_is_not_claimed(world: World) -> None:
    token, _, _ = _replace_both(world)
    world.files.before_write[AK2] = crash
    with pytest.raises(Crash):
        world.applier.handle(token)
    world.files.put(AK, b"# the admin rewrote it\n", uid=ALICE.uid, gid=ALICE.gid)
    world.files.put(AK2, b"# and this one\n", uid=ALICE.uid, gid=ALICE.gid)
    [(_, result)] = world.restart().applier.reconcile()
    assert result["status"] == "failed" and result["error"]["code"] == "INTERRUPTED"
    assert world.store.backups_for("rot_x") == []


def test_crash_after_an_ephemeral_line_was_written_remembers_the_grant(world: World) -> None:
    key, _ = public_line()
    expires = world.clock.now.replace(minute=5)
    body = {"grant_id": "eph_c", "user": "alice", "public_key": key, "expires_at": "2026-03-01T12:05:00Z"}

    def dying(*args: Any, **kw: Any) -> None:
        raise Crash()

    world.store.complete_apply = dying  # type: ignore[method-assign]
    with pytest.raises(Crash):
        world.applier.handle(world.token("ephemeral", body, jti="ins_eph_c"))
    world.store.remove_grant("eph_c")  # the crash came before the grant was stored
    restarted = world.restart()
    [(_, result)] = restarted.applier.reconcile()
    assert result["status"] == "applied"
    [grant] = restarted.store.all_grants()
    assert (grant.grant_id, grant.user, grant.path, grant.expires_at, grant.jti) == (
        "eph_c",
        "alice",
        AK,
        expires,
        "ins_eph_c",
    )
    restarted.clock.advance(301)
    assert restarted.applier.sweep_ephemeral() == 1
    assert "eph_c" not in (restarted.files.text(AK) or "")


def test_an_interrupted_expiry_is_left_to_the_next_sweep(world: World) -> None:
    key, _ = public_line()
    body = {"grant_id": "eph_s", "user": "alice", "public_key": key, "expires_at": "2026-03-01T12:01:00Z"}
    assert world.apply("ephemeral", body)["status"] == "applied"
    world.clock.advance(120)
    die_before_writing(world, AK)
    with pytest.raises(Crash):
        world.applier.sweep_ephemeral()
    assert [p.jti for p in world.store.unfinished_applies()] == ["sweep:eph_s"]
    restarted = world.restart()
    assert restarted.applier.reconcile() == []  # not reported: no instruction behind it
    assert restarted.store.unfinished_applies() == []
    assert restarted.applier.sweep_ephemeral() == 1
    assert "eph_s" not in (restarted.files.text(AK) or "")


def test_reconcile_of_a_user_gone_since(world: World) -> None:
    token, _, _ = _replace_both(world)
    die_before_writing(world, AK)
    with pytest.raises(Crash):
        world.applier.handle(token)
    restarted = world.restart()
    restarted.applier.units.users.by_name.pop("alice")  # type: ignore[attr-defined]
    [(_, result)] = restarted.applier.reconcile()
    assert result["error"] == {"code": "NOT_FOUND", "message": "user gone after an interrupted apply"}
