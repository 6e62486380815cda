"""The lines an operator follows (issue 15): what an applied instruction changed, in one INFO line
without key material; the usage source said once per start, at one level."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from agent.config import UsageConfig
from agent.daemon.extensions import UsageTracker, describe_applied
from agent.daemon.usage import SourceChoice
from agent.inventory.model import Event

AT = datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC)
PATH = "/home/alice/.ssh/authorized_keys"


def _applied(user: str | None, fingerprint: str | None, path: str | None = PATH, **detail: object) -> Event:
    return Event(
        id="e1",
        seq=0,
        at=AT,
        type="instruction_applied",
        user=user,
        path=path,
        fingerprint=fingerprint,
        key=None,
        detail=dict(detail),
    )


def test_each_applied_instruction_is_one_line_naming_user_key_and_what_happened() -> None:
    grant = _applied(
        "alice",
        "SHA256:new",
        jti="ins_1",
        kind="ephemeral",
        added=["SHA256:new"],
        removed=[],
        grant_id="eph_1",
        expires_at="2026-12-04T12:05:00Z",
    )
    assert describe_applied(grant) == (
        f"ephemeral grant eph_1: key SHA256:new added for alice until 2026-12-04T12:05:00Z ({PATH})"
    )
    expiry = _applied(
        "alice", "SHA256:new", action="ephemeral_expiry", grant_id="eph_1", removed=["SHA256:new"]
    )
    assert (
        describe_applied(expiry)
        == f"ephemeral grant eph_1 expired: key SHA256:new removed for alice ({PATH})"
    )
    revoke = _applied(None, None, kind="revoke_ephemeral", grant_id="eph_1", removed=["SHA256:new"], added=[])
    assert describe_applied(revoke) == "ephemeral grant eph_1 revoked: key SHA256:new removed"
    rotation = _applied(
        "alice",
        "SHA256:new",
        kind="rotation",
        rotation_id="rot_1",
        action="replace",
        added=["SHA256:new"],
        removed=["SHA256:old"],
    )
    assert (
        describe_applied(rotation)
        == "rotation rot_1 (replace) for alice: added SHA256:new, removed SHA256:old"
    )
    in_place = _applied(
        "alice", "SHA256:new", kind="rotation", rotation_id="rot_2", action="add", added=[], removed=[]
    )
    assert describe_applied(in_place) == "rotation rot_2 (add) for alice: added none, removed none"
    failed = Event(
        id="e2",
        seq=0,
        at=AT,
        type="instruction_failed",
        user="alice",
        path=None,
        fingerprint=None,
        key=None,
        detail={},
    )
    assert describe_applied(failed) is None  # the applier warns about those itself


def test_the_usage_source_is_said_once_per_start(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # issue 15: "last-used tracking disabled" came as a WARNING and again as an INFO.
    caplog.set_level(logging.DEBUG)
    tracker = UsageTracker(UsageConfig(source="journal"))
    monkeypatch.setattr(
        tracker.follower, "_choose", lambda: SourceChoice("disabled", None, "journalctl was not found")
    )
    tracker.start()
    tracker.stop()
    said = [r for r in caplog.records if "journalctl was not found" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    assert said[0].getMessage() == "key usage: last-used tracking disabled: journalctl was not found"
