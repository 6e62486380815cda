"""End to end with a real OpenSSH sshd: key revocation (revoke_keys / unrevoke_keys) and CA trust
(trust_ca / untrust_ca) issued by the reference control plane, applied by the Applier to the
agent's real files, proven by real `ssh` logins. Discovery and the drop-in installer run against
the same sshd. Root only (useradd, sshd); skipped with the reason otherwise.

The agent's directory is under /run, not /tmp: sshd reads a principals file as the user and,
under StrictModes, refuses it when any directory above it (like /tmp, mode 1777) is writable by
others.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.daemon.usage_parse import parse_sshd_message
from agent.host.keygen import SshKeygen
from agent.host.safefs import HostFS
from agent.host.scan import ScanContext, ScanSettings, scan_host
from agent.host.sshd_control import SshdControl, SshdError
from agent.host.sshd_dropin import DROPIN_NAME, DropinConflict, install_dropin
from agent.host.trust_files import AgentTrustFiles, TrustLayout
from agent.host.users import NssUserSource
from agent.instructions.apply import Applier, ApplierSettings
from agent.instructions.host_files import SafeHostFiles
from agent.instructions.trust import SshdView, Trust
from agent.inventory.evaluate import Policy
from agent.inventory.model import Inventory
from agent.inventory.revocation import UNUSABLE
from agent.store.db import open_database
from agent.store.state import StateStore
from agent.store.trust_state import TrustState
from tests.controlplane import ControlPlane
from tests.integration.sshd_support import (
    REAL_SSHD_MARKS,
    NullHooks,
    enrolled_host_id,
    free_port,
    make_site,
    ssh_login,
    sshd_config_text,
    start_sshd,
)

pytestmark = REAL_SSHD_MARKS


def trust_directives(layout: TrustLayout) -> str:
    """The three lines of the shipped drop-in, for `layout`."""
    return (
        f"RevokedKeys {layout.revoked_keys}\nTrustedUserCAKeys {layout.trusted_user_ca_keys}\n"
        f"AuthorizedPrincipalsFile {layout.principals_template}\n"
    )


def make_trust(fs: HostFS, layout: TrustLayout, config: Path, store: StateStore, work: Path) -> Trust:
    return Trust(
        AgentTrustFiles(fs, layout),
        SshKeygen(),
        SshdView(SshdControl(config=str(config)), fs, str(config)),
        TrustState(store),
        layout,
        work_dir=str(work),
        sshd_version=lambda: "OpenSSH_9.2p1",
    )


@dataclass
class Env:
    user: str
    home: Path
    port: int
    tmp: Path
    base: Path  # under /run (see the module docstring)
    layout: TrustLayout
    config: Path
    cp: ControlPlane
    host_id: str
    applier: Applier
    trust: Trust
    keys: dict[str, tuple[Path, str, str]]  # name -> (private key, public line, fingerprint)
    serial: int = 100

    @property
    def ak(self) -> Path:
        return self.home / ".ssh" / "authorized_keys"

    @property
    def krl(self) -> Path:
        return Path(self.layout.revoked_keys)

    def login(self, key: str) -> bool:
        return ssh_login(self.user, self.port, self.keys[key][0])

    def login_cert(self, key: str, cert: Path) -> bool:
        return ssh_login(self.user, self.port, self.keys[key][0], certificate=cert)

    def apply(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        token = self.cp.issue_instruction(self.host_id, kind, body)
        _, result = self.applier.handle(token)
        return result

    def sign(self, ca: str, key: str, principals: str, validity: str = "-1m:+60s") -> tuple[Path, int]:
        """A user certificate for `key` signed by CA `ca`; its path and (fresh) serial."""
        self.serial += 1
        subprocess.run(
            ["ssh-keygen", "-q", "-s", str(self.keys[ca][0]), "-I", f"{key}@e2e-{self.serial}"]
            + ["-n", principals, "-V", validity, "-z", str(self.serial), str(self.keys[key][0]) + ".pub"],
            check=True,
        )
        cert = Path(f"{self.keys[key][0]}-{self.serial}-cert.pub")  # one file per certificate
        Path(str(self.keys[key][0]) + "-cert.pub").rename(cert)
        return cert, self.serial

    def scan(self) -> Inventory:
        ctx = ScanContext(now=datetime.now(UTC), local_tz=UTC)
        settings = ScanSettings(sshd_config=str(self.config), identity_keys=False, orphan_homes=False)
        return scan_host(HostFS("/"), NssUserSource(), settings, ctx)[2]

    def sshd_log(self) -> str:
        return (self.tmp / "sshd.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("trust")
    site = make_site(tmp, authorized=("member", "bystander"), others=("certkey", "ca", "otherca"))
    cp: ControlPlane | None = None
    try:
        layout = TrustLayout(str(site.trust_dir))
        cp = ControlPlane.start()
        host_id = enrolled_host_id(cp.url, cp.bootstrap_token, "e2e-trust")
        fs = HostFS("/")
        store = StateStore(open_database(tmp / "state"))
        trust = make_trust(fs, layout, site.config, store, tmp / "state" / "krl")
        policy = Policy(1, 2048, frozenset({"ssh-ed25519"}), 365, False, 3600)
        settings = ApplierSettings(
            sshd_config=str(site.config), public_keys=(cp.signing_public_key_openssh,), leeway_s=30
        )
        applier = Applier(
            settings,
            SafeHostFiles(fs, str(tmp / "state" / "backups")),
            NssUserSource(),
            store,
            NullHooks(host_id, policy),
            clock=lambda: datetime.now(UTC),
            trust=trust,
        )
        applier.start()  # creates the agent's files: a valid, empty KRL before sshd ever reads it
        site.start_sshd()
        yield Env(
            site.user,
            site.home,
            site.port,
            tmp,
            site.base,
            layout,
            site.config,
            cp,
            host_id,
            applier,
            trust,
            site.keys,
        )
    finally:
        if cp is not None:
            cp.stop()
        site.close()


def _record(inventory: Inventory, user: str, fingerprint: str) -> Any:
    found = [k for k in inventory.keys if k.user == user and k.fingerprint == fingerprint]
    assert len(found) == 1, found
    return found[0]


def _keygen_says(krl: Path, pub: str) -> str:
    """The oracle: `ssh-keygen -Q -f KRL key.pub` -> "ok" / "REVOKED"."""
    out = subprocess.run(
        ["ssh-keygen", "-Q", "-f", str(krl), pub], capture_output=True, text=True, check=False
    )
    return out.stdout.strip().rsplit(": ", 1)[-1]


def test_agent_files_and_sshd_configuration(env: Env) -> None:
    """The files exist with the modes sshd needs, before any instruction; sshd -T names them."""
    for path, mode in (
        (env.layout.directory, 0o755),
        (env.layout.principals_dir, 0o755),
        (env.layout.revoked_keys, 0o644),
        (env.layout.trusted_user_ca_keys, 0o644),
    ):
        st = os.stat(path)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, mode), path
    assert env.krl.read_bytes().startswith(b"SSHKRL\n\0")
    effective = SshdControl(config=str(env.config)).effective()
    assert effective["revokedkeys"] == env.layout.revoked_keys
    assert env.login("member") and env.login("bystander")


def test_revoke_by_fingerprint_refuses_without_touching_authorized_keys(env: Env) -> None:
    fp = env.keys["member"][2]
    assert env.login("member")
    before = env.ak.read_bytes(), os.stat(env.ak).st_ino
    result = env.apply("revoke_keys", {"revocation_id": "rvk_e2e1", "fingerprints": [fp]})
    assert result["status"] == "applied", result
    assert result["fingerprints_after"] == [fp]
    assert not env.login("member")
    assert env.login("bystander")
    assert (env.ak.read_bytes(), os.stat(env.ak).st_ino) == before  # authorized_keys untouched
    assert "revoked by file" in env.sshd_log()
    assert _keygen_says(env.krl, str(env.keys["member"][0]) + ".pub") == "REVOKED"
    assert _keygen_says(env.krl, str(env.keys["bystander"][0]) + ".pub") == "ok"
    st = os.stat(env.krl)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o644)

    # Discovery: the key is revoked, ineffective, and a risk; the KRL's content is in the inventory.
    inventory = env.scan()
    record = _record(inventory, env.user, fp)
    assert (record.revoked, record.effective, record.ineffective_reason) == (True, False, "revoked")
    assert "revoked_key_present" in record.risk.factors
    assert _record(inventory, env.user, env.keys["bystander"][2]).effective
    assert inventory.sshd.revoked_keys == env.layout.revoked_keys
    assert inventory.sshd.authorized_principals_file == env.layout.principals_template
    assert inventory.krl is not None and inventory.krl.status == "ok"
    assert inventory.krl.contents is not None and fp in inventory.krl.contents.sha256

    # The same effect again: applied, and the KRL is not rewritten.
    inode = os.stat(env.krl).st_ino
    again = env.apply("revoke_keys", {"revocation_id": "rvk_e2e1b", "fingerprints": [fp]})
    assert again["status"] == "applied", again
    assert os.stat(env.krl).st_ino == inode


def test_unrevoke_restores_the_key(env: Env) -> None:
    fp = env.keys["member"][2]
    result = env.apply("unrevoke_keys", {"revocation_id": "rvk_e2e1", "fingerprints": [fp]})
    assert result["status"] == "applied", result
    assert result["fingerprints_after"] == []
    assert env.login("member") and env.login("bystander")
    assert _record(env.scan(), env.user, fp).revoked is False


def test_revoke_full_key_then_unrevoke_by_fingerprint(env: Env) -> None:
    line, fp = env.keys["member"][1], env.keys["member"][2]
    assert env.apply("revoke_keys", {"revocation_id": "rvk_e2e2", "keys": [line]})["status"] == "applied"
    assert not env.login("member")
    # Unrevoking the fingerprint takes out the full-key entry too.
    assert (
        env.apply("unrevoke_keys", {"revocation_id": "rvk_e2e2", "fingerprints": [fp]})["status"] == "applied"
    )
    assert env.login("member")


def test_corrupt_krl_placed_by_hand_is_reported_and_rewritten_when_told(env: Env) -> None:
    good = env.krl.read_bytes()
    env.krl.write_bytes(b"SSHKRL\n\0" + b"\xff" * 40)  # a KRL header, then garbage
    assert not env.login("bystander")  # sshd refuses EVERY public key: the reason for all the care
    inventory = env.scan()
    assert inventory.krl is not None and inventory.krl.status == "invalid"
    assert any(
        e.path == env.layout.revoked_keys and "refuses every public key" in e.error for e in inventory.errors
    )
    bystander = _record(inventory, env.user, env.keys["bystander"][2])
    assert (bystander.effective, bystander.ineffective_reason) == (False, UNUSABLE)
    env.trust.maintain()  # the periodic check reports, it does not overwrite a file changed by hand
    assert env.krl.read_bytes() != good and not env.login("bystander")
    # Told to: any revocation instruction rebuilds the KRL from the agent's own record.
    other = env.keys["otherca"][2]
    result = env.apply("unrevoke_keys", {"revocation_id": "rvk_repair", "fingerprints": [other]})
    assert result["status"] == "applied", result
    assert env.krl.read_bytes().startswith(b"SSHKRL\n\0")
    assert env.login("bystander") and env.login("member")
    assert env.scan().krl.status == "ok"  # type: ignore[union-attr]


def test_removed_krl_is_recreated_by_the_check(env: Env) -> None:
    env.krl.unlink()
    assert not env.login("bystander")  # a missing RevokedKeys file: every key refused
    assert env.scan().krl.status == "missing"  # type: ignore[union-attr]
    env.trust.maintain()
    assert env.login("bystander")


def test_sshd_not_configured_changes_nothing(env: Env, tmp_path: Path) -> None:
    """sshd_config without our RevokedKeys, or with a Match block pointing elsewhere: failed /
    SSHD_NOT_CONFIGURED naming the directive, and the KRL stays as it was."""
    tmp_path.chmod(0o755)
    shutil.copy(env.tmp / "hostkey", tmp_path / "hostkey")
    plain = tmp_path / "plain_config"
    plain.write_text(sshd_config_text(tmp_path, free_port()))
    match = tmp_path / "match_config"
    match.write_text(
        sshd_config_text(tmp_path, free_port(), trust_directives(env.layout))
        + "Match User nobody\n    RevokedKeys none\n"
    )
    before = env.krl.read_bytes()
    fs = HostFS("/")
    for config, expected in ((plain, "RevokedKeys is none"), (match, "in a Match block")):
        store = StateStore(open_database(tmp_path / f"state-{config.name}"))
        trust = make_trust(fs, env.layout, config, store, tmp_path / "work")
        applier = Applier(
            ApplierSettings(sshd_config=str(config), public_keys=(env.cp.signing_public_key_openssh,)),
            SafeHostFiles(fs, str(tmp_path / "backups")),
            NssUserSource(),
            store,
            NullHooks(env.host_id, Policy(1, 2048, frozenset({"ssh-ed25519"}), 365, False, 3600)),
            clock=lambda: datetime.now(UTC),
            trust=trust,
        )
        token = env.cp.issue_instruction(
            env.host_id, "revoke_keys", {"revocation_id": "rvk_nc", "fingerprints": [env.keys["member"][2]]}
        )
        _, result = applier.handle(token)
        assert result["status"] == "failed", result
        assert result["error"]["code"] == "SSHD_NOT_CONFIGURED"
        assert expected in result["error"]["message"] and "RevokedKeys" in result["error"]["message"]
        assert env.krl.read_bytes() == before
    assert env.login("member")


def test_certificates_under_a_trusted_ca(env: Env) -> None:
    user = env.user
    ca_line, ca_fp = env.keys["ca"][1], env.keys["ca"][2]
    oncall = f"{user}-oncall"
    cert, _ = env.sign("ca", "certkey", oncall)
    assert not env.login_cert("certkey", cert)  # CA not trusted yet
    result = env.apply("trust_ca", {"ca_id": "ca_e2e", "public_key": ca_line, "principals": {user: [oncall]}})
    assert result["status"] == "applied", result
    assert result["fingerprints_after"] == [ca_fp]
    principals = Path(env.layout.principals_file(user))
    st = os.stat(principals)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (
        0,
        0,
        0o644,
    )  # root's; readable by sshd as the user
    assert oncall in principals.read_text().split()

    assert env.login_cert("certkey", cert)  # signed by the CA for a principal the account lists
    # key_used: sshd logs the key id, serial and CA fingerprint of a certificate login.
    hits = [parse_sshd_message(line) for line in env.sshd_log().splitlines()]  # -E: no syslog prefix
    cert_hits = [h for h in hits if h is not None and h.cert_id is not None]
    assert cert_hits and cert_hits[-1].user == user and cert_hits[-1].ca_fingerprint == ca_fp
    assert cert_hits[-1].cert_serial == env.serial

    other, _ = env.sign("ca", "certkey", "someone-else")
    assert not env.login_cert("certkey", other)  # a principal the account does not list, never
    named, _ = env.sign("ca", "certkey", user)
    assert not env.login_cert("certkey", named)  # nor the account's own name: the principals file decides
    foreign, _ = env.sign("otherca", "certkey", oncall)
    assert not env.login_cert("certkey", foreign)  # a CA that is not trusted
    ended, _ = env.sign("ca", "certkey", oncall, validity="20200101:20200102")
    assert not env.login_cert("certkey", ended)  # after its validity

    # A certificate valid for a few seconds: in, then out once it has expired.
    short, _ = env.sign("ca", "certkey", oncall, validity="-1m:+4s")
    assert env.login_cert("certkey", short)
    time.sleep(5)
    assert not env.login_cert("certkey", short)

    # Discovery: the CA and the principals are in the inventory.
    inventory = env.scan()
    assert any(k.kind == "trusted_user_ca" and k.fingerprint == ca_fp for k in inventory.keys)
    assert [(p.user, p.principal) for p in inventory.principals if p.user == user] == [(user, oncall)]

    # Revoking its serial through the KRL refuses a certificate that is still valid.
    cert, serial = env.sign("ca", "certkey", oncall)
    assert env.login_cert("certkey", cert)
    body = {"revocation_id": "rvk_cert", "certificates": [{"ca_key": ca_line, "serials": [serial]}]}
    assert env.apply("revoke_keys", body)["status"] == "applied"
    assert not env.login_cert("certkey", cert)
    fresh, _ = env.sign("ca", "certkey", oncall)
    assert env.login_cert("certkey", fresh)  # another serial still logs in
    assert env.apply("unrevoke_keys", body)["status"] == "applied"
    assert env.login_cert("certkey", cert)
    # ... and by key id.
    by_id = {
        "revocation_id": "rvk_id",
        "certificates": [{"ca_key": ca_line, "key_ids": [f"certkey@e2e-{serial}"]}],
    }
    assert env.apply("revoke_keys", by_id)["status"] == "applied"
    assert not env.login_cert("certkey", cert)
    assert env.apply("unrevoke_keys", by_id)["status"] == "applied"

    # After untrust_ca, a fresh certificate no longer logs in, and the principals file is gone.
    result = env.apply("untrust_ca", {"ca_id": "ca_e2e"})
    assert result["status"] == "applied", result
    fresh, _ = env.sign("ca", "certkey", oncall)
    assert not env.login_cert("certkey", fresh)
    assert not principals.exists()
    assert env.login("bystander")


def test_dropin_installed_checked_and_rolled_back(env: Env, tmp_path: Path) -> None:
    """A second sshd whose config Includes a drop-in directory: the agent installs the drop-in,
    sshd -t / -T accept it, sshd is reloaded, and a revoked key is refused there too. A config
    without the Include gets the drop-in rolled back; one with its own RevokedKeys is not touched."""
    tmp_path.chmod(0o755)
    # Under /run like the agent's directory: every directory above a file root writes for sshd must
    # be root's and not group/other-writable, and /tmp is world-writable (docs/rotation.md).
    dropins = env.base / "sshd_config.d"
    port = free_port()
    config = tmp_path / "sshd_config"
    config.write_text(f"Include {dropins}/*.conf\n" + sshd_config_text(tmp_path, port))
    sshd = start_sshd(tmp_path, config, port)
    fs = HostFS("/")
    try:
        control = SshdControl(config=str(config), reload_command=("kill", "-HUP", str(sshd.pid)))
        result = install_dropin(fs, str(dropins), env.layout, control)
        assert (result.installed, result.reloaded) == (True, True), result
        assert control.effective()["revokedkeys"] == env.layout.revoked_keys
        assert stat.S_IMODE(os.stat(dropins / DROPIN_NAME).st_mode) == 0o644
        fp = env.keys["member"][2]
        assert (
            env.apply("revoke_keys", {"revocation_id": "rvk_dropin", "fingerprints": [fp]})["status"]
            == "applied"
        )
        deadline = time.monotonic() + 10  # sshd re-executes itself on SIGHUP
        while ssh_login(env.user, port, env.keys["member"][0]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not ssh_login(env.user, port, env.keys["member"][0])
        assert ssh_login(env.user, port, env.keys["bystander"][0])
        assert (
            env.apply("unrevoke_keys", {"revocation_id": "rvk_dropin", "fingerprints": [fp]})["status"]
            == "applied"
        )
        # Installing again changes nothing.
        again = install_dropin(fs, str(dropins), env.layout, control)
        assert (again.installed, again.reloaded) == (True, False)
    finally:
        sshd.terminate()
        sshd.wait(timeout=10)

    # Not included: sshd -T does not show the values, so the drop-in is taken back out.
    excluded = tmp_path / "no_include_config"
    excluded.write_text(sshd_config_text(tmp_path, free_port()))
    other_dir = env.base / "unused.d"
    control = SshdControl(config=str(excluded), reload_command=("false",))
    with pytest.raises(SshdError, match="does not read"):
        install_dropin(fs, str(other_dir), env.layout, control)
    assert not (other_dir / DROPIN_NAME).exists()

    # The administrator's own RevokedKeys: never overridden.
    own = tmp_path / "own_config"
    own.write_text(
        f"Include {other_dir}/*.conf\n"
        + sshd_config_text(tmp_path, free_port(), "RevokedKeys /etc/ssh/admin_krl\n")
    )
    with pytest.raises(DropinConflict, match="RevokedKeys"):
        install_dropin(
            fs, str(other_dir), env.layout, SshdControl(config=str(own), reload_command=("false",))
        )
    assert not (other_dir / DROPIN_NAME).exists()
