"""File names chosen by a user — a newline, terminal escape sequences, C1 controls, Unicode line
separators — through `scan --format table`: every cell and every problem line is escaped, so the
table stays one row per key and never drives the terminal. (The daemon's log:
test_daemon_hostile.py::test_hostile_file_names_do_not_forge_log_lines.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.cli import main
from tests.fakeroot import FakeRoot, ed25519_line, ed25519_private_openssh

HOSTILE = "id_x\nalice    auth  ED25519    256  FORGEDROW\x1b[2J\x1b[31m\r\x9b\u2028"


def hostile_tree(tmp_path: Path) -> FakeRoot:
    fr = FakeRoot(tmp_path / "root")
    fr.add_user("alice", os.geteuid() or 1000)
    fr.authorized_keys("alice", [ed25519_line("alice\x1b[31m-key")])
    private, _ = ed25519_private_openssh()
    fr.write(f"/home/alice/.ssh/{HOSTILE}", private)  # an identity key with a hostile name
    fr.write(
        f"/home/alice/.ssh/id_rsa{HOSTILE}", b"-----BEGIN OPENSSH PRIVATE KEY-----\ngarbage\n"
    )  # a problem
    return fr


def test_table_escapes_every_cell_and_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fr = hostile_tree(tmp_path)
    assert main(["scan", "--root", str(fr.root), "--format", "table"]) == 0
    out = capsys.readouterr().out
    for raw in ("\x1b", "\r", "\x9b", "\u2028"):
        assert raw not in out
    lines = out.splitlines()
    assert not any(line.startswith("alice    auth  ED25519    256  FORGEDROW") for line in lines)
    problems = [line for line in lines if line.startswith("problem:")]
    assert problems and all("\\n" in line for line in problems)
