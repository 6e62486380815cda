"""Logging conventions: one logger namespace (`sshklm.*`) everywhere in the agent, and the
throttle that turns a repeating condition (a server outage) into a few lines at growing intervals."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from agent.log import LogThrottle

AGENT = Path(__file__).resolve().parents[2] / "agent"


def _logger_names() -> list[tuple[str, int, str]]:
    """(file, line, name or '<expr>') of every logging.getLogger(...) call with an argument."""
    found: list[tuple[str, int, str]] = []
    for path in sorted(AGENT.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr == "getLogger":
                arg = node.args[0]
                name = arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else "<expr>"
                found.append((str(path.relative_to(AGENT.parent)), node.lineno, name))
    return found


def test_every_agent_logger_is_in_the_sshklm_namespace() -> None:
    names = _logger_names()
    assert names, "no logger found: the scan is broken"
    # agent/log.py sets the level of third-party loggers (httpx, apscheduler): it logs nothing itself.
    wrong = [
        f"{f}:{line}: {name}"
        for f, line, name in names
        if not name.startswith("sshklm.") and f != "agent/log.py"
    ]
    assert not wrong, "loggers outside sshklm.*: " + ", ".join(wrong)


def test_nothing_logs_through_the_root_logger() -> None:
    calls = []
    for path in sorted(AGENT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "logging"
                and node.func.attr in {"debug", "info", "warning", "error", "exception", "critical", "log"}
            ):
                calls.append(f"{path.relative_to(AGENT.parent)}:{node.lineno}")
    assert not calls, calls


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_throttle_says_it_once_then_at_growing_intervals() -> None:
    clock = Clock()
    throttle = LogThrottle(first_interval_s=60, factor=2, max_interval_s=600, clock=clock)
    spoken: list[tuple[float, int]] = []
    # A failure every 5 s for an hour.
    for _ in range(720):
        verdict = throttle.allow("outage")
        if verdict.log:
            spoken.append((clock.now - 1000.0, verdict.held_back))
        clock.now += 5
    times = [t for t, _ in spoken]
    assert times[:5] == [0, 60, 180, 420, 900]  # +60, +120, +240, +480 ...
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert max(gaps) == 600  # ... capped
    assert len(spoken) < 12  # an hour of failures: a handful of lines, not 720
    # Each line after the first counts what was held back since the previous line.
    assert spoken[0][1] == 0
    assert spoken[1][1] == 60 / 5 - 1
    ended = throttle.end("outage")
    assert ended is not None and ended.occurrences == 720
    held_after_last_line = 720 - 1 - int(times[-1] / 5)
    assert sum(held for _, held in spoken) + len(spoken) + held_after_last_line == 720


def test_throttle_end_reports_the_condition_and_resets_it() -> None:
    clock = Clock()
    throttle = LogThrottle(first_interval_s=60, clock=clock)
    assert throttle.end("outage") is None  # never began: nothing to say
    for _ in range(10):
        throttle.allow("outage")
        clock.now += 1
    ended = throttle.end("outage")
    assert ended is not None
    assert ended.occurrences == 10
    assert ended.duration_s == pytest.approx(10.0)
    assert throttle.end("outage") is None
    assert throttle.allow("outage").log  # a new outage is said at once again


def test_throttle_keys_are_independent() -> None:
    clock = Clock()
    throttle = LogThrottle(first_interval_s=60, clock=clock)
    assert throttle.allow("a").log
    assert throttle.allow("b").log
    assert not throttle.allow("a").log
    assert throttle.active() == {"a", "b"}
