"""Logging setup: plain text, sd-daemon priority prefixes for journald, or JSON lines;
with secret redaction applied to every record before it is formatted.

Formats
- plain:   `2026-01-02 03:04:05,678 INFO agent.daemon: message`
- journal: `<6>agent.daemon: message` (sd-daemon(3) priority prefix; no timestamp, journald
           adds its own). A multi-line message (a traceback) gets the prefix on EVERY line:
           journald's stream reader turns each line into its own entry and gives an
           unprefixed line the default priority (info), so `journalctl -p err` would show a
           failure's first line but not its traceback. Prefixing every line keeps all of them
           at the record's priority (and each line still names the logger).
- json:    one object per line: ts, level, logger, msg, exc (when any), plus `extra=` fields.
- auto:    journal when JOURNAL_STREAM names the stream we write to (systemd.exec(5): compare
           its device:inode with fstat of the stream, so output redirected elsewhere by hand
           stays plain), else plain.

Redaction
`RedactingFilter` (installed on the handler) applies `agent.redact.redact` (registered secret
values and JWT / `sk_agent_` / PEM private key shapes) to the message with its args, to
exception and stack text, and to string `extra=` fields.

Escaping (one record, one line)
`ControlCharFilter` (installed on the handler after redaction) applies `escape_controls` to the
message with its args and to string `extra=` fields: a control character, a Unicode line or
paragraph separator or a format character (bidi overrides) becomes `\n`, `\x1b`, `\u2028`...
So a file name a user chose (`id_x\n<a forged line>\x1b[2J`) can neither forge another line or
journal entry nor drive the terminal of whoever reads the log. Exception and stack text keep
their line breaks (a traceback is several lines, each prefixed in journal mode) and lose every
other control character.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from agent.redact import redact

# `register_secret` lives in agent.redact (the state store shares the registry); it stays
# importable from here because the control-plane code registers its tokens "for the logs".
from agent.redact import register_secret as register_secret

Format = Literal["auto", "plain", "json", "journal"]

# Attributes every LogRecord has; anything else came from `extra=`.
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
}


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS and not k.startswith("_")}


class _RewritingFilter(logging.Filter):
    """Rewrites each record in place, before any formatter sees it, with `rewrite`: the message
    rendered with its args (args cleared), the exception text rendered into `exc_text` (which
    logging's formatters reuse), stack text, and string extra fields. Never drops a record."""

    def rewrite(self, text: str, *, multiline: bool) -> str:
        raise NotImplementedError

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what we have, still rewritten
            message = f"{record.msg!s} {record.args!r}"
        record.msg = self.rewrite(message, multiline=False)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.rewrite(record.exc_text, multiline=True)
        if record.stack_info:
            record.stack_info = self.rewrite(record.stack_info, multiline=True)
        for key, value in _extra_fields(record).items():
            if isinstance(value, str):
                setattr(record, key, self.rewrite(value, multiline=False))
        return True


class RedactingFilter(_RewritingFilter):
    """Redacts every part of a record (agent.redact.redact)."""

    def rewrite(self, text: str, *, multiline: bool) -> str:
        return redact(text)


_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Control (Cc), format (Cf: bidi overrides, zero-width), line and paragraph separators (Zl, Zp).
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def _is_safe(ch: str) -> bool:
    return ch.isprintable() or unicodedata.category(ch) not in _UNSAFE_CATEGORIES


def escape_controls(text: str, *, keep_newlines: bool = False) -> str:
    """`text` with every character that could break a line or drive a terminal escaped
    (``\n``, ``\x1b``, ``\u2028``...); ``keep_newlines`` leaves "\n" as it is (tracebacks).
    Printable text is returned as is (the same object), without a per-character pass."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if _is_safe(ch) or (ch == "\n" and keep_newlines):
            out.append(ch)
        elif ch in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[ch])
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(f"\\u{ord(ch):04x}")
    return "".join(out)


class ControlCharFilter(_RewritingFilter):
    """Escapes control characters in every part of a record (see the module docstring,
    "Escaping"); exception and stack text keep their line breaks."""

    def rewrite(self, text: str, *, multiline: bool) -> str:
        return escape_controls(text, keep_newlines=multiline)


def journal_priority(levelno: int) -> int:
    """sd-daemon(3) priority for a logging level: 2 crit, 3 err, 4 warning, 5 notice
    (levels between INFO and WARNING), 6 info, 7 debug."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno > logging.INFO:
        return 5
    if levelno >= logging.INFO:
        return 6
    return 7


class JournalFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{journal_priority(record.levelno)}>"
        text = super().format(record)
        return "\n".join(prefix + line for line in text.splitlines() or [""])


class PlainFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        for key, value in _extra_fields(record).items():
            out.setdefault(key, value)
        return json.dumps(out, default=str, ensure_ascii=False)


def stream_is_journal(stream: TextIO, environ: dict[str, str] | None = None) -> bool:
    """True if JOURNAL_STREAM (`<dev>:<inode>`) names the file `stream` writes to."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(stream.fileno())
        return st.st_dev == int(dev) and st.st_ino == int(ino)
    except (OSError, ValueError, AttributeError):
        return False


# Libraries that log every request / job run at INFO; quieter unless we are debugging.
_CHATTY_LOGGERS = ("httpx", "httpcore", "apscheduler", "watchdog")
# APScheduler warns when a run is skipped because the previous one still runs (max_instances=1)
# or was missed (a suspend): both expected (coalesce), and during an outage one per period.
_EXPECTED_WARNINGS = ("apscheduler.scheduler", "apscheduler.executors.default")


def _parse_level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    value = logging.getLevelNamesMapping().get(level.upper())
    if value is None:
        raise ValueError(f"unknown log level {level!r}")
    return value


def setup_logging(
    level: str | int = "info", fmt: Format = "auto", stream: TextIO | None = None
) -> logging.Handler:
    """Configure the root logger with one handler on `stream` (default: sys.stderr at call
    time). Calling again replaces the handler installed by the previous call."""
    target = sys.stderr if stream is None else stream
    chosen = fmt
    if chosen == "auto":
        chosen = "journal" if stream_is_journal(target) else "plain"
    formatter: logging.Formatter
    if chosen == "journal":
        formatter = JournalFormatter()
    elif chosen == "json":
        formatter = JsonFormatter()
    elif chosen == "plain":
        formatter = PlainFormatter()
    else:
        raise ValueError(f"unknown log format {fmt!r}")
    levelno = _parse_level(level)

    handler = logging.StreamHandler(target)
    handler.setFormatter(formatter)
    handler.addFilter(RedactingFilter())
    handler.addFilter(ControlCharFilter())
    handler.set_name("sshklm-agent")

    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == "sshklm-agent":
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(levelno)
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if levelno <= logging.DEBUG else logging.WARNING)
    for name in _EXPECTED_WARNINGS:
        logging.getLogger(name).setLevel(logging.NOTSET if levelno <= logging.DEBUG else logging.ERROR)
    return handler


# -- saying a repeating condition at growing intervals -----------------------------------------


@dataclass(frozen=True)
class ThrottleVerdict:
    """`log`: say it now; `held_back`: occurrences not said since the previous line;
    `occurrences`: all of them since the condition began; `since`: when it began (clock time)."""

    log: bool
    held_back: int
    occurrences: int
    since: float


@dataclass(frozen=True)
class ThrottleEnded:
    occurrences: int
    duration_s: float


@dataclass
class _Condition:
    since: float
    next_due: float
    interval: float
    occurrences: int = 0
    held_back: int = 0


class LogThrottle:
    """A condition that repeats (the server is down: every call fails) is said once, then again
    after `first_interval_s`, then at intervals growing by `factor` up to `max_interval_s`; each
    later line can say how many occurrences it stands for. `end(key)` closes the condition (the
    server answers again) so the caller can say so once, and the next occurrence is said at once.

    Keys are independent conditions (e.g. one per error code). Thread-safe; the clock is injected.
    """

    def __init__(
        self,
        *,
        first_interval_s: float = 60.0,
        factor: float = 2.0,
        max_interval_s: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._first = first_interval_s
        self._factor = factor
        self._max = max_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._conditions: dict[str, _Condition] = {}

    def allow(self, key: str) -> ThrottleVerdict:
        """One more occurrence of `key`: whether to say it now."""
        now = self._clock()
        with self._lock:
            condition = self._conditions.get(key)
            if condition is None:
                condition = _Condition(since=now, next_due=now + self._first, interval=self._first)
                self._conditions[key] = condition
                condition.occurrences = 1
                return ThrottleVerdict(True, 0, 1, now)
            condition.occurrences += 1
            if now < condition.next_due:
                condition.held_back += 1
                return ThrottleVerdict(False, condition.held_back, condition.occurrences, condition.since)
            held, condition.held_back = condition.held_back, 0
            condition.interval = min(condition.interval * self._factor, self._max)
            condition.next_due = now + condition.interval
            return ThrottleVerdict(True, held, condition.occurrences, condition.since)

    def now(self) -> float:
        """The throttle's clock (what `began` compares with)."""
        return self._clock()

    def began(self, key: str) -> float | None:
        """When the condition `key` began (the throttle's clock), None when it is not going on."""
        with self._lock:
            condition = self._conditions.get(key)
        return condition.since if condition is not None else None

    def end(self, key: str) -> ThrottleEnded | None:
        """The condition is over; None when it was not going on."""
        now = self._clock()
        with self._lock:
            condition = self._conditions.pop(key, None)
        if condition is None:
            return None
        return ThrottleEnded(condition.occurrences, now - condition.since)

    def active(self) -> set[str]:
        with self._lock:
            return set(self._conditions)
