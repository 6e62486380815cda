"""Ephemeral grants over in-memory host files: the line and its tag, scheduling of the removal,
expiry, revocation, the sweep (at `schedule.ephemeral_sweep_s`) and failed removals (no root)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from tests.integration.apply_support import public_line
from tests.unit.applier_fakes import ALICE, World, make_world

AK = "/home/alice/.ssh/authorized_keys"


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path / "state", sweep_s=7.5)


def _rfc(world: World, seconds: int) -> str:
    return (world.clock.now + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_grant_lifecycle(world: World) -> None:
    permanent, perm_fp = public_line("laptop")
    world.files.put(AK, f"{permanent}\n".encode(), uid=ALICE.uid, gid=ALICE.gid)
    body = {"grant_id": "eph_1", "user": "alice", "public_key": permanent, "expires_at": _rfc(world, 300)}
    result = world.apply("ephemeral", body)
    assert result["status"] == "applied"
    expires = world.clock.now + timedelta(seconds=300)
    key_text = " ".join(permanent.split()[:2])
    grant_line = f'expiry-time="20260301120500Z" {key_text} sshklm-ephemeral:eph_1'
    assert world.files.text(AK) == f"{permanent}\n{grant_line}\n"
    assert world.hooks.managed[-1] == (perm_fp, "alice", AK, "ephemeral:eph_1", expires)
    event = world.hooks.events[-1].to_json()
    assert event["detail"]["managed_by"] == "ephemeral:eph_1"
    assert event["detail"]["expires_at"] == "2026-03-01T12:05:00Z"
    # The removal is scheduled at expiry, and the jobs a restart schedules say the same.
    job, when = world.hooks.scheduled["ephemeral-expire:eph_1"]
    assert when == expires
    jobs = {j[0]: j for j in world.applier.jobs()}
    assert jobs["ephemeral-sweep"][2:] == (7.5, None)  # schedule.ephemeral_sweep_s
    assert jobs["ephemeral-expire:eph_1"][2:] == (None, expires)
    # Too early: nothing happens.
    job()
    assert world.applier.sweep_ephemeral() == 0
    assert "eph_1" in (world.files.text(AK) or "")
    # At expiry: only the grant's own line goes; the permanent line of the same key stays.
    world.clock.advance(300)
    job()
    assert world.files.text(AK) == f"{permanent}\n"
    assert world.store.all_grants() == []
    expiry = world.hooks.events[-1].to_json()
    assert (expiry["type"], expiry["path"], expiry["fingerprint"]) == ("instruction_applied", AK, perm_fp)
    assert expiry["detail"]["action"] == "ephemeral_expiry" and expiry["detail"]["removed"] == [perm_fp]
    assert world.applier.sweep_ephemeral() == 0  # already gone


def test_a_failed_removal_is_retried_by_the_sweep(world: World) -> None:
    key, fp = public_line()
    body = {"grant_id": "eph_2", "user": "alice", "public_key": key, "expires_at": _rfc(world, 60)}
    assert world.apply("ephemeral", body)["status"] == "applied"
    world.clock.advance(61)
    world.files.unsafe["/home/alice/.ssh"] = "directory /home/alice/.ssh is group- or other-writable"
    assert world.applier.sweep_ephemeral() == 0
    failed = world.hooks.events[-1].to_json()
    assert failed["type"] == "instruction_failed"
    assert failed["detail"]["action"] == "ephemeral_expiry" and failed["detail"]["code"] == "UNSAFE_PATH"
    assert [g.grant_id for g in world.store.all_grants()] == ["eph_2"]  # kept for the next sweep
    del world.files.unsafe["/home/alice/.ssh"]
    assert world.applier.sweep_ephemeral() == 1
    assert fp not in (world.files.text(AK) or "") and world.store.all_grants() == []


def test_a_grant_expired_on_arrival_changes_nothing(world: World) -> None:
    key, _ = public_line()
    body = {"grant_id": "eph_3", "user": "alice", "public_key": key, "expires_at": _rfc(world, -2)}
    result = world.apply("ephemeral", body)
    assert (result["status"], result["error"]["code"]) == ("expired", "EXPIRED")  # type: ignore[index]
    assert world.files.writes == [] and world.store.all_grants() == []


def test_revoke_removes_the_line_and_is_idempotent(world: World) -> None:
    key, _ = public_line()
    body = {"grant_id": "eph_4", "user": "alice", "public_key": key, "expires_at": _rfc(world, 600)}
    assert world.apply("ephemeral", body)["status"] == "applied"
    assert world.apply("revoke_ephemeral", {"grant_id": "eph_4"})["status"] == "applied"
    assert "eph_4" not in (world.files.text(AK) or "") and world.store.all_grants() == []
    writes = list(world.files.writes)
    assert world.apply("revoke_ephemeral", {"grant_id": "eph_4"})["status"] == "applied"
    assert world.files.writes == writes


def test_a_grant_of_a_deleted_account_is_forgotten(world: World) -> None:
    key, _ = public_line()
    body = {"grant_id": "eph_5", "user": "alice", "public_key": key, "expires_at": _rfc(world, 60)}
    assert world.apply("ephemeral", body)["status"] == "applied"
    world.applier.units.users.by_name.pop("alice")  # type: ignore[attr-defined]
    world.clock.advance(61)
    writes = list(world.files.writes)
    assert world.applier.sweep_ephemeral() == 1
    assert world.store.all_grants() == [] and world.files.writes == writes


def test_a_rotation_add_is_not_satisfied_by_an_ephemeral_line(world: World) -> None:
    key, fp = public_line()
    body = {"grant_id": "eph_6", "user": "alice", "public_key": key, "expires_at": _rfc(world, 60)}
    assert world.apply("ephemeral", body)["status"] == "applied"
    add = {"rotation_id": "rot_6", "user": "alice", "action": "add", "new_key": key}
    assert world.apply("rotation", add)["status"] == "applied"
    world.clock.advance(61)
    assert world.applier.sweep_ephemeral() == 1
    assert world.files.text(AK) == key + "\n"
    assert world.applier.jobs()[0][:1] == ("ephemeral-sweep",) and fp
