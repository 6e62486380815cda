"""Revocation and CA trust under the packaged unit's sandbox (tests/system/nspawn.py runs these steps
after the rotation): the agent's files in /etc/ssh/sshklm-agent, sshd pointed at them, then through
the reference control plane's administrator calls (tests/controlplane/trust_routes.py):

  files    the agent made its directory's files under ProtectSystem=strict (ssh-keygen -k in the
           sandbox): a KRL `ssh-keygen -Q` reads, root 0644 in a root 0755 directory
  sshd     Debian 12: the administrator copies the shipped sshd drop-in and reloads sshd by hand.
           Debian 13: the agent installs it itself (trust.install_sshd_dropin, with the shipped unit
           drop-in that makes sshd_config.d writable for it): `sshd -t`, `sshd -T` and
           `systemctl reload` run from inside the sandbox
  revoke   revoke_keys by fingerprint: sshd refuses that key, another of alice's still logs in, and
           authorized_keys is unchanged; withdrawn: the key logs in again
  ca       trust_ca with principals {"alice": ["alice-oncall"]}: a certificate signed by the CA for
           alice-oncall logs in as alice, one for another principal does not; untrust_ca: refused
  purge    (with the package's remove and purge) remove keeps the files and sshd's logins; purge
           keeps the directory while the administrator's drop-in names it (Debian 12), and takes
           the agent's own drop-in out, reloads sshd, then deletes the directory (Debian 13); a key
           logs in after each

With the test drop-in's SystemCallErrorNumber=kill, the operator's `no_kills` check afterwards
proves that none of the programs the agent ran here hit a filtered system call.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from tests.system.operator import Operator

TRUST_DIR = "/etc/ssh/sshklm-agent"
KRL = f"{TRUST_DIR}/revoked_keys"
SSHD_DROPIN = "/etc/ssh/sshd_config.d/sshklm-agent.conf"
EXAMPLES = "/usr/share/doc/sshklm-agent/examples"
UNIT_DROPIN = "/etc/systemd/system/sshklm-agent.service.d/install-sshd-dropin.conf"
PRINCIPAL = "alice-oncall"


class TrustSteps:
    def __init__(self, op: Operator) -> None:
        self.op = op
        self.c = op.c
        # Debian 13: the agent installs its sshd drop-in; Debian 12: the administrator does.
        self.agent_installs = self.c.suite != "bookworm"

    # -- helpers ---------------------------------------------------------------------------

    def admin(self) -> httpx.Client:
        assert self.op.cp is not None
        token = self.op.cp.admin_token()
        return httpx.Client(base_url=self.op.cp.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        with self.admin() as client:
            answer = client.post(path, json=body)
        assert answer.status_code in (201, 202), f"POST {path}: {answer.status_code} {answer.text[:300]}"
        return dict(answer.json())

    def part_status(self, kind: str, object_id: str, action: str) -> str:
        with self.admin() as client:
            doc = client.get(f"/v1/{kind}/{object_id}").json()
        return str(doc["hosts"][self.op.host_id][action]["status"])

    def wait_applied(self, kind: str, object_id: str, action: str) -> None:
        from tests.system.operator import wait_for

        wait_for(
            lambda: self.part_status(kind, object_id, action) not in ("pending",),
            f"the {action} result of {object_id}",
        )
        status = self.part_status(kind, object_id, action)
        assert status == "applied", f"{action} {object_id}: {status}"

    def authorized_keys_digest(self) -> str:
        from tests.system.operator import AK

        return hashlib.sha256(self.c.run("cat", AK).stdout.encode()).hexdigest()

    def sshd_t(self, keyword: str) -> str:
        for line in self.c.run("sshd", "-T").stdout.splitlines():
            if line.startswith(keyword + " "):
                return line.split(" ", 1)[1]
        return ""

    def stat(self, *paths: str) -> list[str]:
        return self.c.run("stat", "-c", "%U:%G %a", *paths).stdout.split("\n")[: len(paths)]

    # -- steps -----------------------------------------------------------------------------

    def files(self) -> str:
        from tests.system.operator import wait_for

        wait_for(lambda: self.op.exists(KRL), "the agent's KRL")
        wait_for(lambda: self.op.exists(f"{TRUST_DIR}/trusted_user_ca_keys"), "the agent's CA keys file")
        modes = self.stat(TRUST_DIR, KRL, f"{TRUST_DIR}/trusted_user_ca_keys", f"{TRUST_DIR}/principals")
        assert modes == ["root:root 755", "root:root 644", "root:root 644", "root:root 755"], modes
        listed = self.c.run("ssh-keygen", "-Q", "-l", "-f", KRL).stdout
        assert "KRL version" in listed, listed
        return f"{TRUST_DIR}: {', '.join(modes)}; ssh-keygen -Q reads the KRL"

    def sshd(self) -> str:
        from tests.system.operator import CONFIG, UNIT, wait_for

        before = self.sshd_t("revokedkeys")
        assert before == "none", f"RevokedKeys already {before}"
        if self.agent_installs:
            self.c.run(
                "install",
                "-D",
                "-m",
                "644",
                f"{EXAMPLES}/sshklm-agent.service.d/install-sshd-dropin.conf",
                UNIT_DROPIN,
            )
            self.c.sh(f"sed -i 's#^install_sshd_dropin = false#install_sshd_dropin = true#' {CONFIG}")
            cursor = self.op.journal_cursor()
            self.c.run("systemctl", "daemon-reload")
            self.c.run("systemctl", "restart", UNIT)
            self.op.wait_active()
            wait_for(
                lambda: "installed and sshd reloaded" in self.op.journal(cursor), "the drop-in installed"
            )
            how = "the agent installed its drop-in, reloaded sshd (sshd -t/-T, systemctl reload: sandboxed)"
        else:
            self.c.run("install", "-m", "644", f"{EXAMPLES}/sshd_config.d/sshklm-agent.conf", SSHD_DROPIN)
            self.c.run("sshd", "-t")
            self.c.run("systemctl", "reload", "ssh.service")
            how = "the administrator copied the shipped drop-in and reloaded sshd"
        assert self.sshd_t("revokedkeys") == KRL
        assert self.sshd_t("trustedusercakeys") == f"{TRUST_DIR}/trusted_user_ca_keys"
        assert self.sshd_t("authorizedprincipalsfile") == f"{TRUST_DIR}/principals/%u"
        assert self.op.login("new"), "alice's key does not log in with sshd using the agent's (empty) KRL"
        # Not checked here: `status` showing revocation "ok" at once. The watcher reports only files
        # it knows, so a new file in sshd_config.d is seen at the next full rescan or reload.
        return how

    def revoke(self) -> str:
        fp = self.op.keys["new"][2]
        digest = self.authorized_keys_digest()
        started = time.monotonic()
        doc = self.call("/v1/revocations", {"hosts": [self.op.host_id], "fingerprints": [fp]})
        revocation_id = doc["revocation_id"]
        while self.op.login("new"):
            assert time.monotonic() - started < 90, "sshd never refused the revoked key"
            time.sleep(0.2)
        latency = time.monotonic() - started
        self.wait_applied("revocations", revocation_id, "revoke")
        assert self.op.login("extra"), "another of alice's keys is refused too: the KRL is not specific"
        assert self.authorized_keys_digest() == digest, "authorized_keys changed"
        assert "hash: SHA256:" in self.c.run("ssh-keygen", "-Q", "-l", "-f", KRL).stdout
        self.call(f"/v1/revocations/{revocation_id}/withdraw", {})
        self.wait_applied("revocations", revocation_id, "unrevoke")
        assert self.op.login("new"), "the key does not log in after unrevoke_keys"
        assert "hash: SHA256:" not in self.c.run("ssh-keygen", "-Q", "-l", "-f", KRL).stdout
        assert self.authorized_keys_digest() == digest, "authorized_keys changed"
        mode = (self.op.status().get("instructions") or {}).get("mode", "unknown")
        self.op.facts.append(f"revocation: call -> sshd refuses in {latency:.1f} s (instructions: {mode})")
        return f"refused {latency:.1f} s after the call, authorized_keys unchanged; withdrawn: logs in again"

    def ca(self) -> str:
        from tests.system.operator import wait_for

        keys_before = self.op.status()["keys"]
        tmp = self.op.tmp
        ca = tmp / "user_ca"
        for key in (ca, tmp / "id_cert"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", key.name, "-f", str(key)], check=True
            )
        good = self.certificate(ca, tmp / "id_cert", PRINCIPAL, serial=7)
        other = self.certificate(ca, tmp / "id_cert", "someone-else", serial=8)
        body = {
            "hosts": [self.op.host_id],
            "public_key": ca.with_suffix(".pub").read_text().strip(),
            "principals": {"alice": [PRINCIPAL]},
        }
        ca_id = self.call("/v1/cas", body)["ca_id"]
        self.wait_applied("cas", ca_id, "trust")
        text = self.c.run("cat", f"{TRUST_DIR}/principals/alice").stdout
        principals = [line for line in text.splitlines() if line and not line.startswith("#")]
        assert principals == [PRINCIPAL], text
        assert self.op.login_with(tmp / "id_cert", good), "the certificate for alice-oncall does not log in"
        assert not self.op.login_with(tmp / "id_cert", other), "a certificate for another principal logs in"
        self.call(f"/v1/cas/{ca_id}/untrust", {})
        self.wait_applied("cas", ca_id, "untrust")
        assert not self.op.login_with(tmp / "id_cert", good), "the certificate logs in after untrust_ca"
        assert not self.op.exists(f"{TRUST_DIR}/principals/alice"), "alice's principals file left"
        # The CA key (a key of the inventory while trusted) is gone from it too: the next checks count keys.
        wait_for(lambda: self.op.status()["keys"] == keys_before, "the CA key out of the inventory")
        return "certificate for alice-oncall logged in, another principal's did not; untrust_ca: refused"

    @staticmethod
    def certificate(ca: Path, key: Path, principal: str, serial: int) -> Path:
        out = key.parent / f"{key.name}-{principal}-cert.pub"
        signed = key.parent / f"{key.name}-cert.pub"
        subprocess.run(
            ["ssh-keygen", "-q", "-s", str(ca), "-I", f"system-test-{principal}", "-n", principal]
            + ["-V", "-1m:+10m", "-z", str(serial), f"{key}.pub"],
            check=True,
        )
        signed.rename(out)
        return out

    # -- remove and purge (called from Operator.remove_purge) --------------------------------

    def after_remove(self) -> None:
        assert self.op.exists(KRL) and self.op.exists(SSHD_DROPIN), "remove took the trust files"
        assert self.sshd_t("revokedkeys") == KRL
        assert self.op.login("new"), "sshd refuses the key after apt-get remove"

    def after_purge(self, said: str) -> str:
        if self.agent_installs:
            assert "removed the sshd drop-in it had installed" in said, said
            assert not self.op.exists(SSHD_DROPIN), "the agent's sshd drop-in left after purge"
            assert not self.op.exists(TRUST_DIR), f"{TRUST_DIR} left after purge"
            assert self.sshd_t("revokedkeys") == "none"
            outcome = "purge took the agent's sshd drop-in out, reloaded sshd, deleted the trust files"
        else:
            assert f"kept {TRUST_DIR}" in said and SSHD_DROPIN in said, said
            assert self.op.exists(KRL) and self.op.exists(SSHD_DROPIN)
            assert self.sshd_t("revokedkeys") == KRL
            outcome = "purge kept the trust files the administrator's sshd drop-in names, and said so"
        assert self.op.login("new"), "sshd refuses the key after the purge"
        return outcome + "; alice's key still logs in"
