"""agent.log: a log line is one line, whatever it carries. A file name chosen by a user (with a
newline, terminal escapes, C1 controls or Unicode line separators) must not forge another log
line or journal entry, nor drive the terminal of whoever reads the log."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from agent.log import escape_controls, setup_logging

HOSTILE = "id_x\n2026-01-01 00:00:00,000 INFO sshklm.daemon: FORGED\x1b[31mred\r\x9b2J\u2028\u202eevil\x00"


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved_handlers:
        root.addHandler(handler)
    root.setLevel(saved_level)


def test_escape_controls() -> None:
    assert escape_controls("plain text, ünïcödé, tab\tkept? no") == "plain text, ünïcödé, tab\\tkept? no"
    assert (
        escape_controls("a\nb\r\x1b[0m\x7f\x9b\u2028\u202e\x00")
        == "a\\nb\\r\\x1b[0m\\x7f\\x9b\\u2028\\u202e\\x00"
    )
    assert escape_controls("line one\nline two", keep_newlines=True) == "line one\nline two"
    text = "nothing to do"
    assert escape_controls(text) is text


@pytest.mark.parametrize("fmt", ["plain", "journal", "json"])
def test_a_hostile_argument_stays_on_one_line(fmt: str) -> None:
    out = io.StringIO()
    setup_logging("info", fmt, out)  # type: ignore[arg-type]
    logging.getLogger("sshklm.test").info(
        "key_added path=%s", "/home/alice/.ssh/" + HOSTILE, extra={"where": HOSTILE}
    )
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    for raw in ("\x1b", "\r", "\x9b", "\u2028", "\u202e", "\x00"):
        assert raw not in text
    if fmt == "json":
        record = json.loads(text)
        assert "\\nFORGED" not in record["msg"] and "\\n2026-01-01" in record["msg"]
        assert record["where"].startswith("id_x\\n")
    else:
        assert "id_x\\n2026-01-01" in text


def test_a_traceback_keeps_its_lines_but_not_its_escapes() -> None:
    out = io.StringIO()
    setup_logging("info", "journal", out)
    try:
        raise OSError(2, "No such file", "/home/alice/.ssh/\x1b[2Jx")
    except OSError:
        logging.getLogger("sshklm.test").exception("read failed")
    lines = out.getvalue().splitlines()
    assert len(lines) > 2 and all(line.startswith("<3>") for line in lines)
    assert "\x1b" not in out.getvalue()
