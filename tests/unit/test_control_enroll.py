from __future__ import annotations

import io
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from agent import __version__
from agent.control.client import Enrollment
from agent.control.enroll import (
    EnrollmentError,
    collect_host_facts,
    enroll_host,
    load_credentials,
    parse_os_release,
    read_api_key,
    read_token,
    save_credentials,
)
from agent.host.safefs import write_private_file
from agent.host.setup import parse_sshd_version, sshd_version
from tests.unit.test_control_support import API_KEY, BOOTSTRAP, FakeClock, FakeServer


def make_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "proc/sys/kernel").mkdir(parents=True)
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (root / "etc/hostname").write_text("web-01\n")
    (root / "etc/os-release").write_text(
        'PRETTY_NAME="Debian GNU/Linux 12"\nID=debian\nVERSION_ID="12"\n# c\n'
    )
    (root / "proc/sys/kernel/osrelease").write_text("6.1.0-test-amd64\n")
    return root


def test_collect_host_facts_from_root(tmp_path: Path) -> None:
    keys = [{"type": "ssh-ed25519", "fingerprint": "SHA256:abc"}]
    facts = collect_host_facts(str(make_root(tmp_path)), host_keys=keys, sshd_version_text="OpenSSH_9.2p1")
    assert facts == {
        "machine_id": "0123456789abcdef0123456789abcdef",
        "hostname": "web-01",
        "fqdn": "web-01",
        "os": {"id": "debian", "version_id": "12"},
        "kernel": "6.1.0-test-amd64",
        "agent_version": __version__,
        "sshd_version": "OpenSSH_9.2p1",
        "host_keys": keys,
    }


def test_collect_host_facts_needs_machine_id(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    (root / "etc/machine-id").write_text("\n")
    with pytest.raises(EnrollmentError):
        collect_host_facts(str(root))


def test_collect_live_host_facts() -> None:
    facts = collect_host_facts("/", sshd_version_text=sshd_version("/usr/sbin/sshd"))
    assert facts["machine_id"] and facts["hostname"] and facts["kernel"] == os.uname().release
    if os.path.exists("/usr/sbin/sshd"):
        assert str(facts["sshd_version"]).startswith("OpenSSH_")


def test_parse_helpers() -> None:
    assert parse_os_release("ID='alpine'\nVERSION_ID=3.19\nbad line\n") == {
        "ID": "alpine",
        "VERSION_ID": "3.19",
    }
    assert parse_sshd_version("OpenSSH_9.2p1 Debian-2+deb12u3, OpenSSL 3.0.11") == "OpenSSH_9.2p1"
    assert parse_sshd_version("OpenSSH_9.2, OpenSSL 3.0.19") == "OpenSSH_9.2"
    assert parse_sshd_version("command not found") is None


def test_sshd_version_best_effort() -> None:
    def missing(*_a: object, **_k: object) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError("no sshd")

    assert sshd_version(run=missing) is None
    old = subprocess.CompletedProcess(
        ["sshd", "-V"], 1, "", "unknown option -- V\nOpenSSH_7.4p1, OpenSSL\nusage"
    )
    assert sshd_version(run=lambda *_a, **_k: old) == "OpenSSH_7.4p1"
    assert sshd_version("/nonexistent/sshd") is None


def test_read_token_from_file_and_stdin(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"  {BOOTSTRAP}\n")
    assert read_token(str(path)) == BOOTSTRAP
    assert read_token("-", stdin=io.StringIO(BOOTSTRAP + "\n")) == BOOTSTRAP
    path.write_text("\n \n")
    with pytest.raises(EnrollmentError, match="empty"):
        read_token(str(path))
    with pytest.raises(EnrollmentError):
        read_token("-", stdin=io.StringIO(""))
    path.write_text("two words\n")
    with pytest.raises(EnrollmentError) as err:
        read_token(str(path))
    assert "two" not in str(err.value)
    with pytest.raises(EnrollmentError, match="cannot read"):
        read_token(str(tmp_path / "missing"))


def test_save_and_load_credentials_modes(tmp_path: Path) -> None:
    state = tmp_path / "state"
    save_credentials(str(state), Enrollment("hst_1", "agt_1", API_KEY), "https://cp.example")
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "api_key").stat().st_mode) == 0o600
    assert (state / "api_key").read_text() == API_KEY + "\n"
    record = json.loads((state / "enrollment.json").read_text())
    assert record["host_id"] == "hst_1" and API_KEY not in (state / "enrollment.json").read_text()
    creds = load_credentials(str(state))
    assert creds is not None and (creds.host_id, creds.agent_id, creds.api_key) == ("hst_1", "agt_1", API_KEY)
    assert API_KEY not in repr(creds)
    assert sorted(os.listdir(state)) == ["api_key", "enrollment.json"]  # no temp files left


def test_state_dir_is_tightened_and_symlink_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    save_credentials(str(state), Enrollment("h", "a", "k"), "u")
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    link = tmp_path / "link"
    link.symlink_to(state)
    with pytest.raises(EnrollmentError, match="not a directory"):
        save_credentials(str(link), Enrollment("h", "a", "k"), "u")


def test_load_credentials_absent_and_loose_key_file(tmp_path: Path) -> None:
    assert load_credentials(str(tmp_path)) is None
    save_credentials(str(tmp_path / "s"), Enrollment("h", "a", "k"), "u")
    os.chmod(tmp_path / "s/api_key", 0o644)
    with pytest.raises(EnrollmentError, match="group/other"):
        load_credentials(str(tmp_path / "s"))


def test_read_api_key_refuses_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.write_text("k\n")
    real.chmod(0o600)
    (tmp_path / "link").symlink_to(real)
    assert read_api_key(str(real)) == "k"
    with pytest.raises(EnrollmentError):
        read_api_key(str(tmp_path / "link"))


def test_write_file_atomic_replaces_and_never_follows_temp(tmp_path: Path) -> None:
    write_private_file(str(tmp_path), "f", b"one", 0o600)
    write_private_file(str(tmp_path), "f", b"two", 0o600)
    assert (tmp_path / "f").read_bytes() == b"two" and os.listdir(tmp_path) == ["f"]


def test_enroll_host_twice_replaces_key(tmp_path: Path) -> None:
    server = FakeServer(FakeClock())
    state = tmp_path / "state"
    facts = {"machine_id": "m1"}
    first = enroll_host("https://cp.test", BOOTSTRAP, str(state), facts, client=server.client(api_key=None))
    server.api_key = "sk_agent_SECOND"
    second = enroll_host("https://cp.test", BOOTSTRAP, str(state), facts, client=server.client(api_key=None))
    assert first.host_id == second.host_id == "hst_1"
    creds = load_credentials(str(state))
    assert creds is not None and creds.api_key == "sk_agent_SECOND" and creds.server_url == "https://cp.test"
    assert server.seen[0].body == facts


def test_enroll_host_refuses_bad_state_dir_before_using_token(tmp_path: Path) -> None:
    server = FakeServer(FakeClock())
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(EnrollmentError):
        enroll_host("https://cp.test", BOOTSTRAP, str(blocker), {}, client=server.client(api_key=None))
    assert server.seen == []
