"""`sshklm-agent scan --root` on fake roots: paths sshd reads, effectiveness, hostile files, output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agent.cli import main
from tests.fakeroot import FakeRoot, ed25519_line, ed25519_private_openssh, rsa_line


def scan(root: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict:
    assert main(["scan", "--root", str(root), "--format", "json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def keys_of(inv: dict, **match: object) -> list[dict]:
    return [k for k in inv["keys"] if all(k.get(f) == v for f, v in match.items())]


def owner_uid(uid: int) -> int:
    """The uid to give a fake account whose files the test creates.

    StrictModes accepts a file owned by root or by its user. As root the files are root's, so any
    uid does; without root they are the test runner's, so the account gets the runner's uid. The
    tests using this are about which files sshd reads and how, not about ownership (that is
    test_file_owned_by_another_uid_is_orphaned_and_ineffective, which needs root to chown).
    """
    return uid if os.geteuid() == 0 else os.geteuid()


@pytest.fixture
def fr(tmp_path: Path) -> FakeRoot:
    root = FakeRoot(tmp_path / "root")
    root.add_user("alice", owner_uid(1000))
    return root


def test_default_paths_and_authorized_keys2(fr: FakeRoot, capsys: pytest.CaptureFixture[str]) -> None:
    fr.authorized_keys("alice", [ed25519_line("a1")])
    fr.authorized_keys("alice", [ed25519_line("a2")], name="authorized_keys2")
    inv = scan(fr.root, capsys)
    got = {k["comment"]: k for k in keys_of(inv, user="alice")}
    assert got["a1"]["effective"] and got["a2"]["effective"]
    assert got["a1"]["path"] == "/home/alice/.ssh/authorized_keys" and got["a1"]["line"] == 1


def test_authorized_keys_file_setting_and_unread_file(
    fr: FakeRoot, capsys: pytest.CaptureFixture[str]
) -> None:
    fr.write_sshd_config("AuthorizedKeysFile /etc/ssh/authorized_keys/%u .ssh/authorized_keys\n")
    fr.write("/etc/ssh/authorized_keys/alice", ed25519_line("central") + "\n", 0o644)
    fr.authorized_keys("alice", [ed25519_line("home")])
    fr.authorized_keys("alice", [ed25519_line("two")], name="authorized_keys2")
    inv = scan(fr.root, capsys)
    got = {k["comment"]: k for k in keys_of(inv, user="alice")}
    assert got["central"]["effective"] and got["central"]["path"] == "/etc/ssh/authorized_keys/alice"
    assert got["home"]["effective"]
    assert got["two"]["effective"] is False
    assert "not read by sshd" in got["two"]["ineffective_reason"]


def test_match_block_per_user(fr: FakeRoot, capsys: pytest.CaptureFixture[str]) -> None:
    fr.add_user("bob", owner_uid(1001))  # Match User matches the name, whatever the uid
    fr.write_sshd_config("Match User bob\n  AuthorizedKeysFile .ssh/bob_keys\n")
    fr.authorized_keys("bob", [ed25519_line("bobkey")], name="bob_keys")
    fr.authorized_keys("alice", [ed25519_line("alicekey")], name="bob_keys")
    inv = scan(fr.root, capsys)
    assert keys_of(inv, comment="bobkey")[0]["effective"] is True
    assert keys_of(inv, comment="alicekey") == []  # sshd reads no bob_keys for alice; not a usual place


def test_include_and_first_value_wins(fr: FakeRoot, capsys: pytest.CaptureFixture[str]) -> None:
    fr.write("/etc/ssh/sshd_config.d/10-first.conf", "StrictModes no\nPubkeyAuthentication yes\n", 0o644)
    fr.write("/etc/ssh/sshd_config.d/20-second.conf", "StrictModes yes\n", 0o644)
    fr.write_sshd_config("Include /etc/ssh/sshd_config.d/*.conf\nStrictModes yes\n")
    fr.authorized_keys("alice", [ed25519_line("k")], mode=0o666)
    inv = scan(fr.root, capsys)
    assert inv["sshd"]["strict_modes"] is False
    assert keys_of(inv, comment="k")[0]["effective"] is True


def test_pubkey_authentication_no(fr: FakeRoot, capsys: pytest.CaptureFixture[str]) -> None:
    fr.write_sshd_config("PubkeyAuthentication no\n")
    fr.authorized_keys("alice", [ed25519_line("k")])
    inv = scan(fr.root, capsys)
    assert keys_of(inv, comment="k")[0]["ineffective_reason"] == "PubkeyAuthentication no"


def test_strict_modes_in_scan(fr: FakeRoot, capsys: pytest.CaptureFixture[str]) -> None:
    fr.authorized_keys("alice", [ed25519_line("k")], mode=0o666)
    inv = scan(fr.root, capsys)
    key = keys_of(inv, comment="k")[0]
    assert key["effective"] is False and key["ineffective_reason"] == "StrictModes: bad modes on file"


def test_options_expiry_and_invalid_lines_reported_without_content(
    fr: FakeRoot, capsys: pytest.CaptureFixture[str]
) -> None:
    secretish = "AAAAsecretlookingstuff"
    fr.authorized_keys(
        "alice",
        [
            "# a comment",
            "",
            'no-pty,from="10.0.0.0/8" ' + ed25519_line("opts"),
            'expiry-time="20000101" ' + ed25519_line("old"),
            f"ssh-ed25519 {secretish} broken",
            "bogus-option " + ed25519_line("badopt"),
            'principals="x" ' + ed25519_line("princ"),
            'cert-authority,principals="alice" ' + ed25519_line("ca"),
        ],
    )
    inv = scan(fr.root, capsys)
    opts = keys_of(inv, comment="opts")[0]
    assert opts["options"] == {"no-pty": True, "from": "10.0.0.0/8"} and opts["effective"]
    assert keys_of(inv, comment="old")[0]["ineffective_reason"] == "expired (expiry-time)"
    assert keys_of(inv, comment="badopt")[0]["ineffective_reason"].startswith("bad key options")
    assert keys_of(inv, comment="princ")[0]["ineffective_reason"] == "principals= without cert-authority"
    assert keys_of(inv, comment="ca")[0]["kind"] == "authorized_principal_ca"
    errors = [e for e in inv["errors"] if e.get("line") == 5]
    assert errors and errors[0]["path"] == "/home/alice/.ssh/authorized_keys"
    assert secretish not in json.dumps(inv)


def test_symlink_outside_home_is_an_error_not_a_read(
    fr: FakeRoot, capsys: pytest.CaptureFixture[str]
) -> None:
    fr.write("/etc/shadow", ed25519_line("shadowy") + "\n", 0o640)
    (fr.path("/home/alice/.ssh/authorized_keys")).symlink_to("/etc/shadow")
    inv = scan(fr.root, capsys)
    assert keys_of(inv, comment="shadowy") == []
    assert any(e["path"] == "/home/alice/.ssh/authorized_keys" for e in inv["errors"])


def test_symlink_inside_home_is_followed(fr: FakeRoot, capsys: pytest.CaptureFixture[str]) -> None:
    fr.write("/home/alice/keys.txt", ed25519_line("linked") + "\n")
    fr.path("/home/alice/.ssh/authorized_keys").symlink_to("../keys.txt")
    inv = scan(fr.root, capsys)
    assert keys_of(inv, comment="linked")[0]["effective"] is True


def test_fifo_does_not_hang_and_rest_of_host_is_scanned(
    fr: FakeRoot, capsys: pytest.CaptureFixture[str]
) -> None:
    fr.add_user("bob", 1001)
    os.mkfifo(fr.path("/home/alice/.ssh/authorized_keys"))
    fr.authorized_keys("bob", [ed25519_line("bobkey")])
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(scan(fr.root, capsys)), daemon=True)
    worker.start()
    worker.join(20)
    assert not worker.is_alive(), "scan hung on a FIFO"
    assert keys_of(result, comment="bobkey")
    assert any(e["path"] == "/home/alice/.ssh/authorized_keys" for e in result["errors"])


def test_oversized_file_reads_the_cap_and_says_so(
    fr: FakeRoot, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    first = ed25519_line("first")
    fr.authorized_keys("alice", [first] + [ed25519_line(f"k{i}") for i in range(100)])
    cfg = tmp_path / "agent.toml"
    cfg.write_text("[discovery]\nmax_file_bytes = 200\n")
    inv = scan(fr.root, capsys, "--config", str(cfg))
    assert keys_of(inv, comment="first")
    assert any("larger than discovery.max_file_bytes" in e["error"] for e in inv["errors"])


def test_long_line_is_valid(fr: FakeRoot, capsys: pytest.CaptureFixture[str]) -> None:
    fr.authorized_keys("alice", [ed25519_line("x" * 200_000)])
    inv = scan(fr.root, capsys)
    assert len(keys_of(inv, user="alice")[0]["comment"]) == 200_000


def test_identity_keys_public_half_only(fr: FakeRoot, capsys: pytest.CaptureFixture[str]) -> None:
    private, public = ed25519_private_openssh()
    fr.write("/home/alice/.ssh/id_ed25519", private)
    fr.write("/home/alice/.ssh/id_ed25519.pub", public + " alice@box\n", 0o644)
    # An encrypted OpenSSH key, made by the real ssh-keygen (its public half stays readable).
    subprocess.run(
        [
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "secret-pass",
            "-C",
            "deploy",
            "-f",
            str(fr.path("/home/alice/.ssh/deploy_key")),
        ],
        check=True,
    )
    os.unlink(fr.path("/home/alice/.ssh/deploy_key.pub"))
    inv = scan(fr.root, capsys)
    idents = {Path(k["path"]).name: k for k in keys_of(inv, kind="identity_key")}
    assert (
        idents["id_ed25519"]["encrypted"] is False
        and "no_passphrase" in idents["id_ed25519"]["risk"]["factors"]
    )
    assert idents["id_ed25519"]["comment"] == "alice@box"
    assert idents["deploy_key"]["encrypted"] is True
    body = json.dumps(inv)
    assert private.decode().splitlines()[1] not in body


def test_host_keys_and_trusted_ca(fr: FakeRoot, capsys: pytest.CaptureFixture[str]) -> None:
    fr.write("/etc/ssh/ssh_host_ed25519_key.pub", ed25519_line("root@host") + "\n", 0o644)
    fr.write("/etc/ssh/user_ca.pub", ed25519_line("the-ca") + "\n", 0o644)
    fr.write_sshd_config("TrustedUserCAKeys /etc/ssh/user_ca.pub\n")
    inv = scan(fr.root, capsys)
    assert keys_of(inv, kind="host_key")[0]["comment"] == "root@host"
    assert keys_of(inv, kind="trusted_user_ca")[0]["comment"] == "the-ca"
    assert inv["sshd"]["trusted_user_ca_keys"] == "/etc/ssh/user_ca.pub"


def test_risk_root_shared_orphaned_weak(fr: FakeRoot, capsys: pytest.CaptureFixture[str]) -> None:
    shared = ed25519_line("shared")
    fr.add_user("bob", 1001)
    fr.authorized_keys("alice", [shared, rsa_line(1024, "weak")])
    fr.authorized_keys("bob", [shared])
    fr.write("/root/.ssh/authorized_keys", ed25519_line("rootkey") + "\n")
    fr.write("/home/ghost/.ssh/authorized_keys", ed25519_line("ghostkey") + "\n")
    inv = scan(fr.root, capsys)
    assert "shared_key" in keys_of(inv, comment="shared", user="bob")[0]["risk"]["factors"]
    assert "rsa_lt_2048" in keys_of(inv, comment="weak")[0]["risk"]["factors"]
    assert "root_key" in keys_of(inv, comment="rootkey")[0]["risk"]["factors"]
    ghost = keys_of(inv, comment="ghostkey")[0]
    assert ghost["user"] is None and "orphaned" in ghost["risk"]["factors"] and ghost["effective"] is False


@pytest.mark.root(reason="chowns a file to another uid")
def test_file_owned_by_another_uid_is_orphaned_and_ineffective(
    fr: FakeRoot, capsys: pytest.CaptureFixture[str]
) -> None:
    path = fr.authorized_keys("alice", [ed25519_line("k")])
    os.chown(path, 4242, 4242)
    key = keys_of(scan(fr.root, capsys), comment="k")[0]
    assert key["effective"] is False and "orphaned" in key["risk"]["factors"]


def test_ndjson_and_table(fr: FakeRoot, capsys: pytest.CaptureFixture[str]) -> None:
    fr.authorized_keys("alice", [ed25519_line("one"), ed25519_line("two")])
    assert main(["scan", "--root", str(fr.root), "--format", "ndjson"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["comment"] for line in lines] == ["one", "two"]
    assert main(["scan", "--root", str(fr.root), "--format", "table"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("USER") and all(
        len(line) <= 120 for line in table if not line.startswith("problem")
    )
    assert "2 keys" in [line for line in table if "users," in line][0]


def test_bad_arguments_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", "--root", str(tmp_path / "nope")]) == 2
    with pytest.raises(SystemExit) as info:
        main(["scan", "--format", "xml"])
    assert info.value.code == 2


def test_scan_does_not_import_network_or_scheduler_modules(fr: FakeRoot) -> None:
    code = (
        "import sys; from agent.cli import main; main(['scan','--root',sys.argv[1],'--format','json']);"
        "bad=[m for m in ('httpx','apscheduler','watchdog') if m in sys.modules]; "
        "sys.stderr.write(repr(bad)); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(fr.root)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr[-500:]
