"""`sshklm-agent enroll`: token from a file or stdin (never argv), credentials stored 0600, idempotent."""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import pytest

from agent.cli import main
from tests.controlplane import ControlPlane


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f'[server]\nallow_plain_http_loopback = true\n[state]\ndir = "{tmp_path / "state"}"\n')
    return path


def test_enroll_from_stdin_then_again_from_file(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if not Path("/etc/machine-id").exists():
        pytest.skip("this machine has no /etc/machine-id to enroll with")
    with ControlPlane.start() as cp:
        monkeypatch.setattr("sys.stdin", io.StringIO(cp.bootstrap_token + "\n"))
        assert main(["enroll", "--config", str(config), "--server", cp.url, "--token", "-"]) == 0
        first = json.loads((tmp_path / "state/enrollment.json").read_text())
        key_file = tmp_path / "state/api_key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
        old_key = key_file.read_text()
        out = capsys.readouterr()
        assert cp.bootstrap_token not in out.out + out.err and old_key.strip() not in out.out + out.err
        token_file = tmp_path / "token"
        token_file.write_text(cp.bootstrap_token)
        os.chmod(token_file, 0o600)
        assert (
            main(["enroll", "--config", str(config), "--server", cp.url, "--token-file", str(token_file)])
            == 0
        )
        again = json.loads((tmp_path / "state/enrollment.json").read_text())
        assert again["host_id"] == first["host_id"]
        assert key_file.read_text() != old_key  # a new key; the old one stops working


def test_token_on_the_command_line_is_refused(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["enroll", "--config", str(config), "--server", "http://127.0.0.1:1", "--token", "sekrit-token"])
        == 2
    )
    assert "standard input" in capsys.readouterr().err


def test_plain_http_to_a_remote_server_is_refused(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["enroll", "--config", str(config), "--server", "http://cp.example.com", "--token", "-"]) == 2
    assert "https" in capsys.readouterr().err
