"""Bodies of revoke_keys / unrevoke_keys / trust_ca / untrust_ca (agent-api.md 6.2): what is
accepted, and a clear rejection (naming the field, never echoing key material) for the rest."""

from __future__ import annotations

from typing import Any

import pytest

from agent.instructions.validate_trust import Revocation, TrustBody, TrustCa, UntrustCa, validate_trust
from agent.instructions.verify import Instruction, Rejected
from agent.inventory.evaluate import Policy
from agent.ssh.keys import parse_public_key_text
from agent.ssh.krl import RevocationEntry
from agent.ssh.principals import parse_principals, render_principals
from tests.fakeroot import ed25519_line, rsa_line

KEY = ed25519_line("k")
FP = parse_public_key_text(KEY)[0].fingerprint
CA = ed25519_line("ca")
POLICY = Policy(1, 3072, frozenset({"ssh-ed25519", "ssh-rsa"}), 365, False, 3600)


def check(kind: str, body: dict[str, Any], policy: Policy | None = None) -> TrustBody:
    ins = Instruction("ins_1", "hst_1", 0, 2**31, kind, body, None, True)
    return validate_trust(ins, user_exists=lambda u: u in ("alice", "bob"), policy=policy)


def rejected(kind: str, body: dict[str, Any], policy: Policy | None = None) -> str:
    with pytest.raises(Rejected) as caught:
        check(kind, body, policy)
    assert caught.value.jti == "ins_1"
    return caught.value.reason


def test_a_revocation_with_every_kind_of_entry() -> None:
    body = check(
        "revoke_keys",
        {
            "revocation_id": "rvk_1",
            "keys": [KEY],
            "fingerprints": [FP],
            "certificates": [{"ca_key": CA, "serials": [17], "key_ids": ["alice@corp"]}],
        },
    )
    assert isinstance(body, Revocation) and body.action == "revoke"
    ca_text = " ".join(CA.split()[:2])
    assert body.entries == {
        RevocationEntry("key", " ".join(KEY.split()[:2])),
        RevocationEntry("hash", FP),
        RevocationEntry("serial", "17", ca_text),
        RevocationEntry("key_id", "alice@corp", ca_text),
    }
    assert body.fingerprints == (FP,)
    assert check("unrevoke_keys", {"revocation_id": "rvk_1", "fingerprints": [FP]}).action == "unrevoke"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({}, "missing revocation_id"),
        ({"revocation_id": "rvk_1"}, "nothing to revoke"),
        ({"revocation_id": "rvk_1", "keys": []}, "nothing to revoke"),
        ({"revocation_id": "rvk_1", "keys": "ssh-ed25519 AAAA"}, "keys must be a list"),
        ({"revocation_id": "rvk_1", "keys": ["not a key"]}, "keys[0] does not parse"),
        ({"revocation_id": "rvk_1", "keys": [f'from="x" {KEY}']}, "keys[0] carries options"),
        ({"revocation_id": "rvk_1", "keys": [KEY + "\nssh-rsa AAAA"]}, "keys[0]: not one line"),
        ({"revocation_id": "rvk_1", "fingerprints": ["MD5:aa:bb"]}, "fingerprints[0] is not a SHA256"),
        ({"revocation_id": "rvk_1", "fingerprints": [FP + "x"]}, "fingerprints[0] is not a SHA256"),
        ({"revocation_id": "rvk_1", "certificates": [{"ca_key": CA}]}, "names no serial and no key id"),
        ({"revocation_id": "rvk_1", "certificates": [{"ca_key": CA, "serials": [0]}]}, "from 1 to 2^64-1"),
        (
            {"revocation_id": "rvk_1", "certificates": [{"ca_key": CA, "serials": [2**64]}]},
            "from 1 to 2^64-1",
        ),
        ({"revocation_id": "rvk_1", "certificates": [{"ca_key": CA, "serials": [True]}]}, "from 1 to 2^64-1"),
        ({"revocation_id": "rvk_1", "certificates": [{"ca_key": CA, "key_ids": ["a#b"]}]}, "key_ids"),
        ({"revocation_id": "rvk_1", "certificates": [{"serials": [1]}]}, "ca_key must be a public key"),
        ({"revocation_id": "rvk_1", "certificates": ["x"]}, "certificates[0] must be an object"),
    ],
)
def test_bad_revocations_are_rejected(body: dict[str, Any], reason: str) -> None:
    assert reason in rejected("revoke_keys", body)


def test_trust_ca() -> None:
    body = check(
        "trust_ca",
        {"ca_id": "ca_1", "public_key": CA, "principals": {"bob": ["ops", "ops"], "alice": ["alice-oncall"]}},
    )
    assert isinstance(body, TrustCa)
    assert body.public_key == " ".join(CA.split()[:2])  # canonical, comment dropped
    assert body.principals == (("alice", ("alice-oncall",)), ("bob", ("ops",)))
    assert check("untrust_ca", {"ca_id": "ca_1"}) == UntrustCa("ca_1")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"ca_id": "ca_1"}, "missing public_key"),
        ({"ca_id": "ca 1", "public_key": CA}, "malformed ca_id"),
        ({"ca_id": "ca_1", "public_key": CA, "principals": {"carol": ["x"]}}, "no such user"),
        ({"ca_id": "ca_1", "public_key": CA, "principals": {"../root": ["x"]}}, "malformed user name"),
        ({"ca_id": "ca_1", "public_key": CA, "principals": {"alice": ["a b"]}}, "without blanks"),
        ({"ca_id": "ca_1", "public_key": CA, "principals": {"alice": ["a,b"]}}, "without blanks"),
        ({"ca_id": "ca_1", "public_key": CA, "principals": {"alice": ["#x"]}}, "without blanks"),
        ({"ca_id": "ca_1", "public_key": CA, "principals": {"alice": "ops"}}, "a list of at most"),
        ({"ca_id": "ca_1", "public_key": CA, "principals": ["alice"]}, "principals must be an object"),
    ],
)
def test_bad_trust_bodies_are_rejected(body: dict[str, Any], reason: str) -> None:
    assert reason in rejected("trust_ca", body)


def test_the_policy_applies_to_a_ca_key_not_to_a_revocation() -> None:
    weak = rsa_line(2048, "weak-ca")
    assert "min_rsa_bits" in rejected("trust_ca", {"ca_id": "ca_1", "public_key": weak}, POLICY)
    assert check("revoke_keys", {"revocation_id": "rvk_1", "keys": [weak]}, POLICY)


def test_principals_files_read_like_sshd() -> None:
    data = b'  ops  \n# comment\n\nfrom="10.0.0.0/8" deploy # trailing\nalice-oncall\r\n'
    lines = parse_principals(data)
    assert [(ln.line, ln.principal, ln.options) for ln in lines] == [
        (1, "ops", None),
        (4, "deploy", 'from="10.0.0.0/8"'),
        (5, "alice-oncall", None),
    ]
    written = render_principals(["ops", "alice-oncall", "ops"])
    assert [ln.principal for ln in parse_principals(written)] == ["alice-oncall", "ops"]
    with pytest.raises(ValueError):
        render_principals(["two words"])
