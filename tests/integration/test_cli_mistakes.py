"""Every user mistake gets one line naming the problem and the fix, and exit status 2: never a
traceback. A table of mistakes walked through every command, as a user types them."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import build_parser
from tests.fakeroot import FakeRoot, ed25519_line

pytestmark = pytest.mark.slow


def _commands() -> set[str]:
    """Every command agent/cli.py has (a new one, e.g. a reload command, must join the table)."""
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(subparsers.choices)


@pytest.fixture
def world(tmp_path: Path) -> dict[str, str]:
    """Paths a mistake can name: a good config, a demo root, an empty directory, a plain file."""
    root = FakeRoot(tmp_path / "root")
    root.add_user("alice", 1000)
    root.authorized_keys("alice", [ed25519_line("alice")])
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("not a directory\n")
    good = tmp_path / "good.toml"
    good.write_text(f'[state]\ndir = "{tmp_path / "state"}"\n[usage]\nenabled = false\n')
    broken = tmp_path / "broken.toml"
    broken.write_text("[watch\n")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[watch]\nbogus = 1\n")
    remote = tmp_path / "remote.toml"
    state = f'[state]\ndir = "{tmp_path / "state"}"\n'
    remote.write_text('[server]\nurl = "http://cp.example.com"\nallow_plain_http_loopback = true\n' + state)
    placeholder = tmp_path / "placeholder.toml"
    placeholder.write_text(
        f'[state]\ndir = "{tmp_path / "state"}"\n'
        '[instructions]\npublic_keys = ["ssh-ed25519 AAAA... (the signing_public_key line it printed)"]\n'
    )
    under_file = tmp_path / "under-file.toml"
    under_file.write_text(f'[state]\ndir = "{tmp_path / "file" / "state"}"\n')
    loopback = tmp_path / "loopback.toml"
    loopback.write_text('[server]\nurl = "http://127.0.0.1:9"\nallow_plain_http_loopback = true\n' + state)
    token = tmp_path / "token"
    token.write_text("")
    return {
        "tmp": str(tmp_path),
        "root": str(root.root),
        "empty": str(tmp_path / "empty"),
        "file": str(tmp_path / "file"),
        "good": str(good),
        "broken": str(broken),
        "unknown": str(unknown),
        "remote": str(remote),
        "placeholder": str(placeholder),
        "under_file": str(under_file),
        "loopback": str(loopback),
        "empty_token": str(token),
    }


# (id, argv with {placeholders} from `world`, words the one line must contain)
MISTAKES: list[tuple[str, list[str], list[str]]] = [
    # every command: the configuration file
    *[
        (
            f"{cmd}: no such config",
            [cmd, "--config", "{tmp}/nope.toml", *extra],
            ["nope.toml", "no such file"],
        )
        for cmd, extra in (
            ("scan", []),
            ("run", []),
            ("status", []),
            ("check-config", []),
            ("enroll", ["--token", "-"]),
            ("rollback", ["rot_x"]),
            ("reload", []),
        )
    ],
    *[
        (f"{cmd}: config is a directory", [cmd, "--config", "{empty}", *extra], ["Is a directory"])
        for cmd, extra in (("scan", []), ("run", []), ("status", []), ("check-config", []))
    ],
    *[
        (f"{cmd}: TOML syntax error", [cmd, "--config", "{broken}", *extra], ["TOML syntax error", "line 1"])
        for cmd, extra in (("scan", []), ("run", []), ("status", []), ("enroll", ["--token", "-"]))
    ],
    ("run: unknown key", ["run", "--config", "{unknown}"], ["watch.bogus", "unknown key"]),
    # --root
    (
        "scan: --root missing",
        ["scan", "--config", "{good}", "--root", "{tmp}/nowhere"],
        ["nowhere", "no such"],
    ),
    ("scan: --root a file", ["scan", "--config", "{good}", "--root", "{file}"], ["not a directory"]),
    ("scan: --root empty", ["scan", "--config", "{good}", "--root", "{empty}"], ["etc/passwd", "demoroot"]),
    (
        "run: --root missing",
        ["run", "--config", "{good}", "--root", "/nonexistent"],
        ["/nonexistent", "no such"],
    ),
    ("run: --root empty", ["run", "--config", "{good}", "--root", "{empty}"], ["etc/passwd"]),
    (
        "enroll: --root empty",
        ["enroll", "--config", "{loopback}", "--root", "{empty}", "--token", "-"],
        ["etc/passwd"],
    ),
    # settings run cannot use
    (
        "run: plain http to a remote",
        ["run", "--config", "{remote}", "--root", "{root}"],
        ["server.url", "https"],
    ),
    (
        "run: placeholder signing key",
        ["run", "--config", "{placeholder}", "--root", "{root}"],
        ["instructions.public_keys[0]", "not a public key"],
    ),
    ("run: state dir under a file", ["run", "--config", "{under_file}", "--root", "{root}"], ["state.dir"]),
    # enroll
    ("enroll: no server", ["enroll", "--config", "{good}", "--token", "-"], ["--server", "server.url"]),
    (
        "enroll: token on the command line",
        ["enroll", "--config", "{loopback}", "--token", "bt_secret"],
        ["standard input", "--token-file"],
    ),
    (
        "enroll: token file missing",
        ["enroll", "--config", "{loopback}", "--token-file", "{tmp}/no-token"],
        ["no-token", "--token-file"],
    ),
    (
        "enroll: token file empty",
        ["enroll", "--config", "{loopback}", "--token-file", "{empty_token}"],
        ["empty", "--token-file"],
    ),
    (
        "enroll: plain http to a remote",
        ["enroll", "--config", "{good}", "--server", "http://cp.example.com", "--token", "-"],
        ["https"],
    ),
    (
        "enroll: state dir under a file",
        ["enroll", "--config", "{under_file}", "--server", "https://cp.example.com", "--token", "-"],
        ["state.dir"],
    ),
    # rollback
    (
        "rollback: no state yet",
        ["rollback", "--config", "{good}", "rot_nope"],
        ["no agent state", "state.dir"],
    ),
    # reload: refused before the daemon is signalled, with the checks run makes
    (
        "reload: placeholder signing key",
        ["reload", "--config", "{placeholder}"],
        ["reload refused", "instructions.public_keys[0]", "not a public key"],
    ),
    ("reload: TOML syntax error", ["reload", "--config", "{broken}"], ["TOML syntax error", "line 1"]),
    # arguments
    ("scan: bad format", ["scan", "--format", "xml"], ["--format", "invalid choice"]),
    ("no such command", ["frobnicate"], ["invalid choice"]),
    ("rollback: no id", ["rollback"], ["ROTATION_ID"]),
]


def _run(argv: list[str], world: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    args = [a.format(**world) for a in argv]
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=world["tmp"],
    )


def test_the_table_covers_every_command() -> None:
    covered = {argv[0] for _, argv, _ in MISTAKES}
    assert {"scan", "run", "status", "check-config", "enroll", "rollback"} <= _commands()
    assert _commands() <= covered, f"commands without a mistake in the table: {_commands() - covered}"


@pytest.mark.parametrize(("what", "argv", "words"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_a_mistake_is_one_line_and_exit_2(
    what: str, argv: list[str], words: list[str], world: dict[str, str]
) -> None:
    done = _run(argv, world)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("sshklm-agent: ")
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_rollback_of_an_unknown_rotation_is_a_mistake(world: dict[str, str]) -> None:
    from agent.store.db import open_database

    open_database(os.path.join(world["tmp"], "state")).close()  # the agent ran here once
    done = _run(["rollback", "--config", "{good}", "rot_nope"], world)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        "sshklm-agent: rollback: no rotation rot_nope recorded on this host (a rotation id looks like "
        "rot_…: see the control plane's rotation, or the instruction_applied events)"
    ]
