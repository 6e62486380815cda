"""The KRL with the real ssh-keygen: what the agent builds (`ssh-keygen -k`), lists back
(`ssh-keygen -Q -l`) and concludes for a key or certificate agrees with `ssh-keygen -Q` on every
key of a mixed population; discovery over a fake root marks revoked keys, reports the KRL's content
and the principals, and the two-process scan prints the same; an invalid KRL is reported.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.host.keygen import KeygenError, SshKeygen
from agent.host.safefs import HostFS
from agent.host.scan import ScanContext, ScanSettings, scan_host
from agent.host.users import RootUserSource
from agent.ssh.keys import parse_public_key_text
from agent.ssh.krl import RevocationEntry, key_entry
from tests.fakeroot import FakeRoot, ed25519_line
from tests.integration.test_scan_parallel import _outputs as scan_outputs

pytestmark = pytest.mark.skipif(
    subprocess.run(["which", "ssh-keygen"], capture_output=True).returncode != 0, reason="no ssh-keygen"
)


def _pair(directory: Path, name: str) -> Path:
    path = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)], check=True)
    return path


def _cert(ca: Path, key: Path, key_id: str, serial: int) -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-s", str(ca), "-I", key_id, "-n", "p", "-z", str(serial), str(key) + ".pub"],
        check=True,
    )
    out = key.parent / f"{key.name}-{serial}-cert.pub"
    (key.parent / f"{key.name}-cert.pub").rename(out)
    return out


def _oracle(krl: Path, pub: Path) -> bool:
    out = subprocess.run(["ssh-keygen", "-Q", "-f", str(krl), str(pub)], capture_output=True, text=True)
    return out.stdout.strip().endswith("REVOKED")


def test_verdicts_agree_with_ssh_keygen(tmp_path: Path) -> None:
    rng = random.Random(7)
    cas = [_pair(tmp_path, f"ca{i}") for i in range(2)]
    keys = [_pair(tmp_path, f"k{i}") for i in range(8)]
    ca_texts = [" ".join((ca.parent / f"{ca.name}.pub").read_text().split()[:2]) for ca in cas]
    population: list[Path] = [Path(f"{k}.pub") for k in keys] + [Path(f"{ca}.pub") for ca in cas]
    for index in range(16):
        population.append(_cert(rng.choice(cas), rng.choice(keys), f"id-{index}", index))  # serial 0 too
    entries = {
        key_entry(parse_public_key_text(keys[0].with_suffix(".pub").read_text())[0]),
        RevocationEntry("hash", parse_public_key_text(Path(f"{keys[1]}.pub").read_text())[0].fingerprint),
        RevocationEntry("serial", "3", ca_texts[0]),
        RevocationEntry("serial", "4", ca_texts[0]),
        RevocationEntry("serial", "5", ca_texts[1]),
        RevocationEntry("key_id", "id-9", ca_texts[1]),
        RevocationEntry("key_id", "id-10", ca_texts[0]),
    }
    entries.add(key_entry(parse_public_key_text(Path(f"{cas[1]}.pub").read_text())[0]))  # a revoked CA
    tool = SshKeygen("ssh-keygen")
    data = tool.build_krl(entries, version=5, comment="oracle", work_dir=str(tmp_path / "work"))
    krl = tmp_path / "krl"
    krl.write_bytes(data)
    contents = tool.list_krl(data)
    assert contents.version == 5 and contents.comment == "oracle"
    assert os.listdir(tmp_path / "work") == []  # the scratch directory is gone
    verdicts = []
    for pub in population:
        key, _ = parse_public_key_text(pub.read_text())
        ours = contents.revokes(key.fingerprint, key.certificate)
        assert ours == _oracle(krl, pub), pub.name
        verdicts.append(ours)
    assert any(verdicts) and not all(verdicts)


def test_listing_refuses_what_is_not_a_valid_krl() -> None:
    tool = SshKeygen("ssh-keygen")
    for data in (b"SSHKRL\n\0" + b"\xff" * 32, b"ssh-ed25519 AAAA"):
        with pytest.raises(KeygenError) as bad:
            tool.list_krl(data)
        assert bad.value.code == "KRL_INVALID"
    with pytest.raises(KeygenError) as missing:
        SshKeygen("/nonexistent/ssh-keygen").list_krl(b"SSHKRL\n\0")
    assert missing.value.code == "KEYGEN_MISSING"


def _root_with_krl(base: Path) -> tuple[FakeRoot, str, str]:
    fr = FakeRoot(base)
    revoked, kept = ed25519_line("revoked"), ed25519_line("kept")
    for number in (3, 1, 4, 2):  # accounts on both sides of the two-process split
        fr.add_user(f"u{number}", 2000 + number)
        fr.authorized_keys(f"u{number}", [revoked if number in (1, 4) else kept])
        fr.write(f"/etc/ssh/principals/u{number}", f"ops\nu{number}-oncall\n", mode=0o644)
    fp = parse_public_key_text(revoked)[0].fingerprint
    data = SshKeygen("ssh-keygen").build_krl(
        [RevocationEntry("hash", fp)], version=2, comment="t", work_dir=str(base.parent / "work")
    )
    fr.write("/etc/ssh/krl", data, mode=0o644)
    fr.write_sshd_config(
        "RevokedKeys /etc/ssh/krl\nAuthorizedPrincipalsFile /etc/ssh/principals/%u\n"
        "AuthorizedKeysFile .ssh/authorized_keys\n"
    )
    return fr, fp, parse_public_key_text(kept)[0].fingerprint


def _context() -> ScanContext:
    return ScanContext(now=datetime(2026, 1, 1, tzinfo=UTC), local_tz=UTC, snapshot_id="s", host_id="h")


def test_discovery_marks_revoked_keys_and_reports_the_krl(tmp_path: Path) -> None:
    fr, revoked, kept = _root_with_krl(tmp_path / "root")
    with HostFS(str(fr.root)) as fs:
        _, _, inventory = scan_host(fs, RootUserSource(fs), ScanSettings(), _context())
    by_user = {k.user: k for k in inventory.keys if k.kind == "authorized_key"}
    assert (
        by_user["u1"].revoked
        and not by_user["u1"].effective
        and by_user["u1"].ineffective_reason == "revoked"
    )
    assert "revoked_key_present" in by_user["u1"].risk.factors
    assert not by_user["u2"].revoked and by_user["u2"].effective
    assert inventory.krl is not None and inventory.krl.status == "ok"
    assert inventory.krl.contents is not None and inventory.krl.contents.sha256 == {revoked}
    assert [(p.user, p.principal) for p in inventory.principals if p.user == "u3"] == [
        ("u3", "ops"),
        ("u3", "u3-oncall"),
    ]
    assert inventory.sshd.revoked_keys == "/etc/ssh/krl"


@pytest.mark.parametrize("ndjson", [False, True])
def test_the_two_process_scan_prints_the_same(tmp_path: Path, ndjson: bool) -> None:
    fr, _, _ = _root_with_krl(tmp_path / "root")
    parallel, single = scan_outputs(fr, ndjson)
    assert parallel == single
    if not ndjson:
        assert json.loads(parallel)["krl"]["status"] == "ok"


@pytest.mark.parametrize(
    ("content", "status"),
    [(b"SSHKRL\n\0garbage", "invalid"), (b"not a key\n", "invalid"), (None, "missing")],
)
def test_an_unusable_krl_is_an_error_and_every_key_ineffective(
    tmp_path: Path, content: bytes | None, status: str
) -> None:
    fr, _, _ = _root_with_krl(tmp_path / "root")
    if content is None:
        fr.path("/etc/ssh/krl").unlink()
    else:
        fr.write("/etc/ssh/krl", content, mode=0o644)
    with HostFS(str(fr.root)) as fs:
        _, _, inventory = scan_host(fs, RootUserSource(fs), ScanSettings(), _context())
    assert inventory.krl is not None and inventory.krl.status == status
    assert any(
        e.path == "/etc/ssh/krl" and "sshd refuses every public key" in e.error for e in inventory.errors
    )
    assert all(not k.effective for k in inventory.keys if k.kind == "authorized_key")


def test_a_krl_reached_through_a_symlink_is_read_like_sshd_reads_it(tmp_path: Path) -> None:
    """sshd (root) follows a symlink anywhere: so does discovery for RevokedKeys, which names a
    root-controlled path. A refusal here would report "sshd refuses every public key" falsely."""
    fr, revoked, _ = _root_with_krl(tmp_path / "root")
    fr.write("/srv/krl/current", fr.path("/etc/ssh/krl").read_bytes(), mode=0o644)
    fr.path("/etc/ssh/krl").unlink()
    fr.path("/etc/ssh/krl").symlink_to("/srv/krl/current")
    with HostFS(str(fr.root)) as fs:
        _, _, inventory = scan_host(fs, RootUserSource(fs), ScanSettings(), _context())
    assert inventory.krl is not None and inventory.krl.status == "ok", inventory.krl
    assert inventory.krl.contents is not None and inventory.krl.contents.sha256 == {revoked}
