"""Configuration loading: defaults, strict validation naming dotted keys, the example file."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from agent.cli import main
from agent.config import Config, ConfigError, describe_defaults, load_config, parse_config_text

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"


def test_example_documents_every_setting_with_its_default() -> None:
    example = tomllib.loads(EXAMPLE.read_text())
    assert example == describe_defaults()
    assert parse_config_text(EXAMPLE.read_text()) == Config()


def test_missing_default_file_means_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("agent.config.DEFAULT_CONFIG_PATH", str(tmp_path / "absent.toml"))
    config, used = load_config(None)
    assert config == Config() and used is None


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(str(tmp_path / "absent.toml"))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[schedule]\njitter = 'x'\n", "schedule.jitter: expected a number"),
        ("[schedule]\njitter = 1.5\n", "schedule.jitter: must be at least 0 and less than 1"),
        ("[server]\nurl = 'ftp://x'\n", "server.url: must be an http(s) URL or empty"),
        ("[server]\nmax_attempts = true\n", "server.max_attempts: expected an integer"),
        ("[discovery]\nskip_users = [1]\n", "discovery.skip_users: expected a list of strings"),
        ("[discovery]\nbogus = 1\n", "discovery.bogus: unknown key"),
        ("[nosuch]\n", "nosuch: unknown section"),
        ("server = 1\n", "server: expected a table ([server])"),
        ("[logging]\nlevel = 'loud'\n", "logging.level: must be one of debug, info, warning, error"),
    ],
)
def test_problems_name_the_dotted_key(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config_text(text)
    assert problem in info.value.problems


def test_all_problems_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config_text("[schedule]\njitter = 'x'\nheartbeat_s = -1\n")
    assert len(info.value.problems) == 2


def test_syntax_error_names_the_line() -> None:
    with pytest.raises(ConfigError, match="line 2"):
        parse_config_text("[server]\nurl = \n")


def test_int_accepted_for_float() -> None:
    assert parse_config_text("[schedule]\nheartbeat_s = 90\n").schedule.heartbeat_s == 90.0


def test_check_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    # The example as is, but for its state directory: check-config also checks that the daemon could
    # create it, which /var/lib allows only root (and `make unit` runs unprivileged).
    example = EXAMPLE.read_text()
    assert 'dir = "/var/lib/sshklm-agent"' in example
    good.write_text(example.replace('dir = "/var/lib/sshklm-agent"', f'dir = "{tmp_path / "state"}"'))
    assert main(["check-config", "--config", str(good)]) == 0
    assert capsys.readouterr().out.strip() == "ok"
    bad = tmp_path / "bad.toml"
    bad.write_text("[watch]\ndebounce_ms = 'soon'\n")
    assert main(["check-config", "--config", str(bad)]) == 1
    assert "watch.debounce_ms: expected an integer" in capsys.readouterr().out


def test_scan_with_unreadable_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[watch\n")
    assert main(["scan", "--config", str(bad), "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "TOML syntax error" in err


@pytest.mark.parametrize("value", ["-1", "61", "1.5"])
def test_long_poll_wait_is_zero_to_sixty_seconds(value: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config_text(f"[schedule]\nlong_poll_s = {value}\n")
    assert any(p.startswith("schedule.long_poll_s") for p in err.value.problems)
    assert parse_config_text("[schedule]\nlong_poll_s = 0\n").schedule.long_poll_s == 0
    assert parse_config_text("").schedule.long_poll_s == 60
