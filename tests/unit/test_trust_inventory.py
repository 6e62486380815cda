"""Discovery's side of revocation and CA trust, pure: a KRL's verdict on key records (idempotent
over its own output), the risk of a revoked key still present, the events of a KRL or principals
file that changed, the inventory's new members on the wire, the status field; and the sshd
helpers (sshd -T output, which directives miss, Match blocks, the OpenSSH version)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.daemon.status import revocation_status, summary_line
from agent.host.sshd_control import parse_sshd_t
from agent.host.sshd_dropin import dropin_text, missing_directives
from agent.host.trust_files import TrustLayout
from agent.instructions.revocation import openssh_version
from agent.inventory.diff import diff_inventories
from agent.inventory.evaluate import RiskInputs, risk_of
from agent.inventory.model import Inventory, KeyRecord, KrlSummary, PrincipalLine, SshdSummary
from agent.inventory.revocation import REVOKED, UNUSABLE, krl_change, with_krl
from agent.ssh.krl import KrlContents
from agent.ssh.sshd_config import parse_sshd_config
from agent.ssh.sshd_config.overrides import match_directives

FP = "SHA256:" + "A" * 43
KRL_PATH = "/etc/ssh/sshklm-agent/revoked_keys"
SSHD = SshdSummary(
    None, (".ssh/authorized_keys",), None, None, "prohibit-password", False, True, True, KRL_PATH
)
T = datetime(2026, 3, 1, tzinfo=UTC)


def record(kind: str = "authorized_key", **kw: object) -> KeyRecord:
    base = KeyRecord(
        kind, "alice", 1000, "/home/alice/.ssh/authorized_keys", 1, "ssh-ed25519", 256, FP, "MD5:x", ""
    )  # type: ignore[arg-type]
    return base._replace(**kw)


def krl(*fingerprints: str, status: str = "ok") -> KrlSummary:
    contents = KrlContents(sha256=frozenset(fingerprints)) if status == "ok" else None
    return KrlSummary(KRL_PATH, status, contents, None if status == "ok" else "problem")  # type: ignore[arg-type]


def inventory(
    summary: KrlSummary | None, *keys: KeyRecord, principals: tuple[PrincipalLine, ...] = ()
) -> Inventory:
    return Inventory("s", 1, T, None, SSHD, keys, (), krl=summary, principals=principals)


def test_a_listed_key_is_revoked_and_ineffective() -> None:
    revoked = with_krl(record(), krl(FP))
    assert (revoked.revoked, revoked.effective, revoked.ineffective_reason) == (True, False, REVOKED)
    assert with_krl(record(), krl("SHA256:" + "B" * 43)) == record()
    assert with_krl(record(kind="host_key"), krl(FP)) == record(kind="host_key")  # not a user key


def test_an_earlier_reason_is_kept() -> None:
    strict = record(effective=False, ineffective_reason="StrictModes: bad modes on file")
    revoked = with_krl(strict, krl(FP))
    assert (revoked.revoked, revoked.ineffective_reason) == (True, "StrictModes: bad modes on file")


@pytest.mark.parametrize("status", ["missing", "invalid", "unreadable"])
def test_an_unusable_krl_makes_every_login_key_ineffective(status: str) -> None:
    out = with_krl(record(), krl(status=status))
    assert (out.revoked, out.effective, out.ineffective_reason) == (False, False, UNUSABLE)
    assert with_krl(record(kind="identity_key"), krl(status=status)).effective  # not used to log in here
    assert with_krl(record(), krl(status="unchecked")).effective


def test_the_verdict_is_idempotent_and_reversible() -> None:
    revoked = with_krl(record(), krl(FP))
    assert with_krl(revoked, krl(FP)) == revoked
    assert with_krl(revoked, krl()) == record()  # unrevoked: effective again
    assert with_krl(with_krl(record(), krl(status="invalid")), krl()) == record()
    assert with_krl(revoked, None) == record()  # RevokedKeys no longer set


def test_revoked_key_present_is_a_risk() -> None:
    inputs = RiskInputs(
        "authorized_key", "ssh-ed25519", 256, None, None, False, False, False, False, False, True
    )
    assert "revoked_key_present" in risk_of(inputs, None).factors
    assert "revoked_key_present" not in risk_of(inputs._replace(kind="identity_key"), None).factors


def test_krl_changes_are_events() -> None:
    before, after = inventory(krl()), inventory(krl(FP))
    changes = diff_inventories(before, after)
    assert [(c.type, c.path) for c in changes] == [("sshd_config_changed", KRL_PATH)]
    detail = changes[0].detail
    assert detail["directive"] == "RevokedKeys" and detail["revoked_added"] == [FP]
    assert krl_change(krl(FP), krl(FP)) is None
    broken = krl_change(krl(FP), krl(status="invalid"))
    assert broken is not None and broken["after"]["status"] == "invalid" and broken["revoked_removed"] == [FP]


def test_key_records_change_when_the_krl_does() -> None:
    changes = diff_inventories(inventory(krl(), record()), inventory(krl(FP), with_krl(record(), krl(FP))))
    assert {c.type for c in changes} == {"key_changed", "sshd_config_changed"}


def test_principals_changes_are_events() -> None:
    path = "/etc/ssh/sshklm-agent/principals/alice"
    old = (PrincipalLine("alice", path, 1, "ops"),)
    new = (PrincipalLine("alice", path, 1, "ops"), PrincipalLine("alice", path, 2, "root-ish"))
    changes = diff_inventories(inventory(None, principals=old), inventory(None, principals=new))
    assert [(c.type, c.user, c.path, c.detail["added"]) for c in changes] == [
        ("sshd_config_changed", "alice", path, ["root-ish"])
    ]
    assert diff_inventories(inventory(None, principals=new), inventory(None, principals=new)) == []


def test_the_inventory_members_round_trip() -> None:
    inv = inventory(
        krl(FP), with_krl(record(), krl(FP)), principals=(PrincipalLine("alice", "/p/alice", 1, "ops", None),)
    )
    doc = inv.to_json()
    assert doc["sshd"]["revoked_keys"] == KRL_PATH and doc["sshd"]["authorized_principals_file"] is None
    assert doc["krl"]["status"] == "ok" and doc["krl"]["fingerprints"] == [FP] and doc["krl"]["entries"] == 1
    assert doc["keys"][0]["revoked"] is True
    assert doc["authorized_principals"] == [
        {"user": "alice", "path": "/p/alice", "line": 1, "principal": "ops", "options": None}
    ]
    again = Inventory.from_json(doc)
    assert again.krl == inv.krl and again.principals == inv.principals and again.keys == inv.keys


def test_status_field() -> None:
    assert revocation_status(None) is None
    assert revocation_status(inventory(None))["state"] == "not_configured"  # type: ignore[index]
    ok = revocation_status(inventory(krl(FP)))
    assert ok == {"state": "ok", "path": KRL_PATH, "entries": 1, "version": None, "problem": None}
    bad = revocation_status(inventory(krl(status="invalid")))
    assert bad is not None and bad["state"] == "invalid"
    line = summary_line({"keys": 3, "outbox": 0, "watch": {}, "revocation": bad})
    assert "KRL invalid: sshd refuses every public key" in line


def test_sshd_helpers() -> None:
    layout = TrustLayout("/etc/ssh/sshklm-agent")
    effective = parse_sshd_t(
        "port 22\nrevokedkeys /etc/ssh/sshklm-agent/./revoked_keys\ntrustedusercakeys none\n"
        "authorizedprincipalsfile /etc/ssh/sshklm-agent/principals/%u\nport 2222\n"
    )
    assert effective["port"] == "22"
    keywords = ("revokedkeys", "trustedusercakeys", "authorizedprincipalsfile")
    assert missing_directives(effective, layout, keywords) == ["TrustedUserCAKeys"]
    assert "RevokedKeys /etc/ssh/sshklm-agent/revoked_keys\n" in dropin_text(layout)
    assert openssh_version("OpenSSH_9.2p1 Debian-2+deb12u3") == (9, 2)
    assert openssh_version("OpenSSH_7.4") == (7, 4) and openssh_version(None) is None


def test_match_directives_across_includes() -> None:
    files = {"/etc/ssh/sshd_config.d/a.conf": "Match User bob\nRevokedKeys none\n"}
    text = (
        "RevokedKeys /k\nInclude /etc/ssh/sshd_config.d/*.conf\n"
        "Match all\nRevokedKeys /x\nMatch Group g\nRevokedKeys /y\n"
    )
    parsed = parse_sshd_config(text, "/etc/ssh/sshd_config", lambda p: sorted(files.items()))
    found = [(d.value, d.source) for d in match_directives(parsed, "revokedkeys")]
    assert found == [("none", "/etc/ssh/sshd_config.d/a.conf:2"), ("/y", "/etc/ssh/sshd_config:6")]


def test_the_shipped_dropin_is_what_the_agent_installs() -> None:
    shipped = Path(__file__).resolve().parents[2] / "packaging" / "sshd" / "sshklm-agent.conf"

    def directives(text: str) -> list[str]:
        return [line for line in text.splitlines() if line and not line.startswith("#")]

    assert directives(shipped.read_text()) == directives(dropin_text(TrustLayout()))
