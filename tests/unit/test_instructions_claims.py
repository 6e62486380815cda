"""The time claims of an instruction (issue 11, "signed-token edge cases"): `nbf` is honoured, and
absurd numbers in `exp`, `iat`, `nbf` are refused before anything is written.

Before: a future `nbf` was ignored (applied at once) and `exp = 10**400` was applied, then failed
with OverflowError when its jti was recorded, leaving a pending journal entry. Times are integer
seconds since the epoch, from 0 to 9999-12-31T23:59:59Z (what a datetime, SQLite and RFC 3339
carry); anything else is `rejected` `VALIDATION_ERROR`. A signed instruction whose `nbf` has not
come is `rejected` `NOT_YET_VALID` (its jti recorded: the answer never changes, and no instruction
stays pending for the server to re-send on every poll). docs/rotation.md, "Trust model"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.instructions.verify import MAX_CLAIM_TIME, Rejected, verify_instruction
from tests.integration.apply_support import HOST_ID, public_line
from tests.unit.applier_fakes import ALICE, World, make_world

NOW = 1_800_000_000
KEY = Ed25519PrivateKey.generate()
AK = "/home/alice/.ssh/authorized_keys"


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = make_world(tmp_path / "state")
    w.files.put(AK, b"# keys\n", uid=ALICE.uid, gid=ALICE.gid)
    return w


def _token(**claims: Any) -> str:
    base: dict[str, Any] = {
        "jti": "ins_1",
        "aud": HOST_ID,
        "iat": NOW - 10,
        "exp": NOW + 600,
        "kind": "scan",
        "body": {"scan_id": "scn_1"},
    }
    base.update(claims)
    return jwt.encode({k: v for k, v in base.items() if v is not ...}, KEY, algorithm="EdDSA")


def _verify(token: str) -> Any:
    return verify_instruction(token, keys=[KEY.public_key()], host_id=HOST_ID, now=NOW, leeway=30)


def _add(world: World, jti: str, **claims: Any) -> dict[str, Any]:
    new, _ = public_line("n")
    body = {"rotation_id": "rot_1", "user": "alice", "action": "add", "new_key": new}
    token = world.token("rotation", body, jti=jti, extra={k: v for k, v in claims.items() if v is not ...})
    return world.applier.handle(token)[1]


# -- nbf ----------------------------------------------------------------------------------------


def test_nbf_in_the_future_is_not_yet_valid() -> None:
    with pytest.raises(Rejected) as info:
        _verify(_token(nbf=NOW + 31))
    assert (info.value.code, info.value.status) == ("NOT_YET_VALID", "rejected")
    assert _verify(_token(nbf=NOW + 29)).nbf == NOW + 29  # within the leeway
    assert _verify(_token(nbf=NOW - 1000)).nbf == NOW - 1000
    assert _verify(_token()).nbf is None


def test_an_instruction_not_yet_valid_changes_nothing_and_its_answer_stays(world: World) -> None:
    now = int(world.clock().timestamp())
    result = _add(world, "ins_nbf", nbf=now + 3600)
    assert result["status"] == "rejected"
    assert result["error"]["code"] == "NOT_YET_VALID"
    assert world.files.text(AK) == "# keys\n" and world.files.opened == []
    assert world.store.unfinished_applies() == []
    # Re-sent after its nbf (the server never got the answer): the answer does not change.
    world.clock.advance(7200)
    again = _add(world, "ins_nbf", nbf=now + 3600)
    assert again["status"] == "rejected" and again["error"]["code"] == "REPLAYED"
    assert world.files.text(AK) == "# keys\n"


# -- absurd numbers -----------------------------------------------------------------------------

ABSURD = [
    10**400,  # the review's case: OverflowError when recorded
    MAX_CLAIM_TIME + 1,  # after 9999-12-31T23:59:59Z
    -1,
    True,
    False,
    1.8e9,  # not an integer
    float("inf"),
    "1800000600",
    None,  # present but null
    [NOW],
    {"t": NOW},
]


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
@pytest.mark.parametrize("value", ABSURD, ids=repr)
def test_absurd_time_claims_are_rejected_before_anything_is_written(
    world: World, claim: str, value: object
) -> None:
    try:
        result = _add(world, "ins_absurd", **{claim: value})
    except (ValueError, TypeError, OverflowError):
        pytest.skip("PyJWT cannot encode this value")  # (not reached for these values)
    assert result["status"] == "rejected", (claim, value, result)
    assert result["error"]["code"] == "VALIDATION_ERROR"
    assert claim in result["error"]["message"]
    assert world.files.opened == [] and world.files.writes == []
    assert world.store.unfinished_applies() == []


def test_the_largest_time_is_accepted() -> None:
    assert _verify(_token(exp=MAX_CLAIM_TIME)).exp == MAX_CLAIM_TIME


# -- properties ---------------------------------------------------------------------------------

_numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**500), max_value=10**500),
    st.integers(min_value=NOW - 10**6, max_value=NOW + 10**6),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
    st.text(max_size=12),
    st.just(...),  # absent
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(exp=_numbers, iat=_numbers, nbf=_numbers)
def test_claim_validation_property(exp: object, iat: object, nbf: object) -> None:
    """Any value of the three claims: a Rejected or a verified instruction whose times are
    integers in range, `exp` not passed and `iat`/`nbf` not in the future (with the leeway);
    never another exception."""
    try:
        token = _token(exp=exp, iat=iat, nbf=nbf)
    except (ValueError, TypeError, OverflowError):
        return  # not encodable as JSON by PyJWT: cannot reach the agent
    try:
        ins = _verify(token)
    except Rejected as exc:
        assert exc.code in ("VALIDATION_ERROR", "EXPIRED", "NOT_YET_VALID")
        return
    for value in (ins.exp, ins.iat, ins.nbf):
        if value is not None:
            assert type(value) is int and 0 <= value <= MAX_CLAIM_TIME
    assert ins.exp + 30 >= NOW
    assert ins.iat is None or ins.iat - 30 <= NOW
    assert ins.nbf is None or ins.nbf - 30 <= NOW


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(exp=_numbers, nbf=_numbers)
def test_the_applier_never_leaves_a_journal_entry_for_any_claims(
    tmp_path: Path, exp: object, nbf: object
) -> None:
    world = make_world(tmp_path / f"s{abs(hash((repr(exp), repr(nbf))))}")
    world.files.put(AK, b"# keys\n", uid=ALICE.uid, gid=ALICE.gid)
    try:
        result = _add(world, "ins_p", exp=exp, nbf=nbf)
    except (ValueError, TypeError, OverflowError):
        return  # not encodable
    assert result["status"] in ("applied", "rejected", "expired")
    assert world.store.unfinished_applies() == []
    if result["status"] != "applied":
        assert world.files.writes == []


def test_an_absurd_policy_ttl_from_the_server_is_no_internal_error(tmp_path: Path) -> None:
    """The policy comes from the server too: an `ephemeral_max_ttl_s` of 10**20 used to raise
    OverflowError (`now + timedelta(...)`) and fail the grant as an internal error."""
    from dataclasses import replace

    from tests.integration.apply_support import POLICY

    world = make_world(tmp_path / "state", policy=replace(POLICY, ephemeral_max_ttl_s=10**20))
    key, _ = public_line()
    body = {"grant_id": "eph_1", "user": "alice", "public_key": key, "expires_at": "2026-03-01T13:00:00Z"}
    assert world.apply("ephemeral", body)["status"] == "applied"
    far = {**body, "grant_id": "eph_2", "expires_at": "9999-12-31T23:59:59Z"}
    assert world.apply("ephemeral", far)["status"] == "applied"  # within that (absurd) policy
