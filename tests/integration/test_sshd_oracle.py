"""Oracle: our sshd_config resolution against the real `sshd -T -C user=...` (OpenSSH 9.2).

Each case writes a configuration (plus included files) to a tmp dir, asks sshd for its
effective configuration for a few real local users, and compares the fields we model.
Skipped when /usr/sbin/sshd is absent. sshd -T runs unprivileged given its own host key and an
existing /run/sshd; only the check of the system's own configuration needs root.
"""

from __future__ import annotations

import glob
import grp
import os
import pwd
import subprocess
from pathlib import Path

import pytest

from agent.ssh.sshd_config import (
    SSHD_HOME,
    EffectiveSshdConfig,
    MatchContext,
    parse_sshd_config,
    resolve,
)
from agent.ssh.sshd_config.syntax import tilde_expand

SSHD = "/usr/sbin/sshd"

pytestmark = pytest.mark.skipif(not os.path.exists(SSHD), reason="sshd is not installed")

# sshd expands "~" in AuthorizedKeysFile/AuthorizedPrincipalsFile with the home of the uid it runs
# as. The agent assumes the real sshd (root: SSHD_HOME); the oracle sshd -T here runs as whoever
# runs the tests, so its "~" is compared with that user's home.
ORACLE_HOME = pwd.getpwuid(os.geteuid()).pw_dir

USERS = ("root", "daemon", "nobody")


@pytest.fixture(scope="module")
def host_key(tmp_path_factory: pytest.TempPathFactory) -> str:
    if not os.path.isdir("/run/sshd"):  # sshd -T checks the privilege separation directory exists
        if os.geteuid() != 0:
            pytest.skip("sshd -T needs /run/sshd, which only root can create")
        os.makedirs("/run/sshd")
    path = tmp_path_factory.mktemp("hostkey") / "hk"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return str(path)


def _groups(user: str) -> frozenset[str]:
    pw = pwd.getpwnam(user)
    return frozenset(grp.getgrgid(g).gr_name for g in os.getgrouplist(user, pw.pw_gid))


def _sshd_t(config: Path, spec: str) -> dict[str, list[str]]:
    out = subprocess.run(
        [SSHD, "-T", "-f", str(config), "-C", spec], cwd="/", capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, list[str]] = {}
    for line in out.stdout.splitlines():
        key, _, value = line.partition(" ")
        result.setdefault(key, []).append(value)
    return result


def _loader(pattern: str) -> list[tuple[str, str]]:
    return [(p, Path(p).read_text()) for p in sorted(glob.glob(pattern))]


def _string(value: str | None) -> str:
    return "none" if value is None else value


def _collapse(path: str) -> str:
    # sshd joins its cwd "/" and a relative path with another "/": "//rel" is the same file.
    return "/" + path.lstrip("/") if path.startswith("//") else path


def _compare(ours: EffectiveSshdConfig, theirs: dict[str, list[str]]) -> None:
    expanded = [tilde_expand(t, ORACLE_HOME, None) for t in ours.authorized_keys_files]
    assert theirs.get("authorizedkeysfile", ["none"]) == [" ".join(expanded) or "none"]
    assert theirs["authorizedkeyscommand"] == [_string(ours.authorized_keys_command)]
    assert theirs["authorizedkeyscommanduser"] == [_string(ours.authorized_keys_command_user)]
    assert theirs["authorizedprincipalscommand"] == [_string(ours.authorized_principals_command)]
    assert theirs["authorizedprincipalscommanduser"] == [_string(ours.authorized_principals_command_user)]
    principals = ours.authorized_principals_file
    if principals is not None:
        principals = tilde_expand(principals, ORACLE_HOME, None)
    assert theirs["authorizedprincipalsfile"] == [_string(principals)]
    assert [_collapse(v) for v in theirs["trustedusercakeys"]] == [_string(ours.trusted_user_ca_keys)]
    assert [_collapse(v) for v in theirs["revokedkeys"]] == [_string(ours.revoked_keys)]
    assert theirs["strictmodes"] == ["yes" if ours.strict_modes else "no"]
    assert theirs["pubkeyauthentication"] == ["yes" if ours.pubkey_authentication else "no"]
    assert theirs["passwordauthentication"] == ["yes" if ours.password_authentication else "no"]
    prl = theirs["permitrootlogin"][0].replace("without-password", "prohibit-password")
    assert prl == ours.permit_root_login
    assert [_collapse(v) for v in theirs["hostkey"]] == list(ours.host_keys)
    assert [_collapse(v) for v in theirs.get("hostcertificate", [])] == list(ours.host_certificates)


def _check(tmp_path: Path, host_key: str, main: str, files: dict[str, str] | None = None) -> None:
    for name, text in (files or {}).items():
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text.replace("@D@", str(tmp_path)))
    config = tmp_path / "sshd_config"
    config.write_text(f"HostKey {host_key}\n" + main.replace("@D@", str(tmp_path)))
    parsed = parse_sshd_config(config.read_text(), str(config), _loader)
    assert parsed.errors == ()
    _compare(resolve(parsed, None), _sshd_t(config, "user=nosuchuser-zz,lport=22"))
    for user in USERS:
        ours = resolve(parsed, MatchContext(user, _groups(user)))
        _compare(ours, _sshd_t(config, f"user={user},lport=22"))
        # (sshd 9.2 -T aborts on "Match LocalPort" without lport=, so every spec carries one.)
        # With the connection known, blocks on other addresses still do not match.
        _compare(
            ours, _sshd_t(config, f"user={user},host=client.example,addr=192.0.2.7,laddr=192.0.2.1,lport=22")
        )


def test_the_agent_expands_tilde_with_roots_home() -> None:
    # What the real sshd (running as root) does; the oracle below may run as another user.
    assert pwd.getpwuid(0).pw_dir == SSHD_HOME


def test_defaults(tmp_path: Path, host_key: str) -> None:
    _check(tmp_path, host_key, "")


def test_first_value_wins_and_syntax(tmp_path: Path, host_key: str) -> None:
    _check(
        tmp_path,
        host_key,
        """
# comment
passwordauthentication=no
PasswordAuthentication yes
PUBKEYAUTHENTICATION  =  yes
AuthorizedKeysFile "/etc/ssh/keys/%u" .ssh/authorized_keys # trailing comment
AuthorizedKeysFile .ssh/ignored
StrictModes No
PermitRootLogin without-password
TrustedUserCAKeys relative/ca.pub
RevokedKeys relative/krl
RevokedKeys /ignored/second
AuthorizedPrincipalsFile ~/principals/%u
HostCertificate @D@/hk-cert.pub
""",
    )


def test_match_user_group_negation_wildcards(tmp_path: Path, host_key: str) -> None:
    _check(
        tmp_path,
        host_key,
        """
PermitRootLogin no
Match User r?ot
    AuthorizedKeysFile /etc/ssh/root_keys
    PermitRootLogin prohibit-password
Match User *,!root Group daemon
    AuthorizedKeysFile /etc/ssh/daemon_keys %h/.ssh/authorized_keys
    PasswordAuthentication no
Match Group nogroup,!daemon
    AuthorizedKeysFile none
    TrustedUserCAKeys /etc/ssh/ca.pub
    RevokedKeys /etc/ssh/other_krl
Match User nobody
    AuthorizedKeysFile /never/used
    PubkeyAuthentication no
""",
    )


def test_connection_criteria_and_match_all(tmp_path: Path, host_key: str) -> None:
    _check(
        tmp_path,
        host_key,
        """
AuthorizedKeysCommandUser nobody
Match Address 10.0.0.0/8 User root
    AuthorizedKeysFile /etc/ssh/from_lan/%u
Match Host *.internal
    PasswordAuthentication no
Match LocalPort 2222
    PubkeyAuthentication no
Match All
    AuthorizedKeysCommand /usr/local/bin/keys %u
    PermitRootLogin no
""",
    )


def test_includes_globs_match_scoping(tmp_path: Path, host_key: str) -> None:
    _check(
        tmp_path,
        host_key,
        """
Include @D@/conf.d/*.conf
PasswordAuthentication yes
Match User root
    Include @D@/root.d/*.conf
    PubkeyAuthentication yes
Match User nobody
    Include @D@/nobody.conf
""",
        {
            "conf.d/20-second.conf": "PasswordAuthentication no\nAuthorizedKeysFile /second\n",
            "conf.d/10-first.conf": "AuthorizedKeysFile /first/%u\nMatch User daemon\n"
            "  PubkeyAuthentication no\n  PermitRootLogin yes\n",
            "conf.d/30-third.conf": "PermitRootLogin forced-commands-only\n",
            "root.d/a.conf": "PubkeyAuthentication no\nMatch User daemon\n  AuthorizedKeysFile /nested\n",
            "nobody.conf": "Match All\n  AuthorizedKeysFile /nobody-all\n",
        },
    )


def test_principals_command_quirk(tmp_path: Path, host_key: str) -> None:
    _check(
        tmp_path,
        host_key,
        """
AuthorizedKeysCommand /usr/bin/keys %u
AuthorizedKeysCommandUser nobody
AuthorizedPrincipalsCommand /usr/bin/p1 %u
AuthorizedPrincipalsCommandUser nobody
Match User root
    AuthorizedPrincipalsCommand /usr/bin/p2
    AuthorizedPrincipalsCommand /usr/bin/p3
    TrustedUserCAKeys none
    RevokedKeys none
Match User daemon
    AuthorizedKeysCommand none
    AuthorizedPrincipalsCommand /usr/bin/p4
""",
    )


@pytest.mark.root(reason="sshd -T exits without host keys, and the system's are readable only by root")
@pytest.mark.skipif(not os.path.exists("/etc/ssh/sshd_config"), reason="no system sshd_config")
def test_system_config(host_key: str) -> None:
    # The distribution's own file (Debian: Include /etc/ssh/sshd_config.d/*.conf, relative to /etc/ssh).
    text = Path("/etc/ssh/sshd_config").read_text()
    parsed = parse_sshd_config(text, "/etc/ssh/sshd_config", _loader)
    assert parsed.errors == ()
    for user in USERS:
        theirs = _sshd_t(Path("/etc/ssh/sshd_config"), f"user={user},lport=22")
        _compare(resolve(parsed, MatchContext(user, _groups(user))), theirs)
