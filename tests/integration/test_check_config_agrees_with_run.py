"""`check-config` agrees with `run`: a setting `run` cannot use is an error in both, found by the
same checks (agent/commands/preflight.py), and `run` says so in one line before it starts.

Two walks:
- a table of the known bad settings, through both commands as a user runs them (subprocesses);
- every string and list setting set to a hostile value, with the daemon really started in-process:
  whatever makes the start fail (an exception, an ERROR logged) must be an error of check-config.
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.commands.preflight import check_config, errors
from agent.config import Config, ConfigError, config_from_mapping
from agent.control.client import Enrollment
from agent.control.enroll import save_credentials
from tests.fakeroot import FakeRoot

pytestmark = pytest.mark.slow

PLACEHOLDER_KEY = "ssh-ed25519 AAAA... (the signing_public_key line it printed)"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def _toml(doc: dict[str, dict[str, Any]]) -> str:
    out = []
    for section, table in doc.items():
        out.append(f"[{section}]")
        out.extend(f"{key} = {_toml_value(value)}" for key, value in table.items())
    return "\n".join(out) + "\n"


def _base(tmp_path: Path) -> dict[str, dict[str, Any]]:
    return {
        "state": {"dir": str(tmp_path / "state")},
        "schedule": {"startup_splay_s": 0},
        "usage": {"enabled": False},
    }


def _with(doc: dict[str, dict[str, Any]], dotted: str, value: Any) -> dict[str, dict[str, Any]]:
    section, key = dotted.split(".")
    out = {name: dict(table) for name, table in doc.items()}
    out.setdefault(section, {})[key] = value
    return out


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=60, check=False
    )


# (what is wrong, settings on top of the base, the key the error names)
KNOWN_BAD: list[tuple[str, dict[str, Any], str]] = [
    (
        "placeholder signing key",
        {"instructions.public_keys": [PLACEHOLDER_KEY]},
        "instructions.public_keys[0]",
    ),
    ("an RSA key as signing key", {"instructions.public_keys": ["RSA"]}, "instructions.public_keys[0]"),
    (
        "plain http to a remote host",
        {"server.url": "http://cp.example.com", "server.allow_plain_http_loopback": True},
        "server.url",
    ),
    ("plain http, loopback not allowed", {"server.url": "http://127.0.0.1:8787"}, "server.url"),
    ("a URL without a host", {"server.url": "https://"}, "server.url"),
    (
        "a CA file that is not there",
        {"server.url": "https://cp.example.com", "server.ca_file": "/nonexistent/ca.pem"},
        "server.ca_file",
    ),
    (
        "a CA file that holds no certificate",
        {"server.url": "https://cp.example.com", "server.ca_file": "{tmp}/garbage.pem"},
        "server.ca_file",
    ),
    (
        "an API key file without a host id",
        {"server.url": "https://cp.example.com", "server.api_key_file": "{tmp}/key"},
        "server.api_key_file",
    ),
    ("a state dir under a file", {"state.dir": "{tmp}/garbage.pem/state"}, "state.dir"),
    ("a state dir that is a file", {"state.dir": "{tmp}/garbage.pem"}, "state.dir"),
]


def _rsa_line() -> str:
    from tests.fakeroot import rsa_line

    return rsa_line(2048)


def _materialise(tmp_path: Path, settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    doc = _base(tmp_path)
    for dotted, value in settings.items():
        if value == ["RSA"]:
            value = [_rsa_line()]
        if isinstance(value, str):
            value = value.replace("{tmp}", str(tmp_path))
        doc = _with(doc, dotted, value)
    return doc


@pytest.mark.parametrize(("what", "settings", "key"), KNOWN_BAD, ids=[w for w, _, _ in KNOWN_BAD])
def test_a_setting_run_cannot_use_is_an_error_of_both(
    what: str, settings: dict[str, Any], key: str, tmp_path: Path, fr: FakeRoot
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(_toml(_materialise(tmp_path, settings)))
    checked = _cli("check-config", "--config", str(config))
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert f"error: {key}: " in checked.stdout
    assert "ok" not in checked.stdout.split()
    finding = next(line for line in checked.stdout.splitlines() if line.startswith(f"error: {key}: "))
    ran = _cli("run", "--config", str(config), "--root", str(fr.root))
    assert ran.returncode == 2, ran.stderr
    assert "Traceback" not in ran.stderr
    # The same finding, word for word, in one line: nothing started (no log line before it).
    assert ran.stderr == f"sshklm-agent: configuration: {finding.removeprefix('error: ')}\n"


def _string_settings() -> Iterator[tuple[str, type[Any]]]:
    hints = typing.get_type_hints(Config)
    for section in dataclasses.fields(Config):
        cls = hints[section.name]
        for field, tp in typing.get_type_hints(cls).items():
            if tp is str or typing.get_origin(tp) is tuple:
                yield f"{section.name}.{field}", tp


# "{case}" is the case's own directory: a path that is not there, without touching the real "/".
HOSTILE_STRINGS = ("{case}/nonexistent/file", "garbage value", "http://cp.example.com")


def _hostile_settings() -> list[tuple[str, str, bool]]:
    """(setting, hostile value, whether the setting is a list)."""
    return [
        (dotted, value, typing.get_origin(tp) is tuple)
        for dotted, tp in _string_settings()
        for value in HOSTILE_STRINGS
    ]


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())


def test_every_hostile_string_setting_that_breaks_the_start_is_an_error_of_check_config(
    tmp_path: Path, fr: FakeRoot
) -> None:
    from agent.commands.run import build_daemon

    cases = _hostile_settings()
    assert len(cases) > 30  # the walk covers every string and list setting
    broke_the_start: list[str] = []
    for index, (dotted, text, is_list) in enumerate(cases):
        case_dir = tmp_path / f"case{index}"
        case_dir.mkdir()
        hostile = text.replace("{case}", str(case_dir))
        value: Any = [hostile] if is_list else hostile
        doc = _with(_base(case_dir), dotted, value)
        if dotted.startswith("usage."):
            doc = _with(doc, "usage.enabled", True)
        # Enrolled (credentials in the base state dir), so the link builds its client at start.
        save_credentials(
            str(case_dir / "state"),
            Enrollment("hst_walk", "agt_walk", "sk_agent_" + "w" * 32),
            "http://127.0.0.1:9",
        )
        if dotted != "server.url":
            # A server on a closed loopback port: the link is built, never reached.
            doc = _with(
                _with(doc, "server.url", "http://127.0.0.1:9"), "server.allow_plain_http_loopback", True
            )
        try:
            config = config_from_mapping(doc)
        except ConfigError:
            continue  # refused by config.py: the same for every command
        caught = bool(errors(check_config(config)))
        handler = _Errors()
        logging.getLogger().addHandler(handler)
        failure = None
        try:
            daemon = build_daemon(config, root=str(fr.root), config_path=None, install_signals=False)
            try:
                daemon.start()
            finally:
                if daemon.db is not None:
                    daemon.stop()
        except Exception as exc:
            failure = f"{type(exc).__name__}: {exc}"
        finally:
            logging.getLogger().removeHandler(handler)
        if failure is None and handler.records:
            failure = "logged: " + "; ".join(handler.records)
        if failure is not None:
            broke_the_start.append(dotted)
            assert caught, f"{dotted} = {value!r}: run fails at start ({failure}) but check-config says ok"
    # The walk reaches the start: it meets the known ones.
    assert {"instructions.public_keys", "server.url", "server.ca_file"} <= set(broke_the_start)


def test_a_reload_refuses_what_check_config_calls_an_error(tmp_path: Path, fr: FakeRoot) -> None:
    from agent.commands.run import build_daemon

    config_file = tmp_path / "agent.toml"
    good = _toml(_base(tmp_path))
    config_file.write_text(good)
    config = config_from_mapping(_base(tmp_path))
    daemon = build_daemon(config, root=str(fr.root), config_path=str(config_file), install_signals=False)
    daemon.start()
    try:
        config_file.write_text(good + f'[instructions]\npublic_keys = ["{PLACEHOLDER_KEY}"]\n')
        daemon.reload()
        assert daemon.config is config  # the running configuration is kept
        assert daemon.last_error is not None and "reload refused" in daemon.last_error
        assert "instructions.public_keys[0]: not a public key" in daemon.last_error
    finally:
        daemon.stop()
