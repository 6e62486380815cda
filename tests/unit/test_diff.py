"""Inventory diffs -> contract changes. Pure."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from agent.inventory.diff import diff_errors, diff_inventories, diff_keys, to_events
from agent.inventory.model import Inventory, KeyRecord, ScanError, SshdSummary

T = datetime(2026, 11, 27, tzinfo=UTC)
SSHD = SshdSummary(None, (".ssh/authorized_keys",), None, None, "prohibit-password", False, True, True)


def rec(
    fp: str, line: int, *, path: str = "/home/a/.ssh/authorized_keys", comment: str = "c", **kw: object
) -> KeyRecord:
    return KeyRecord(
        kind="authorized_key",
        user="a",
        uid=1000,
        path=path,
        line=line,
        type="ssh-ed25519",
        bits=256,
        fingerprint=fp,
        fingerprint_md5="MD5:x",
        comment=comment,
        **kw,
    )  # type: ignore[arg-type]


def inv(keys: list[KeyRecord], errors: tuple[ScanError, ...] = (), sshd: SshdSummary = SSHD) -> Inventory:
    return Inventory("s", 1, T, None, sshd, tuple(keys), errors)


def kinds(changes: list) -> list[tuple[str, str | None]]:  # type: ignore[type-arg]
    return [(c.type, c.fingerprint) for c in changes]


def test_added_removed_in_file_order() -> None:
    old = [rec("SHA256:b", 1)]
    new = [rec("SHA256:b", 1), rec("SHA256:z", 2), rec("SHA256:a", 3)]
    assert kinds(diff_keys(old, new)) == [("key_added", "SHA256:z"), ("key_added", "SHA256:a")]
    assert kinds(diff_keys(new, old)) == [("key_removed", "SHA256:z"), ("key_removed", "SHA256:a")]


def test_line_shift_is_not_a_change_but_options_are() -> None:
    old = [rec("SHA256:a", 1)]
    assert diff_keys(old, [rec("SHA256:a", 5)]) == []
    changed = diff_keys(old, [rec("SHA256:a", 1, options={"no-pty": True})])
    assert kinds(changed) == [("key_changed", "SHA256:a")]
    assert kinds(diff_keys(old, [rec("SHA256:a", 1, comment="other")])) == [("key_changed", "SHA256:a")]
    assert kinds(diff_keys(old, [rec("SHA256:a", 1, effective=False)])) == [("key_changed", "SHA256:a")]


def test_duplicate_lines_count() -> None:
    one = [rec("SHA256:a", 1)]
    two = [rec("SHA256:a", 1), rec("SHA256:a", 2)]
    assert kinds(diff_keys(one, two)) == [("key_added", "SHA256:a")]
    assert kinds(diff_keys(two, one)) == [("key_removed", "SHA256:a")]


def test_scope_limits_to_paths() -> None:
    other = "/home/b/.ssh/authorized_keys"
    old = [rec("SHA256:a", 1), rec("SHA256:b", 1, path=other)]
    new = [rec("SHA256:a", 1)]
    assert diff_keys(old, new, paths=["/home/a/.ssh/authorized_keys"]) == []
    assert kinds(diff_keys(old, new)) == [("key_removed", "SHA256:b")]


def test_managed_by_is_carried() -> None:
    change = diff_keys([], [rec("SHA256:a", 1, managed_by="rotation:rot_1")])[0]
    assert change.detail["managed_by"] == "rotation:rot_1"


def test_errors_and_sshd_changes() -> None:
    err = ScanError("/home/a/.ssh/authorized_keys", "a", "FIFO")
    assert kinds(diff_errors([], [err])) == [("file_unreadable", None)]
    assert diff_errors([err], [err]) == []
    assert diff_errors([], [replace(err, line=3)]) == []  # invalid lines are not unreadable files
    other = replace(SSHD, strict_modes=False)
    changes = diff_inventories(inv([]), inv([], sshd=other))
    assert [c.type for c in changes] == ["sshd_config_changed"]
    assert diff_inventories(None, inv([rec("SHA256:a", 1)])) == []


def test_to_events_ids_and_json() -> None:
    ids = iter(["e1", "e2"])
    events = to_events(
        diff_keys([], [rec("SHA256:a", 1), rec("SHA256:b", 2)]), at=T, new_id=lambda: next(ids)
    )
    body = [e.to_json() for e in events]
    assert [b["id"] for b in body] == ["e1", "e2"]
    assert body[0]["type"] == "key_added" and body[0]["at"] == "2026-11-27T00:00:00Z"
    assert body[0]["key"]["fingerprint"] == "SHA256:a" and body[0]["detail"] == {"line": 1}


def test_inventory_json_round_trip() -> None:
    original = inv(
        [rec("SHA256:a", 1, options={"from": "10.0.0.0/8"}, first_seen=T)], (ScanError("/x", None, "e"),)
    )
    again = Inventory.from_json(original.to_json())
    assert again.to_json() == original.to_json()


def test_key_record_is_compact_and_copies_are_equal() -> None:
    from agent.inventory.model import NO_OPTIONS, Risk, intern_risk

    plain = rec("SHA256:a", 1)
    assert plain.options is NO_OPTIONS and plain.to_json()["options"] == {}
    risky = plain.with_risk(Risk(40, ("root_key",)))
    assert risky == plain._replace(risk=Risk(40, ("root_key",)))
    assert risky.risk.to_json() == {"score": 40, "factors": ["root_key"]} and plain.risk.score == 0
    # Equal risks built apart are shared; the JSON round trip shares them too.
    first, second = intern_risk(Risk(15, ("shared_key",))), intern_risk(Risk(15, ("shared_key",)))
    assert first is second
    again = KeyRecord.from_json(plain.with_risk(Risk(15, ("shared_key",))).to_json())
    assert again.risk is first and again.options is NO_OPTIONS


def test_inventory_json_text_is_the_document_in_chunks() -> None:
    import json

    from agent.inventory import model

    for count in (0, 1, model._RECORDS_PER_CHUNK, model._RECORDS_PER_CHUNK * 2 + 3):
        keys = [rec(f"SHA256:{i}", i + 1, comment=f"c{i} \u00e9") for i in range(count)]
        original = inv(keys, (ScanError("/x", None, "e", line=2),))
        text = original.to_json_text(host_id="hst_1")
        assert json.loads(text) == {**original.to_json(), "host_id": "hst_1"}
        assert list(json.loads(text)) == list(original.to_json())  # same member order
        assert json.loads(original.to_json_text()) == original.to_json()
