"""agent.log: formats, journald priorities, redaction of secrets in msg/args/exceptions/extras."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator

import pytest

from agent.log import journal_priority, setup_logging, stream_is_journal
from agent.redact import REDACTED, clear_secrets, looks_like_secret, redact, register_secret

JWT = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhZ3QifQ.SGVsbG8tc2lnbmF0dXJl_x"
API_KEY = "sk_agent_Zm9vYmFyYmF6cXV4"


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    clear_secrets()
    yield
    clear_secrets()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved_handlers:
        root.addHandler(handler)
    root.setLevel(saved_level)


def test_plain_format(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    out = io.StringIO()
    setup_logging("info", "auto", out)
    logging.getLogger("agent.test").info("hello %s", "world")
    logging.getLogger("agent.test").debug("hidden")
    line = out.getvalue()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO agent\.test: hello world\n", line)


def test_journal_format_prefixes_every_line_with_the_priority() -> None:
    out = io.StringIO()
    setup_logging("debug", "journal", out)
    log = logging.getLogger("agent.j")
    log.debug("d")
    log.info("i")
    log.log(25, "notice")
    log.warning("w")
    log.error("e")
    log.critical("c")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    lines = out.getvalue().splitlines()
    assert lines[:6] == [
        "<7>agent.j: d",
        "<6>agent.j: i",
        "<5>agent.j: notice",
        "<4>agent.j: w",
        "<3>agent.j: e",
        "<2>agent.j: c",
    ]
    traceback_lines = lines[6:]
    assert traceback_lines[0] == "<3>agent.j: failed"
    assert traceback_lines[1] == "<3>Traceback (most recent call last):"
    assert traceback_lines[-1] == "<3>RuntimeError: boom"
    assert all(line.startswith("<3>") for line in traceback_lines)


def test_priority_mapping() -> None:
    assert [journal_priority(lv) for lv in (5, 10, 20, 25, 30, 40, 50)] == [7, 7, 6, 5, 4, 3, 2]


def test_auto_picks_journal_only_when_journal_stream_is_our_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    with tempfile.TemporaryFile("w+") as stream, tempfile.TemporaryFile("w+") as other:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert stream_is_journal(stream)
        assert not stream_is_journal(other)
        setup_logging("info", "auto", stream)
        logging.getLogger("agent.a").warning("to the journal")
        setup_logging("info", "auto", other)  # replaces the previous handler
        logging.getLogger("agent.a").warning("to a plain file")
        stream.seek(0)
        other.seek(0)
        assert stream.read() == "<4>agent.a: to the journal\n"
        assert other.read().endswith(" WARNING agent.a: to a plain file\n")
    assert not stream_is_journal(io.StringIO())  # no file descriptor at all


def test_json_format_with_extra_fields_and_exception() -> None:
    out = io.StringIO()
    setup_logging("info", "json", out)
    try:
        raise ValueError("bad value")
    except ValueError:
        logging.getLogger("agent.js").error(
            "scan of %s failed", "/x", exc_info=True, extra={"user": "deploy"}
        )
    record = json.loads(out.getvalue())
    assert record["level"] == "error"
    assert record["logger"] == "agent.js"
    assert record["msg"] == "scan of /x failed"
    assert record["user"] == "deploy"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["ts"])
    assert record["exc"].endswith("ValueError: bad value")
    assert len(out.getvalue().splitlines()) == 1


@pytest.mark.parametrize("fmt", ["plain", "journal", "json"])
def test_registered_secrets_and_secret_shapes_are_redacted(fmt: str) -> None:
    out = io.StringIO()
    setup_logging("info", fmt, out)  # type: ignore[arg-type]
    register_secret("hunter2-long-refresh-token")
    register_secret("short")  # under 8 characters: ignored
    log = logging.getLogger("agent.r")
    log.info("token %s and key %s", JWT, API_KEY)
    log.info("refresh with hunter2-long-refresh-token now")
    log.warning("arg %r", {"refresh_token": "hunter2-long-refresh-token"})
    log.info("extra", extra={"header": f"Bearer {JWT}"})
    try:
        raise RuntimeError(f"server rejected {API_KEY}")
    except RuntimeError:
        log.exception("call failed")
    text = out.getvalue()
    assert JWT not in text
    assert API_KEY not in text
    assert "hunter2-long-refresh-token" not in text
    assert text.count(REDACTED) >= 5  # jwt, key, registered in msg, in args, in the exception
    if fmt == "json":
        extra_line = json.loads(text.splitlines()[3])
        assert extra_line["header"] == f"Bearer {REDACTED}"
    assert redact("a short word") == "a short word"  # the 5-character "secret" was not registered


def test_redaction_of_pem_private_keys_and_helpers() -> None:
    pem = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----"
    assert redact(f"read {pem} done") == f"read {REDACTED} done"
    assert looks_like_secret(JWT) and looks_like_secret(API_KEY)
    assert not looks_like_secret("SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s")
    register_secret("a-registered-value")
    assert looks_like_secret("x a-registered-value y")
    # A registered secret that contains another is masked whole.
    register_secret("a-registered-value-longer")
    assert redact("a-registered-value-longer") == REDACTED


def test_bad_format_string_is_still_logged_and_redacted() -> None:
    out = io.StringIO()
    handler = setup_logging("info", "plain", out)
    # Handed straight to our handler: pytest's own capture handler would raise on it first.
    record = logging.LogRecord("agent.bad", logging.INFO, __file__, 1, "two %s %s", (API_KEY,), None)
    handler.handle(record)
    text = out.getvalue()
    assert "two %s %s" in text and REDACTED in text and API_KEY not in text


def test_chatty_libraries_are_quieted_unless_debugging() -> None:
    setup_logging("info", "plain", io.StringIO())
    assert logging.getLogger("httpx").getEffectiveLevel() == logging.WARNING
    setup_logging("debug", "plain", io.StringIO())
    assert logging.getLogger("httpx").getEffectiveLevel() == logging.DEBUG


def test_unknown_level_or_format_is_an_error() -> None:
    with pytest.raises(ValueError):
        setup_logging("loud", "plain", io.StringIO())
    with pytest.raises(ValueError):
        setup_logging("info", "xml", io.StringIO())  # type: ignore[arg-type]
