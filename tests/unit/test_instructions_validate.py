"""validate(): bodies checked with the discovery parser before anything is opened."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.instructions.validate import (
    EPHEMERAL_TAG,
    Ephemeral,
    Revoke,
    Rotation,
    Scan,
    parse_new_key,
    validate,
)
from agent.instructions.verify import Instruction, Rejected
from agent.inventory.evaluate import Policy

NOW = datetime(2030, 1, 1, tzinfo=UTC)
POLICY = Policy(1, 3072, frozenset({"ssh-ed25519", "ssh-rsa"}), 365, False, 3600)


def _ed25519(comment: str = "c") -> tuple[str, str]:
    pub = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    fp = "SHA256:" + base64.b64encode(
        hashlib.sha256(base64.b64decode(pub.split()[1])).digest()
    ).decode().rstrip("=")
    return f"{pub.decode()} {comment}".strip(), fp


KEY, KEY_FP = _ed25519("new@host")
OLD_FP = _ed25519()[1]


def _ins(kind: str, body: dict[str, Any]) -> Instruction:
    return Instruction("ins_1", "hst", None, 0, kind, body, None, True)


def _validate(kind: str, body: dict[str, Any], users: tuple[str, ...] = ("deploy",)) -> Any:
    return validate(
        _ins(kind, body), user_exists=lambda n: n in users, policy=POLICY, now=NOW, max_ttl_s=3600
    )


def _rot(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "rotation_id": "rot_1",
        "user": "deploy",
        "action": "replace",
        "old_fingerprint": OLD_FP,
        "new_key": KEY,
    }
    body.update(over)
    return body


def test_replace() -> None:
    rot = _validate("rotation", _rot(options='from="10.0.0.0/8",no-pty'))
    assert isinstance(rot, Rotation)
    assert (rot.action, rot.old_fingerprint, rot.options_given) == ("replace", OLD_FP, True)
    assert rot.new is not None and rot.new.key.fingerprint == KEY_FP
    assert rot.new.line() == 'from="10.0.0.0/8",no-pty ' + KEY
    assert rot.new.options is not None and rot.new.options.from_ == "10.0.0.0/8"


def test_add_and_remove() -> None:
    add = _validate("rotation", _rot(action="add", old_fingerprint=None))
    assert isinstance(add, Rotation) and add.new is not None and add.old_fingerprint is None
    remove = _validate(
        "rotation", {"rotation_id": "rot_2", "user": "deploy", "action": "remove", "old_fingerprint": OLD_FP}
    )
    assert isinstance(remove, Rotation) and remove.new is None


def test_key_is_canonicalised() -> None:
    label, b64, *_ = KEY.split()
    new = parse_new_key(f"  {label}\t{b64}   spaced comment ", None, POLICY)
    assert new.text == f"{label} {b64} spaced comment"


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"user": "../root"}, "malformed user"),
        ({"user": "root/../x"}, "malformed user"),
        ({"user": ""}, "malformed user"),
        ({"user": "-rf"}, "malformed user"),
        ({"user": "ghost"}, "no such user"),
        ({"user": 7}, "must be a string"),
        ({"new_key": KEY + "\nssh-ed25519 AAAA"}, "line break"),
        ({"new_key": KEY.replace(" ", "\x00", 1)}, "NUL"),
        ({"new_key": "\ud800" + KEY}, "UTF-8"),
        ({"new_key": "no-pty " + KEY}, "options"),
        ({"new_key": "ssh-ed25519 AAAA"}, "does not parse"),
        ({"new_key": "ssh-ed25519 " + "A" * 20000}, "too long"),
        ({"new_key": KEY.replace("new@host", "caf\u00e9")}, "printable ASCII"),
        ({"options": "no-pty " + KEY}, "options"),
        ({"options": "cert-authority"}, "cert-authority"),
        ({"options": 'command="unterminated'}, "bad options"),
        ({"options": "x" * 5000}, "too long"),
        ({"old_fingerprint": "MD5:aa"}, "old_fingerprint"),
        ({"old_fingerprint": KEY_FP}, "equals the old"),
        ({"action": "rm -rf"}, "action"),
        ({"rotation_id": "rot 1"}, "rotation_id"),
        ({"rotation_id": None}, "missing rotation_id"),
    ],
)
def test_rotation_rejections(over: dict[str, Any], reason: str) -> None:
    with pytest.raises(Rejected) as info:
        _validate("rotation", _rot(**over))
    assert reason in info.value.reason
    assert info.value.jti == "ins_1"
    assert KEY.split()[1] not in info.value.reason  # never the key itself


def test_policy() -> None:
    rsa = (
        generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    with pytest.raises(Rejected, match="min_rsa_bits"):
        _validate("rotation", _rot(new_key=rsa))
    no_rsa = Policy(1, 2048, frozenset({"ssh-ed25519"}), 365, False, 3600)
    with pytest.raises(Rejected, match="not allowed"):
        validate(
            _ins("rotation", _rot(new_key=rsa)),
            user_exists=lambda n: True,
            policy=no_rsa,
            now=NOW,
            max_ttl_s=60,
        )


def test_ephemeral() -> None:
    expires = NOW + timedelta(minutes=5)
    eph = _validate(
        "ephemeral",
        {
            "grant_id": "eph_1",
            "user": "deploy",
            "public_key": KEY,
            "expires_at": "2030-01-01T00:05:00Z",
            "reason": None,
        },
    )
    assert isinstance(eph, Ephemeral)
    assert eph.expires_at == expires
    assert eph.new.line().startswith('expiry-time="20300101000500Z" ssh-ed25519 ')
    assert eph.new.line().endswith(f" {EPHEMERAL_TAG}:eph_1")


@pytest.mark.parametrize(
    ("expires_at", "reason"),
    [
        ("2030-01-01T02:00:01Z", "ephemeral_max_ttl_s"),
        ("tomorrow", "expires_at"),
        ("2030-01-01T00:05:00", "expires_at"),
        ("0001-01-01T00:00:00+01:00", "expires_at"),
    ],
)
def test_ephemeral_rejections(expires_at: str, reason: str) -> None:
    with pytest.raises(Rejected, match=reason):
        _validate(
            "ephemeral", {"grant_id": "eph_1", "user": "deploy", "public_key": KEY, "expires_at": expires_at}
        )


def test_revoke_and_scan() -> None:
    assert _validate("revoke_ephemeral", {"grant_id": "eph_1"}) == Revoke("eph_1")
    assert _validate("scan", {"scan_id": "scn_1"}) == Scan("scn_1")
    with pytest.raises(Rejected):
        _validate("scan", {"scan_id": "../../x"})


_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=30)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_fields = [
    "rotation_id",
    "user",
    "action",
    "old_fingerprint",
    "new_key",
    "options",
    "grant_id",
    "public_key",
    "expires_at",
    "scan_id",
]
_interesting = st.sampled_from(
    [
        KEY,
        OLD_FP,
        "deploy",
        "replace",
        "add",
        "remove",
        "2030-01-01T00:01:00Z",
        'from="1.2.3.4"',
        "rot_1",
        "eph_1",
        KEY + "\n" + KEY,
    ]
)


@settings(max_examples=400, deadline=None)
@given(
    kind=st.sampled_from(["rotation", "ephemeral", "revoke_ephemeral", "scan", "other"]),
    body=st.dictionaries(st.sampled_from(_fields), st.one_of(_json, _interesting), max_size=10),
)
def test_random_bodies_raise_only_rejected(kind: str, body: dict[str, Any]) -> None:
    try:
        result = _validate(kind, body)
    except Rejected as exc:
        assert exc.reason and exc.jti == "ins_1"
    else:
        assert isinstance(result, Rotation | Ephemeral | Revoke | Scan)
