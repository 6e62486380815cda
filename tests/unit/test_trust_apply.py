"""Revocation and CA trust over in-memory ports (tests/unit/trust_fakes.py), without root: what is
written and in which order, idempotency, and every failure mode docs/rotation.md lists (ssh-keygen
missing or failing, a listing that does not match, disk full, the state store failing, sshd not
using the files, sshd_config changed, a KRL corrupted / removed / re-permissioned by hand, a crash
between the record and the file). The same behaviour against a real sshd:
tests/integration/test_e2e_trust.py."""

from __future__ import annotations

import errno
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from agent.host.trust_files import REVOKED_KEYS, TRUSTED_USER_CA_KEYS
from agent.instructions.errors import ApplyFailed
from agent.instructions.validate_trust import TrustBody, validate_trust
from agent.instructions.verify import Instruction
from agent.ssh.keys import parse_public_key_text
from agent.ssh.krl import KRL_MAGIC
from agent.store.trust_state import RevocationState
from tests.fakeroot import ed25519_line
from tests.unit.trust_fakes import TrustWorld, disk_full, make_trust_world

KEY = ed25519_line("compromised")
FP = parse_public_key_text(KEY)[0].fingerprint
OTHER_FP = parse_public_key_text(ed25519_line("other"))[0].fingerprint
CA = ed25519_line("ca")
CA_FP = parse_public_key_text(CA)[0].fingerprint
CA2 = ed25519_line("ca2")


@pytest.fixture
def w(tmp_path: Path) -> TrustWorld:
    return make_trust_world(tmp_path / "state")


def body(kind: str, data: dict[str, Any], users: tuple[str, ...] = ("alice", "bob")) -> TrustBody:
    ins = Instruction("ins_1", "hst_1", 0, 2**31, kind, data, None, True)
    return validate_trust(ins, user_exists=lambda u: u in users, policy=None)


def revoke(**lists: Any) -> TrustBody:
    return body("revoke_keys", {"revocation_id": "rvk_1", **lists})


def unrevoke(**lists: Any) -> TrustBody:
    return body("unrevoke_keys", {"revocation_id": "rvk_1", **lists})


def listed(w: TrustWorld) -> list[dict[str, Any]]:
    """The entries of the live (fake) KRL."""
    data = w.files.files[REVOKED_KEYS].data
    assert data.startswith(KRL_MAGIC)
    return list(json.loads(data[len(KRL_MAGIC) :])["entries"])


def failure(fn: Any, *args: Any) -> ApplyFailed:
    with pytest.raises(ApplyFailed) as caught:
        fn(*args)
    return caught.value


# -- revocation -----------------------------------------------------------------------------------


def test_start_creates_a_valid_empty_krl(w: TrustWorld) -> None:
    w.trust.start()
    assert w.files.ensured >= 1
    assert listed(w) == []
    assert w.state.revocations() == RevocationState(frozenset(), 0, 0, w.state.revocations().installed_sha256)


def test_revoke_installs_the_entry_and_records_it(w: TrustWorld) -> None:
    w.trust.start()
    outcome = w.trust.apply(revoke(fingerprints=[FP]))
    assert listed(w) == [{"kind": "hash", "value": FP}]
    assert outcome.written == ["/etc/ssh/sshklm-agent/revoked_keys"]
    assert (outcome.fingerprints_after, outcome.added) == ([FP], [FP])
    record = w.state.revocations()
    assert (record.generation, record.installed_generation, record.pending) == (1, 1, False)


def test_the_same_effect_again_rewrites_nothing(w: TrustWorld) -> None:
    w.trust.apply(revoke(fingerprints=[FP]))
    builds, writes = w.keygen.builds, list(w.files.writes)
    outcome = w.trust.apply(revoke(keys=[KEY]))  # the same key, named by its full text: a new entry
    assert w.keygen.builds == builds + 1
    outcome = w.trust.apply(revoke(keys=[KEY], fingerprints=[FP]))
    assert (w.keygen.builds, outcome.written) == (builds + 1, [])
    assert w.files.writes == [*writes, REVOKED_KEYS]


def test_unrevoke_by_fingerprint_takes_out_the_key_and_the_hash(w: TrustWorld) -> None:
    w.trust.apply(revoke(keys=[KEY], fingerprints=[FP, OTHER_FP]))
    outcome = w.trust.apply(unrevoke(fingerprints=[FP]))
    assert listed(w) == [{"kind": "hash", "value": OTHER_FP}]
    assert (outcome.fingerprints_after, outcome.removed) == ([], [FP])


def test_certificate_entries_are_per_ca(w: TrustWorld) -> None:
    certs = [{"ca_key": CA, "serials": [17, 18], "key_ids": ["alice@corp"]}, {"ca_key": CA2, "serials": [17]}]
    w.trust.apply(revoke(certificates=certs))
    assert len(listed(w)) == 4
    w.trust.apply(unrevoke(certificates=[{"ca_key": CA, "serials": [17]}]))
    kept = {(e["kind"], e["value"], e.get("ca_key", "").split()[1][:12]) for e in listed(w)}
    ca1, ca2 = CA.split()[1][:12], CA2.split()[1][:12]
    assert kept == {("serial", "18", ca1), ("key_id", "alice@corp", ca1), ("serial", "17", ca2)}


@pytest.mark.parametrize(
    ("values", "config", "broken", "expected"),
    [
        ({"revokedkeys": "none"}, "", None, "RevokedKeys is none, not /etc/ssh/sshklm-agent/revoked_keys"),
        ({"revokedkeys": "/etc/ssh/other_krl"}, "", None, "RevokedKeys is /etc/ssh/other_krl"),
        ({}, "", "no hostkeys available -- exiting.", "cannot confirm that sshd uses the agent's files"),
        (
            {},
            "Match Address 10.0.0.0/8\n  RevokedKeys none\n",
            None,
            "in a Match block (/etc/ssh/sshd_config:2)",
        ),
    ],
)
def test_sshd_not_using_the_krl_fails_and_changes_nothing(
    w: TrustWorld, values: dict[str, str], config: str, broken: str | None, expected: str
) -> None:
    w.trust.start()
    before = w.files.files[REVOKED_KEYS].data
    w.sshd.values.update(values)
    w.sshd.config_text, w.sshd.broken = config, broken
    exc = failure(w.trust.apply, revoke(fingerprints=[FP]))
    assert exc.code == "SSHD_NOT_CONFIGURED" and expected in exc.message
    assert w.files.files[REVOKED_KEYS].data == before
    assert w.state.revocations().entries == frozenset()


def test_ssh_keygen_missing(w: TrustWorld) -> None:
    w.trust.start()
    before = w.files.files[REVOKED_KEYS].data
    w.keygen.missing = True
    exc = failure(w.trust.apply, revoke(fingerprints=[FP]))
    assert exc.code == "KEYGEN_MISSING"
    assert w.files.files[REVOKED_KEYS].data == before
    assert w.state.revocations().entries == frozenset()  # the record is taken back


def test_ssh_keygen_refusing_or_listing_something_else(w: TrustWorld) -> None:
    w.trust.start()
    w.keygen.fail_build = "write /var/lib/sshklm-agent/krl/krl-x/krl: No space left on device"
    exc = failure(w.trust.apply, revoke(fingerprints=[FP]))
    assert exc.code == "KEYGEN_FAILED" and "No space left" in exc.message
    w.keygen.fail_build = None
    w.keygen.drop_from_listing = True
    exc = failure(w.trust.apply, revoke(fingerprints=[FP]))
    assert exc.code == "KRL_INVALID"
    assert listed(w) == [] and w.state.revocations().generation == 0


def test_disk_full_on_the_live_file_leaves_it_as_it_was(w: TrustWorld) -> None:
    w.trust.apply(revoke(fingerprints=[OTHER_FP]))
    before = w.files.files[REVOKED_KEYS].data
    w.files.fail_write[REVOKED_KEYS] = disk_full()
    exc = failure(w.trust.apply, revoke(fingerprints=[FP]))
    assert exc.code == "IO_ERROR" and "No space left on device" in exc.message
    assert w.files.files[REVOKED_KEYS].data == before
    record = w.state.revocations()
    assert {e.value for e in record.entries} == {OTHER_FP} and not record.pending


def test_the_state_store_failing_writes_nothing(w: TrustWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    w.trust.start()
    before = w.files.files[REVOKED_KEYS].data

    def full(state: RevocationState) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(w.state, "save_revocations", full)
    exc = failure(w.trust.apply, revoke(fingerprints=[FP]))
    assert exc.code == "IO_ERROR" and "disk is full" in exc.message
    assert w.files.files[REVOKED_KEYS].data == before and w.keygen.builds == 1  # only start's


def test_a_crash_between_the_record_and_the_file_is_completed_at_start(tmp_path: Path) -> None:
    w = make_trust_world(tmp_path / "state")
    w.trust.start()

    class Crash(BaseException):
        pass

    def crash(*args: Any, **kw: Any) -> None:
        raise Crash()

    w.files.write = crash  # type: ignore[method-assign]
    with pytest.raises(Crash):
        w.trust.apply(revoke(fingerprints=[FP]))
    assert w.state.revocations().pending  # recorded, not installed
    after = make_trust_world(tmp_path / "state", files=w.files)  # the restart, same files
    del w.files.write  # the instance attribute: writes work again
    after.trust.start()
    assert listed(after) == [{"kind": "hash", "value": FP}]
    assert not after.state.revocations().pending


def test_a_krl_corrupted_by_hand_is_left_until_an_instruction_rewrites_it(w: TrustWorld) -> None:
    w.trust.apply(revoke(fingerprints=[FP]))
    w.files.put(REVOKED_KEYS, KRL_MAGIC + b"garbage")
    w.trust.maintain()
    assert w.files.files[REVOKED_KEYS].data == KRL_MAGIC + b"garbage"  # reported (discovery), not rewritten
    outcome = w.trust.apply(unrevoke(fingerprints=[OTHER_FP]))  # changes no entry: still repairs
    assert outcome.written and listed(w) == [{"kind": "hash", "value": FP}]


@pytest.mark.parametrize("change", [{"mode": 0o600}, {"uid": 1000}, {"gid": 50}])
def test_permissions_changed_by_hand_are_put_right_by_the_next_instruction(
    w: TrustWorld, change: dict[str, int]
) -> None:
    w.trust.apply(revoke(fingerprints=[FP]))
    w.files.put(REVOKED_KEYS, w.files.files[REVOKED_KEYS].data, **change)
    outcome = w.trust.apply(revoke(fingerprints=[FP]))
    f = w.files.files[REVOKED_KEYS]
    assert outcome.written and (f.uid, f.gid, f.mode) == (0, 0, 0o644)


def test_a_removed_krl_is_recreated_by_the_check(w: TrustWorld) -> None:
    w.trust.apply(revoke(fingerprints=[FP]))
    del w.files.files[REVOKED_KEYS]
    w.trust.maintain()
    assert listed(w) == [{"kind": "hash", "value": FP}]


def test_sha256_revocation_needs_openssh_7_9(w: TrustWorld) -> None:
    w.sshd_version[0] = "OpenSSH_7.4p1"
    exc = failure(w.trust.apply, revoke(fingerprints=[FP]))
    assert exc.code == "UNSUPPORTED" and "7.9" in exc.message
    w.trust.apply(revoke(keys=[KEY]))  # the full key works on any KRL-capable sshd
    assert listed(w)[0]["kind"] == "key"


def test_an_unsafe_krl_path_is_refused(w: TrustWorld) -> None:
    w.files.unsafe.add(REVOKED_KEYS)
    exc = failure(w.trust.apply, revoke(fingerprints=[FP]))
    assert exc.code == "UNSAFE_PATH"


# -- CA trust -------------------------------------------------------------------------------------


def trust_ca(ca_id: str = "ca_1", key: str = CA, principals: dict[str, list[str]] | None = None) -> TrustBody:
    return body("trust_ca", {"ca_id": ca_id, "public_key": key, "principals": principals or {}})


def untrust_ca(ca_id: str = "ca_1") -> TrustBody:
    return body("untrust_ca", {"ca_id": ca_id})


def text(w: TrustWorld, name: str) -> list[str]:
    return [ln for ln in w.files.files[name].data.decode().splitlines() if not ln.startswith("#")]


def test_trust_ca_writes_the_principals_before_the_ca_key(w: TrustWorld) -> None:
    w.trust.start()
    w.files.writes.clear()
    outcome = w.trust.apply(trust_ca(principals={"alice": ["alice-oncall", "ops"], "bob": ["ops"]}))
    assert w.files.writes == ["principals/alice", "principals/bob", TRUSTED_USER_CA_KEYS]
    assert text(w, "principals/alice") == ["alice-oncall", "ops"]
    assert text(w, TRUSTED_USER_CA_KEYS) == [f"{' '.join(CA.split()[:2])} sshklm-ca:ca_1"]
    assert (outcome.fingerprints_after, outcome.added) == ([CA_FP], [CA_FP])
    writes = list(w.files.writes)
    assert (
        w.trust.apply(trust_ca(principals={"bob": ["ops"], "alice": ["ops", "alice-oncall"]})).written == []
    )
    assert w.files.writes == writes


def test_untrust_ca_takes_the_key_out_first(w: TrustWorld) -> None:
    w.trust.apply(trust_ca(principals={"alice": ["alice-oncall"]}))
    w.files.writes.clear()
    outcome = w.trust.apply(untrust_ca())
    assert w.files.writes == [TRUSTED_USER_CA_KEYS] and w.files.removes == ["principals/alice"]
    assert text(w, TRUSTED_USER_CA_KEYS) == []
    assert (outcome.fingerprints_after, outcome.removed) == ([], [CA_FP])
    assert w.trust.apply(untrust_ca()).written == []  # an unknown CA: already in place


def test_principals_and_keys_shared_between_cas(w: TrustWorld) -> None:
    w.trust.apply(trust_ca("ca_1", CA, {"alice": ["ops", "a1"]}))
    w.trust.apply(trust_ca("ca_2", CA2, {"alice": ["ops"]}))
    w.trust.apply(trust_ca("ca_3", CA, {}))  # the same key under another id
    assert text(w, TRUSTED_USER_CA_KEYS) == sorted(
        [f"{' '.join(CA.split()[:2])} sshklm-ca:ca_1,ca_3", f"{' '.join(CA2.split()[:2])} sshklm-ca:ca_2"]
    )
    w.trust.apply(untrust_ca("ca_1"))
    assert text(w, "principals/alice") == ["ops"]  # ca_2 asked for it too
    assert len(text(w, TRUSTED_USER_CA_KEYS)) == 2  # ca_3 still trusts that key


def test_a_principals_file_made_by_hand_is_removed_at_the_next_change(w: TrustWorld) -> None:
    w.trust.apply(trust_ca(principals={"alice": ["ops"]}))
    w.files.put("principals/bob", b"root\n")
    w.trust.maintain()
    assert "principals/bob" in w.files.files  # the check leaves it (discovery reports it)
    w.trust.apply(trust_ca(principals={"alice": ["ops"]}))  # the same body: still puts things right
    assert "principals/bob" not in w.files.files


def test_a_failure_part_way_puts_the_written_files_back(w: TrustWorld) -> None:
    w.trust.start()
    before = {n: f.data for n, f in w.files.files.items()}
    w.files.fail_write[TRUSTED_USER_CA_KEYS] = disk_full()
    exc = failure(w.trust.apply, trust_ca(principals={"alice": ["ops"]}))
    assert exc.code == "IO_ERROR"
    assert {n: f.data for n, f in w.files.files.items()} == before  # principals/alice taken back
    assert w.state.cas().cas == () and not w.state.cas().pending


def test_when_even_the_undo_fails_the_check_completes_the_change(w: TrustWorld) -> None:
    w.trust.start()
    w.files.fail_write[TRUSTED_USER_CA_KEYS] = disk_full()
    real_remove = w.files.remove

    def stuck(name: str, *, expect: Any) -> None:
        raise disk_full()

    w.files.remove = stuck  # type: ignore[method-assign]
    exc = failure(w.trust.apply, trust_ca(principals={"alice": ["ops"]}))
    assert "completes the change at its next check" in exc.message
    assert w.state.cas().pending
    del w.files.fail_write[TRUSTED_USER_CA_KEYS]
    w.files.remove = real_remove  # type: ignore[method-assign]
    w.trust.maintain()
    assert text(w, TRUSTED_USER_CA_KEYS) and not w.state.cas().pending


def test_a_missing_ca_file_is_recreated_by_the_check(w: TrustWorld) -> None:
    w.trust.apply(trust_ca(principals={"alice": ["ops"]}))
    del w.files.files[TRUSTED_USER_CA_KEYS]
    w.trust.maintain()
    assert len(text(w, TRUSTED_USER_CA_KEYS)) == 1


def test_ca_trust_needs_sshd_to_use_both_files(w: TrustWorld) -> None:
    w.sshd.values["authorizedprincipalsfile"] = "none"
    exc = failure(w.trust.apply, trust_ca(principals={"alice": ["ops"]}))
    assert exc.code == "SSHD_NOT_CONFIGURED" and "AuthorizedPrincipalsFile is none" in exc.message
    assert w.files.writes == []


def test_the_check_logs_a_problem_once_and_its_end(w: TrustWorld, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sshklm.trust")
    w.trust.start()
    w.keygen.missing = True
    del w.files.files[REVOKED_KEYS]
    for _ in range(3):
        w.trust.maintain()
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "KEYGEN_MISSING" in errors[0].getMessage()
    w.keygen.missing = False
    w.trust.maintain()
    assert listed(w) == [] and any("problem resolved" in r.getMessage() for r in caplog.records)


def test_no_dropin_while_the_agents_files_are_not_there_and_valid(tmp_path: Path) -> None:
    """Pointing sshd at a KRL that is missing or invalid would lock every public key out."""
    installed: list[bool] = []

    def install() -> Any:
        installed.append(True)
        from agent.host.sshd_dropin import DropinResult

        return DropinResult(True, True, "installed")

    w = make_trust_world(tmp_path / "state")
    w.trust._install_dropin = install
    w.keygen.missing = True  # the KRL cannot be built
    w.trust.start()
    assert REVOKED_KEYS not in w.files.files and installed == []
    w.files.put(REVOKED_KEYS, KRL_MAGIC + b"corrupt")  # there, but not a KRL ssh-keygen reads
    w.keygen.missing = False
    w.trust.start()
    assert installed == []
    del w.files.files[REVOKED_KEYS]
    w.trust.start()  # built now: installed
    assert installed == [True]


def test_a_read_only_dropin_directory_names_the_unit_dropin(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Under the packaged unit sshd_config.d is read-only until the operator adds the shipped
    unit drop-in: the log line says which file to add."""

    def install() -> Any:
        raise OSError(errno.EROFS, "Read-only file system", "/etc/ssh/sshd_config.d")

    w = make_trust_world(tmp_path / "state")
    w.trust._install_dropin = install
    caplog.set_level(logging.ERROR, logger="sshklm.trust")
    w.trust.start()
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("sshd drop-in not installed: [Errno 30] Read-only file system")
    assert "examples/sshklm-agent.service.d/install-sshd-dropin.conf" in line
