"""The Applier's normal paths on a fake root: idempotency, creation, ephemeral grants, sweep,
crash reconciliation, backups and rollback, events and managed_by attribution."""

from __future__ import annotations

import dataclasses
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent.instructions.apply import Applier, RollbackRefused
from tests.integration.apply_support import (
    POLICY,
    FakeHost,
    Signer,
    changed,
    make_applier,
    public_line,
    snapshot,
    write_ak,
)

REASON = "fake users with distinct uids need root (chown)"
pytestmark = [pytest.mark.root(reason=REASON), pytest.mark.skipif(os.geteuid() != 0, reason=REASON)]


def _rfc(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_add_creates_ssh_dir_and_file_owned_by_the_user(
    host: FakeHost, signer: Signer, applier: Applier
) -> None:
    (host.home("alice") / ".ssh").rmdir()
    new, new_fp = public_line("n")
    _, result = applier.handle(
        signer.token("rotation", {"rotation_id": "rot_a", "user": "alice", "action": "add", "new_key": new})
    )
    assert result["status"] == "applied"
    assert result["fingerprints_after"] == [new_fp]
    ssh, ak = host.home("alice") / ".ssh", host.ak("alice")
    assert (ssh.stat().st_mode & 0o777, ssh.stat().st_uid) == (0o700, host.uids["alice"])
    assert (ak.stat().st_mode & 0o777, ak.stat().st_uid) == (0o600, host.uids["alice"])
    assert ak.read_text() == new + "\n"
    assert host.managed == [(new_fp, "alice", "/home/alice/.ssh/authorized_keys", "rotation:rot_a", None)]
    event = host.events[-1]
    assert event["type"] == "instruction_applied"
    assert event["detail"]["managed_by"] == "rotation:rot_a" and event["detail"]["added"] == [new_fp]
    assert new.split()[1] not in repr(host.events)  # key material never in events


def test_already_applied_is_not_rewritten(host: FakeHost, signer: Signer, applier: Applier) -> None:
    new, _ = public_line("n")
    write_ak(host, "alice", f"{new}\n".encode(), mode=0o640)
    before = snapshot(host.root)
    body = {"rotation_id": "rot_b", "user": "alice", "action": "add", "new_key": new}
    _, result = applier.handle(signer.token("rotation", body))
    assert result["status"] == "applied"
    assert changed(before, snapshot(host.root)) == set()  # same inode, same mode: untouched


def test_existing_mode_and_owner_are_kept_when_strictmodes_accepts_them(
    host: FakeHost, signer: Signer, applier: Applier
) -> None:
    old, old_fp = public_line("o")
    write_ak(host, "alice", f"{old}\n".encode(), mode=0o640)
    os.chown(host.ak("alice"), 0, 0)
    new, _ = public_line("n")
    body = {
        "rotation_id": "rot_c",
        "user": "alice",
        "action": "replace",
        "old_fingerprint": old_fp,
        "new_key": new,
    }
    assert applier.handle(signer.token("rotation", body))[1]["status"] == "applied"
    st = host.ak("alice").stat()
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o640, 0, 0)


def test_group_writable_file_is_rewritten_user_owned_0600(
    host: FakeHost, signer: Signer, applier: Applier
) -> None:
    old, old_fp = public_line("o")
    write_ak(host, "alice", f"{old}\n".encode(), mode=0o664)
    body = {"rotation_id": "rot_d", "user": "alice", "action": "remove", "old_fingerprint": old_fp}
    assert applier.handle(signer.token("rotation", body))[1]["status"] == "applied"
    st = host.ak("alice").stat()
    assert (st.st_mode & 0o777, st.st_uid) == (0o600, host.uids["alice"])


def test_remove_acts_in_every_file(host: FakeHost, signer: Signer, applier: Applier) -> None:
    old, old_fp = public_line("o")
    keep, keep_fp = public_line("k")
    write_ak(host, "alice", f"{old}\n{keep}\n".encode())
    second = host.home("alice") / ".ssh" / "authorized_keys2"
    second.write_text(f"# two\n{old}\n")
    os.chown(second, host.uids["alice"], host.uids["alice"])
    body = {"rotation_id": "rot_e", "user": "alice", "action": "remove", "old_fingerprint": old_fp}
    _, result = applier.handle(signer.token("rotation", body))
    assert result["status"] == "applied"
    assert result["fingerprints_after"] == [keep_fp]
    assert second.read_text() == "# two\n"


def test_root_replacement_keeping_options_without_from_is_refused_by_policy(
    host: FakeHost, signer: Signer
) -> None:
    # require_from_for_root: a replacement that keeps the old line's options needs from= among them.
    applier = make_applier(host, signer, policy=dataclasses.replace(POLICY, require_from_for_root=True))
    ssh = host.root / "root" / ".ssh"
    ssh.mkdir(mode=0o700)
    old, old_fp = public_line("o")
    fenced, fenced_fp = public_line("f")
    (ssh / "authorized_keys").write_text(f'{old}\nfrom="10.0.0.0/8" {fenced}\n')
    os.chmod(ssh / "authorized_keys", 0o600)
    new, new_fp = public_line("n")
    body = {"rotation_id": "rot_r1", "user": "root", "action": "replace", "old_fingerprint": old_fp}
    body["new_key"] = new
    before = snapshot(host.root)
    _, result = applier.handle(signer.token("rotation", body))
    assert result["status"] == "rejected" and "from=" in result["error"]["message"]
    assert changed(before, snapshot(host.root)) == set()
    # The same replacement of the line that has from= keeps it, and is applied.
    body = {**body, "rotation_id": "rot_r2", "old_fingerprint": fenced_fp}
    _, result = applier.handle(signer.token("rotation", body))
    assert result["status"] == "applied" and result["fingerprints_after"] == [old_fp, new_fp]
    assert (ssh / "authorized_keys").read_text() == f'{old}\nfrom="10.0.0.0/8" {new}\n'


def test_replace_of_an_absent_key_fails(host: FakeHost, signer: Signer, applier: Applier) -> None:
    _, missing_fp = public_line()
    new, _ = public_line()
    body = {
        "rotation_id": "rot_f",
        "user": "alice",
        "action": "replace",
        "old_fingerprint": missing_fp,
        "new_key": new,
    }
    _, result = applier.handle(signer.token("rotation", body))
    assert (result["status"], result["error"]["code"]) == ("failed", "KEY_NOT_FOUND")
    assert host.events[-1]["type"] == "instruction_failed"


def test_ephemeral_grant_lifecycle(host: FakeHost, signer: Signer, applier: Applier) -> None:
    permanent, perm_fp = public_line("laptop")
    write_ak(host, "bob", f"{permanent}\n".encode())
    start = datetime.now(UTC).replace(microsecond=0)
    host.now = start
    expires = start + timedelta(minutes=5)
    # The same key as a permanent line: the grant adds its own line and its removal keeps the permanent one.
    body = {"grant_id": "eph_1", "user": "bob", "public_key": permanent, "expires_at": _rfc(expires)}
    _, result = applier.handle(signer.token("ephemeral", body))
    assert result["status"] == "applied"
    text = host.ak("bob").read_text()
    assert f'expiry-time="{expires.strftime("%Y%m%d%H%M%S")}Z"' in text and "sshklm-ephemeral:eph_1" in text
    assert host.managed[-1][3:] == ("ephemeral:eph_1", expires)
    jobs = {job[0]: job for job in applier.jobs()}
    assert jobs["ephemeral-sweep"][2] == 60
    assert jobs["ephemeral-expire:eph_1"][2:] == (None, expires)
    assert applier.sweep_ephemeral() == 0
    host.now = expires + timedelta(seconds=1)
    assert applier.sweep_ephemeral() == 1
    assert host.ak("bob").read_text() == f"{permanent}\n"
    assert applier.store.all_grants() == []
    assert host.events[-1]["detail"]["action"] == "ephemeral_expiry"
    assert perm_fp in host.events[-1]["detail"]["removed"]


def test_ephemeral_already_expired_and_revoke(host: FakeHost, signer: Signer, applier: Applier) -> None:
    key, _ = public_line()
    now = datetime.now(UTC)
    before = snapshot(host.root)
    past = {
        "grant_id": "eph_2",
        "user": "bob",
        "public_key": key,
        "expires_at": _rfc(now - timedelta(seconds=2)),
    }
    _, result = applier.handle(signer.token("ephemeral", past))
    assert result["status"] == "expired"
    assert changed(before, snapshot(host.root)) == set()
    live = {
        "grant_id": "eph_3",
        "user": "bob",
        "public_key": key,
        "expires_at": _rfc(now + timedelta(minutes=10)),
    }
    assert applier.handle(signer.token("ephemeral", live))[1]["status"] == "applied"
    assert "eph_3" in host.ak("bob").read_text()
    assert applier.handle(signer.token("revoke_ephemeral", {"grant_id": "eph_3"}))[1]["status"] == "applied"
    assert "eph_3" not in host.ak("bob").read_text()
    assert applier.handle(signer.token("revoke_ephemeral", {"grant_id": "eph_3"}))[1]["status"] == "applied"


def test_scan_instruction(host: FakeHost, signer: Signer, applier: Applier) -> None:
    assert applier.handle(signer.token("scan", {"scan_id": "scn_1"}))[1]["status"] == "applied"
    assert host.scans == ["scn_1"]


def test_rollback_restores_only_an_unchanged_file(host: FakeHost, signer: Signer, applier: Applier) -> None:
    old, old_fp = public_line("o")
    original = f"# mine\r\n{old}\r\n".encode()
    write_ak(host, "alice", original)
    new, _ = public_line("n")
    body = {
        "rotation_id": "rot_r",
        "user": "alice",
        "action": "replace",
        "old_fingerprint": old_fp,
        "new_key": new,
    }
    assert applier.handle(signer.token("rotation", body))[1]["status"] == "applied"
    backups = sorted((host.state / "backups").iterdir())
    assert all(p.stat().st_mode & 0o777 == 0o600 and p.stat().st_uid == 0 for p in backups)
    # Someone edits the file: rollback refuses and changes nothing.
    rotated = host.ak("alice").read_bytes()
    host.ak("alice").write_bytes(rotated + b"# edit\n")
    with pytest.raises(RollbackRefused, match="changed since"):
        applier.rollback("rot_r")
    host.ak("alice").write_bytes(rotated)
    assert applier.rollback("rot_r") == ["/home/alice/.ssh/authorized_keys"]
    assert host.ak("alice").read_bytes() == original
    with pytest.raises(RollbackRefused, match="no backups"):
        applier.rollback("rot_unknown")


def test_backups_are_pruned_per_file(host: FakeHost, signer: Signer, applier: Applier) -> None:
    for i in range(6):
        key, _ = public_line(f"k{i}")
        body = {"rotation_id": f"rot_{i}", "user": "alice", "action": "add", "new_key": key}
        assert applier.handle(signer.token("rotation", body))[1]["status"] == "applied"
    applier.sweep_ephemeral()  # pruning runs with the minute sweep
    assert len(list((host.state / "backups").glob("*.bak"))) == 3  # backups_per_file


def test_reconcile_after_a_crash(host: FakeHost, signer: Signer) -> None:
    old, old_fp = public_line("o")
    write_ak(host, "alice", f"{old}\n".encode())
    crashed: list[Any] = []

    class Crash(BaseException):
        pass

    applier = make_applier(host, signer)
    # Simulate "the process died after the rename, before recording the jti": the store's
    # completion step (jti + backups index + journal, one transaction) raises the first time.
    original = applier.store.complete_apply

    def dying(*args: Any, **kw: Any) -> None:
        if not crashed:
            crashed.append(True)
            raise Crash()
        original(*args, **kw)

    applier.store.complete_apply = dying  # type: ignore[method-assign]
    new, new_fp = public_line("n")
    body = {
        "rotation_id": "rot_x",
        "user": "alice",
        "action": "replace",
        "old_fingerprint": old_fp,
        "new_key": new,
    }
    token = signer.token("rotation", body)
    with pytest.raises(Crash):
        applier._handle(token)  # the public handle() would turn it into a result; a crash would not
    assert len(applier.store.unfinished_applies()) == 1
    restarted = make_applier(host, signer)
    reconciled = restarted.reconcile()
    assert len(reconciled) == 1
    jti, result = reconciled[0]
    assert result["status"] == "applied" and new_fp in result["fingerprints_after"]
    assert restarted.store.unfinished_applies() == []
    # The server re-sends it: answered applied, file untouched.
    before = snapshot(host.root)
    again_jti, again = restarted.handle(token)
    assert (again_jti, again["status"], again["fingerprints_after"]) == (
        jti,
        "applied",
        result["fingerprints_after"],
    )
    assert changed(before, snapshot(host.root)) == set()
