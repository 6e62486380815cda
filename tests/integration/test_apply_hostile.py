"""Hostile instructions and hostile homes against the Applier, on a fake root in a tmp dir.

Every test snapshots the whole fake root before and after: a rejection or a refused write
changes nothing at all; an applied instruction changes only the intended file.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.host.safefs import DirHandle
from agent.instructions.apply import Applier
from tests.integration.apply_support import (
    HOST_ID,
    FakeHost,
    Signer,
    changed,
    make_applier,
    make_fake_host,
    public_line,
    snapshot,
    write_ak,
)

REASON = "fake users with distinct uids need root (chown)"
pytestmark = [pytest.mark.root(reason=REASON), pytest.mark.skipif(os.geteuid() != 0, reason=REASON)]


@pytest.fixture
def keys(host: FakeHost) -> dict[str, str]:
    """alice has one key (old) between a comment and an invalid line; bob has his own key."""
    old, old_fp = public_line("old@laptop")
    bob_line, bob_fp = public_line("bob")
    write_ak(host, "alice", f"# alice's keys\n{old}\nnot a key line\n".encode())
    write_ak(host, "bob", f"{bob_line}\n".encode())
    (host.root / "etc" / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    os.chmod(host.root / "etc" / "shadow", 0o640)
    return {"old": old, "old_fp": old_fp, "bob_fp": bob_fp}


def _rotation(old_fp: str, user: str = "alice", **over: Any) -> dict[str, Any]:
    new, _ = public_line("new")
    body = {
        "rotation_id": "rot_1",
        "user": user,
        "action": "replace",
        "old_fingerprint": old_fp,
        "new_key": new,
    }
    body.update(over)
    return body


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _assert_untouched(host: FakeHost, before: dict[str, Any]) -> None:
    assert changed(before, snapshot(host.root)) == set()


# -- trust: nothing is opened for a token that fails verification --------------------------------


def _claims(body: dict[str, Any], aud: str = HOST_ID) -> dict[str, Any]:
    now = int(datetime.now(UTC).timestamp())
    return {"jti": "ins_forged01", "aud": aud, "iat": now, "exp": now + 600, "kind": "rotation", "body": body}


def _hs256(claims: dict[str, Any], secret: bytes) -> str:
    """The classic algorithm-confusion forgery: HMAC keyed with the verifier's public key text."""
    signing_input = (
        f"{_b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{_b64(json.dumps(claims).encode())}"
    )
    return f"{signing_input}.{_b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


def _forged_tokens(signer: Signer, body: dict[str, Any]) -> dict[str, str]:
    other = Signer()
    claims = _claims(body)
    header_none = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(claims).encode())
    ec_key = generate_private_key(SECP256R1())
    good = signer.token("rotation", body)
    head, pay, sig = good.split(".")
    flipped = sig[:-2] + ("AA" if not sig.endswith("AA") else "BB")
    return {
        "other key": other.token("rotation", body),
        "tampered payload": f"{head}.{payload}.{sig}",
        "bad signature bytes": f"{head}.{pay}.{flipped}",
        "alg none": f"{header_none}.{payload}.",
        "HS256 with the public key": _hs256(claims, signer.public_openssh.encode()),
        "ES256": jwt.encode(claims, ec_key, algorithm="ES256"),
        "not a jws": "hello",
        "deeply nested header": _b64(b"[" * 20000) + "." + payload + ".",
    }


@pytest.mark.parametrize(
    "case",
    [
        "other key",
        "tampered payload",
        "bad signature bytes",
        "alg none",
        "HS256 with the public key",
        "ES256",
        "not a jws",
        "deeply nested header",
    ],
)
def test_forged_tokens_are_rejected_and_change_nothing(
    host: FakeHost, signer: Signer, applier: Applier, keys: dict[str, str], case: str
) -> None:
    token = _forged_tokens(signer, _rotation(keys["old_fp"]))[case]
    before = snapshot(host.root)
    _, result = applier.handle(token)
    assert result["status"] == "rejected"
    assert result["error"]["message"]
    _assert_untouched(host, before)
    assert host.managed == []


def test_wrong_audience_is_rejected(
    host: FakeHost, signer: Signer, applier: Applier, keys: dict[str, str]
) -> None:
    before = snapshot(host.root)
    _, result = applier.handle(signer.token("rotation", _rotation(keys["old_fp"]), aud="hst_other"))
    assert result["status"] == "rejected"
    assert "aud" in result["error"]["message"]
    _assert_untouched(host, before)


def test_expired_instruction_changes_nothing(
    host: FakeHost, signer: Signer, applier: Applier, keys: dict[str, str]
) -> None:
    before = snapshot(host.root)
    stale = datetime.now(UTC).timestamp() - 7200
    _, result = applier.handle(signer.token("rotation", _rotation(keys["old_fp"]), now=stale, exp_in=600))
    assert result["status"] == "expired"
    _assert_untouched(host, before)


def test_unsigned_refused_unless_configured(host: FakeHost, signer: Signer, keys: dict[str, str]) -> None:
    token = _forged_tokens(signer, _rotation(keys["old_fp"]))["alg none"]
    before = snapshot(host.root)
    strict = make_applier(host, signer)
    assert strict.handle(token)[1]["status"] == "rejected"
    _assert_untouched(host, before)
    relaxed = make_applier(host, signer, require_signature=False)
    assert relaxed.handle(token)[1]["status"] == "applied"
    assert changed(before, snapshot(host.root)) == {"home/alice/.ssh/authorized_keys"}


def test_replayed_jti(host: FakeHost, signer: Signer, applier: Applier, keys: dict[str, str]) -> None:
    rejected = signer.token("rotation", _rotation(keys["old_fp"], user="nobody_here"))
    assert applier.handle(rejected)[1]["status"] == "rejected"
    before = snapshot(host.root)
    again = applier.handle(rejected)[1]
    assert again["status"] == "rejected"
    assert again["error"]["message"] == "replayed jti"
    _assert_untouched(host, before)

    good = signer.token("rotation", _rotation(keys["old_fp"]))
    jti, first = applier.handle(good)
    assert first["status"] == "applied"
    after_first = snapshot(host.root)
    jti2, second = applier.handle(good)  # applied once; the replay reports the same outcome
    assert (jti2, second["status"]) == (jti, "applied")
    assert second["fingerprints_after"] == first["fingerprints_after"]
    _assert_untouched(host, after_first)


# -- bodies: validation rejects before anything is opened --------------------------------------------


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda b, k: b.update(new_key=k + "\nssh-ed25519 AAAA x"), id="newline in key"),
        pytest.param(lambda b, k: b.update(new_key=k.replace(" ", "\x00", 1)), id="NUL in key"),
        pytest.param(lambda b, k: b.update(new_key=k + "\r"), id="CR in key"),
        pytest.param(lambda b, k: b.update(options="no-pty\nssh-ed25519 AAAA"), id="newline in options"),
        pytest.param(lambda b, k: b.update(options=f"no-pty {k}"), id="options carry a second key"),
        pytest.param(lambda b, k: b.update(options='command="x" ' + k), id="command then key"),
        pytest.param(lambda b, k: b.update(new_key="no-pty " + k), id="options inside key text"),
        pytest.param(lambda b, k: b.update(options="cert-authority"), id="cert-authority"),
        pytest.param(lambda b, k: b.update(user="../root"), id="user ../root"),
        pytest.param(lambda b, k: b.update(user="root/../x"), id="user root/../x"),
        pytest.param(lambda b, k: b.update(user="ghost"), id="unknown user"),
        pytest.param(lambda b, k: b.update(user=""), id="empty user"),
        pytest.param(lambda b, k: b.update(new_key="ssh-ed25519 " + "A" * (1 << 20)), id="1 MB key line"),
        pytest.param(lambda b, k: b.update(new_key="ssh-ed25519 " + "A" * 40000), id="40 kB key line"),
        pytest.param(lambda b, k: b.update(new_key="ssh-dss AAAAB3NzaC1kc3MAAACBAP"), id="unparsable key"),
        pytest.param(lambda b, k: b.update(old_fingerprint="SHA256:../../etc"), id="bad fingerprint"),
        pytest.param(lambda b, k: b.update(action="chmod"), id="unknown action"),
        pytest.param(lambda b, k: b.update(rotation_id="../x"), id="bad rotation id"),
    ],
)
def test_bad_bodies_are_rejected_and_change_nothing(
    host: FakeHost, signer: Signer, applier: Applier, keys: dict[str, str], mutate: Any
) -> None:
    body = _rotation(keys["old_fp"])
    mutate(body, body["new_key"])
    before = snapshot(host.root)
    _, result = applier.handle(signer.token("rotation", body))
    assert result["status"] == "rejected", result
    _assert_untouched(host, before)
    assert host.managed == []


def test_policy_forbidden_key_is_rejected(
    host: FakeHost, signer: Signer, applier: Applier, keys: dict[str, str]
) -> None:
    ecdsa384 = (
        "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBAGEkSXYnWyh0hqj0VfT8xD2"
        "1l0oy8cJfp8Gv1xzaTy6PmB2Z3NDF4X0jxq7JzkjDAxfBu3LbW1ywX3ZMmEh5S9vr/Fw4rBkH7YKdyk+aTnLdMzfRTvTYnkl"
        "aMJ8BLfWqjw=="
    )
    before = snapshot(host.root)
    _, result = applier.handle(signer.token("rotation", _rotation(keys["old_fp"], new_key=ecdsa384)))
    assert result["status"] == "rejected"
    _assert_untouched(host, before)


# -- hostile homes: the write never lands anywhere but the intended file ----------------------------


def _replace(host: FakeHost, signer: Signer, applier: Applier, old_fp: str) -> dict[str, Any]:
    return applier.handle(signer.token("rotation", _rotation(old_fp)))[1]


def _move_alice_keys_to(host: FakeHost, target: Path) -> None:
    shutil.copy(host.ak("alice"), target)


@pytest.mark.parametrize("action", ["replace", "add"])
@pytest.mark.parametrize("where", ["outside the home", "another user's .ssh"])
def test_symlinked_ssh_dir_is_refused(
    host: FakeHost, signer: Signer, applier: Applier, keys: dict[str, str], where: str, action: str
) -> None:
    ssh = host.home("alice") / ".ssh"
    if where == "outside the home":
        elsewhere = host.root / "etc" / "alice-ssh"
        elsewhere.mkdir(mode=0o700)
        _move_alice_keys_to(host, elsewhere / "authorized_keys")
        target = elsewhere
    else:
        target = host.home("bob") / ".ssh"
    shutil.rmtree(ssh)
    ssh.symlink_to(target)
    before = snapshot(host.root)
    body = _rotation(keys["old_fp"], action=action)
    _, result = applier.handle(signer.token("rotation", body))
    assert result["status"] == "failed"
    _assert_untouched(host, before)


@pytest.mark.parametrize("where", ["/etc/shadow", "bob's authorized_keys", "a copy outside the home"])
def test_symlinked_authorized_keys_is_refused(
    host: FakeHost, signer: Signer, applier: Applier, keys: dict[str, str], where: str
) -> None:
    ak = host.ak("alice")
    if where == "/etc/shadow":
        target = host.root / "etc" / "shadow"
        ak.unlink()
        ak.symlink_to(target)
        # The old key must be somewhere sshd reads for the instruction to get to the write.
        (host.home("alice") / ".ssh" / "authorized_keys2").write_text(keys["old"] + "\n")
        os.chown(host.home("alice") / ".ssh" / "authorized_keys2", host.uids["alice"], host.uids["alice"])
    elif where == "bob's authorized_keys":
        target = host.ak("bob")
        ak.unlink()
        ak.symlink_to(target)
        body_fp = keys["bob_fp"]
        keys = {**keys, "old_fp": body_fp}
    else:
        target = host.root / "tmp-keys"
        _move_alice_keys_to(host, target)
        ak.unlink()
        ak.symlink_to(target)
    before = snapshot(host.root)
    result = _replace(host, signer, applier, keys["old_fp"])
    assert result["status"] == "failed"
    _assert_untouched(host, before)


def test_hardlinked_authorized_keys_is_refused(
    host: FakeHost, signer: Signer, applier: Applier, keys: dict[str, str]
) -> None:
    os.link(host.ak("alice"), host.root / "etc" / "linked-keys")
    before = snapshot(host.root)
    result = _replace(host, signer, applier, keys["old_fp"])
    assert result["status"] == "failed"
    assert "hard link" in result["error"]["message"]
    _assert_untouched(host, before)


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_fifo_or_directory_in_place_of_the_file(
    host: FakeHost, signer: Signer, applier: Applier, keys: dict[str, str], kind: str
) -> None:
    ak = host.ak("alice")
    ak.unlink()
    if kind == "fifo":
        os.mkfifo(ak, 0o600)
    else:
        ak.mkdir(mode=0o700)
    os.chown(ak, host.uids["alice"], host.uids["alice"])
    new, _ = public_line("new")
    before = snapshot(host.root)
    body = {"rotation_id": "rot_2", "user": "alice", "action": "add", "new_key": new}
    _, result = applier.handle(signer.token("rotation", body))
    assert result["status"] == "failed"
    _assert_untouched(host, before)


def test_ssh_dir_swapped_for_a_symlink_during_the_write(
    host: FakeHost, signer: Signer, keys: dict[str, str]
) -> None:
    """Between the checks and the rename, ~/.ssh becomes a symlink to bob's .ssh: the write
    still lands in the directory that was checked (held by descriptor), never in bob's."""
    ssh = host.home("alice") / ".ssh"
    moved = host.home("alice") / ".ssh-moved"
    calls: list[str] = []

    def swap(dirh: DirHandle, name: str) -> None:
        calls.append(name)
        ssh.rename(moved)
        ssh.symlink_to(host.home("bob") / ".ssh")

    applier = make_applier(host, signer, before_rename=swap)
    bob_before = (host.ak("bob").read_bytes(), host.ak("bob").stat().st_ino)
    shadow_before = (host.root / "etc" / "shadow").read_bytes()
    result = _replace(host, signer, applier, keys["old_fp"])
    assert calls == ["authorized_keys"]
    assert (host.ak("bob").read_bytes(), host.ak("bob").stat().st_ino) == bob_before
    assert (host.root / "etc" / "shadow").read_bytes() == shadow_before
    written = (moved / "authorized_keys").read_bytes()
    if result["status"] == "applied":
        assert b"new" in written and keys["old"].encode() not in written
    elif result["error"]["code"] == "KEY_NOT_IN_EFFECT":
        # Written where it was checked, which is no longer where sshd looks: read back, it is
        # not in effect, and the result says so instead of `applied`.
        assert b"new" in written and keys["old"].encode() not in written
    else:
        assert keys["old"].encode() in written
    assert list((host.home("bob") / ".ssh").iterdir()) == [host.ak("bob")]


def test_applied_rotation_changes_only_the_intended_file(
    host: FakeHost, signer: Signer, applier: Applier, keys: dict[str, str]
) -> None:
    before = snapshot(host.root)
    assert _replace(host, signer, applier, keys["old_fp"])["status"] == "applied"
    assert changed(before, snapshot(host.root)) == {"home/alice/.ssh/authorized_keys"}


# -- property: random bodies never crash and never write unless applied --------------------------------

_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "alice",
            "bob",
            "../root",
            "",
            "root",
            "replace",
            "add",
            "remove",
            "SHA256:x",
            "2030-01-01T00:00:00Z",
            "0001-01-01T00:00:00+01:00",
            "ssh-ed25519 AAAA",
        ]
    ),
)
_value = st.one_of(
    _text,
    st.integers(),
    st.none(),
    st.booleans(),
    st.lists(_text, max_size=2),
    st.dictionaries(_text, _text, max_size=2),
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


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(["rotation", "ephemeral", "revoke_ephemeral", "scan", "other"]),
    body=st.dictionaries(st.sampled_from(_fields), _value, max_size=8),
)
def test_random_bodies_only_reject(
    tmp_path_factory: pytest.TempPathFactory, kind: str, body: dict[str, Any]
) -> None:
    host = make_fake_host(tmp_path_factory.mktemp("prop"))
    signer = Signer()
    applier = make_applier(host, signer)
    before = snapshot(host.root)
    _, result = applier.handle(signer.token(kind, body))
    assert result["status"] in ("rejected", "applied", "failed", "expired")
    if result["status"] != "applied" or kind in ("scan", "revoke_ephemeral"):
        assert changed(before, snapshot(host.root)) == set()
    if result["error"] is not None:
        assert result["error"]["code"] != "INTERNAL"
