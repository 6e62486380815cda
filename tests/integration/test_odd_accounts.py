"""One odd account (a relative, empty or `/` home, bytes that are not UTF-8, a duplicate name or
uid, a name with escape sequences or a slash, a malformed passwd line) is reported as a problem
in the inventory's `errors` (by user and reason) and never stops the scan of everybody else:
through `scan --root` (accounts from <root>/etc/passwd), `scan` and `enroll` on this host
(accounts from NSS, the C library's getpwall, here given the odd entries), and the daemon
(tests/integration/test_daemon_hostile.py)."""

from __future__ import annotations

import io
import json
import pwd
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from tests.controlplane import ControlPlane
from tests.fakeroot import FakeRoot, ed25519_line

_GETPWALL = pwd.getpwall  # the C library's, before a test replaces it

# (passwd line bytes, the user an error names, words its reason has); None: no error expected.
ODD_LINES: list[tuple[bytes, str | None, str | None]] = [
    (b"svc:x:998:998::var/lib/svc:/bin/sh", "svc", "not an absolute path"),
    (b"empty:x:997:997:::/bin/sh", "empty", "home is empty"),
    (b"slash:x:996:996::/:/bin/sh", None, None),
    (b"b\xffad:x:995:995::/home/bad:/bin/sh", "b\\xffad", "name is not valid UTF-8"),
    (b"badhome:x:994:994::/home/\xfe\xff:/bin/sh", "badhome", "home is not valid UTF-8"),
    (b"alice:x:2000:2000::/home/alice2:/bin/sh", "alice", "duplicate account name"),
    (b"toor:x:1000:1000::/home/toor:/bin/sh", None, None),  # alice's uid again: fine
    (b"esc\x1b[31m:x:993:993::/home/esc\x1b[0m:/bin/sh", None, None),
    (b"a/b:x:992:992::/home/ab:/bin/sh", "a/b", "'/'"),
    (b"broken:x:notanumber:1::/home/broken:/bin/sh", "/etc/passwd", "line 12"),
]


def odd_root(tmp_path: Path) -> FakeRoot:
    fr = FakeRoot(tmp_path / "root")
    fr.add_user("alice", 1000)
    fr.authorized_keys("alice", [ed25519_line("alice-key")])
    passwd = fr.root / "etc/passwd"
    passwd.write_bytes(passwd.read_bytes() + b"".join(line + b"\n" for line, _, _ in ODD_LINES))
    return fr


def assert_odd_accounts_reported(inventory: dict[str, Any]) -> None:
    assert "alice-key" in {k["comment"] for k in inventory["keys"] if k["user"] == "alice"}
    errors = inventory["errors"]
    for _, who, words in ODD_LINES:
        if who is None or words is None:
            continue
        found = [e for e in errors if who in (e["user"], e["path"]) and words in e["error"]]
        assert found, (who, words, errors)
    json.dumps(inventory).encode("utf-8")  # everything reported is valid UTF-8


def test_scan_root_reports_odd_accounts_and_scans_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fr = odd_root(tmp_path)
    for fmt in ("json", "table"):
        assert main(["scan", "--root", str(fr.root), "--format", fmt]) == 0
        out = capsys.readouterr().out
        if fmt == "json":
            assert_odd_accounts_reported(json.loads(out))
        else:
            assert "alice-key" in out and "\x1b" not in out


def _nss_entries() -> list[pwd.struct_passwd]:
    """getpwall's answer with the odd accounts added (as Python decodes them: surrogateescape)."""
    real = list(_GETPWALL())
    odd = []
    for line, _, _ in ODD_LINES:
        name, _x, uid, gid, gecos, home, shell = line.decode("utf-8", "surrogateescape").split(":")
        if not uid.isdigit():
            continue  # the C library would not return a malformed line at all
        odd.append(pwd.struct_passwd((name, "x", int(uid) + 60000, int(gid) + 60000, gecos, home, shell)))
    return [*real, *odd]


def test_scan_of_this_host_survives_odd_nss_accounts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(pwd, "getpwall", _nss_entries)
    assert main(["scan", "--format", "json"]) == 0
    inventory = json.loads(capsys.readouterr().out)
    reasons = {(e["user"], e["error"]) for e in inventory["errors"]}
    assert any(user == "svc" and "not an absolute path" in why for user, why in reasons)
    assert any(user == "b\\xffad" and "not valid UTF-8" in why for user, why in reasons)


def test_enroll_host_facts_scan_survives_odd_nss_accounts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if not Path("/etc/machine-id").exists():
        pytest.skip("this machine has no /etc/machine-id to enroll with")
    monkeypatch.setattr(pwd, "getpwall", _nss_entries)
    config = tmp_path / "agent.toml"
    config.write_text(f'[server]\nallow_plain_http_loopback = true\n[state]\ndir = "{tmp_path / "state"}"\n')
    with ControlPlane.start() as cp:
        monkeypatch.setattr("sys.stdin", io.StringIO(cp.bootstrap_token + "\n"))
        assert main(["enroll", "--config", str(config), "--server", cp.url, "--token", "-"]) == 0, (
            capsys.readouterr().err
        )
    assert (tmp_path / "state/enrollment.json").exists()
