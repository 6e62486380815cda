"""How the conversation with the control plane is going, for `status` and for the log.

One `LinkHealth` per daemon (handed to the server link through `Core.health`). The link wraps each
call it makes to the control plane in `health.call(kind)`; that records:

- the last successful delivery of each kind (inventory, events, heartbeat, instructions, results,
  policy, scan_result), with a count where one makes sense (events delivered);
- for each kind that is failing now: since when, how many calls failed, the last error with its
  code, HTTP status and message (never a secret: ApiError messages are scrubbed, then redacted);
- the server's last answer (HTTP status and error code; a transport failure is no answer);
- the last error overall, kept after recovery (what went wrong last, and when).

The daemon adds when the sender tries again (its backoff) and the outbox's age, publishes the
snapshot in the status document every few seconds and at stop, and restores it at start from the
last published document: a restart keeps the record (a kill -9 loses at most those seconds).

Logging: a failing conversation is said once, then at growing intervals (agent.log.LogThrottle:
1, 2, 4 ... minutes, at most hourly), each line counting what it stands for; when calls succeed
again, one line says so. Transport errors, 5xx and 429 are one condition (the server is out of
reach, whatever the call); any other error is a condition of its kind of call (a 403 on results).
The sender and the scheduler therefore log these ApiErrors only at debug level.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agent.control.errors import RATE_LIMITED, SERVER_ERROR, TRANSPORT_ERROR, ApiError
from agent.log import LogThrottle
from agent.redact import redact
from agent.timefmt import duration, parse_rfc3339, rfc3339

log = logging.getLogger("sshklm.link")

JSON = dict[str, Any]

KINDS = ("inventory", "events", "heartbeat", "instructions", "results", "policy", "scan_result")
# What makes a host "reporting": the kinds whose failure means the server is not hearing from it.
REPORTING_KINDS = ("inventory", "events", "heartbeat")
# Failures that are one condition whatever the call: the server is out of reach or overloaded.
OUTAGE_CODES = frozenset({TRANSPORT_ERROR, SERVER_ERROR, RATE_LIMITED})
OUTAGE = "outage"
MAX_MESSAGE = 300


@dataclass
class Outcome:
    """What a call delivered, set by the caller inside `health.call(...)` (e.g. events acked)."""

    count: int | None = None


def describe(error: BaseException) -> tuple[str, int | None, str]:
    """(code, HTTP status or None, message) of a failed call; the message redacted and bounded."""
    if isinstance(error, ApiError):
        return error.code, error.status, redact(error.message)[:MAX_MESSAGE]
    return type(error).__name__, None, redact(str(error))[:MAX_MESSAGE]


class LinkHealth:
    """Thread-safe: the sender thread and the scheduler's workers call it at once."""

    def __init__(
        self,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        throttle: LogThrottle | None = None,
    ) -> None:
        self._clock = clock
        # Told when the picture changes (a kind's first delivery since the start, a kind starts or
        # stops failing): the daemon publishes its status then, not only every few seconds.
        self.on_change: Callable[[], None] = lambda: None
        self._seen_this_run: set[str] = set()
        self._throttle = throttle or LogThrottle()
        self._lock = threading.Lock()
        self._deliveries: dict[str, JSON] = {}
        self._failing: dict[str, JSON] = {}
        self._last_error: JSON | None = None
        self._server_answer: JSON | None = None

    # -- what the link calls ------------------------------------------------------------------

    def stamp(self) -> float:
        """Now, as `succeeded(begun=...)` wants it: taken when a call is sent."""
        return self._throttle.now()

    @contextmanager
    def call(self, kind: str) -> Iterator[Outcome]:
        """Around one call to the control plane: success or failure (re-raised) is recorded."""
        outcome = Outcome()
        begun = self.stamp()
        try:
            yield outcome
        except ApiError as exc:
            self.failed(kind, exc)
            raise
        self.succeeded(kind, count=outcome.count, begun=begun)

    def succeeded(
        self, kind: str, *, count: int | None = None, http_status: int = 200, begun: float | None = None
    ) -> None:
        """`begun`: when the call was sent (the throttle's clock). An answer to a call sent before a
        condition began (a long-poll held since before the outage) says nothing of the server
        now: it is a delivery, but it ends no condition."""
        now = self._clock()
        with self._lock:
            self._deliveries[kind] = {"at": rfc3339(now), "count": count}
            self._server_answer = {"at": rfc3339(now), "http_status": http_status, "code": None}
            changed = self._failing.pop(kind, None) is not None or kind not in self._seen_this_run
            self._seen_this_run.add(kind)
        # Any answer ends the outage; a kind's own condition ends with its own success.
        for key in (OUTAGE, kind):
            began = self._throttle.began(key)
            if began is None or (begun is not None and begun < began):
                continue
            ended = self._throttle.end(key)
            if ended is None:
                continue
            if key == OUTAGE:
                log.info(
                    "control plane answering again after %s (%d failed calls)",
                    duration(ended.duration_s),
                    ended.occurrences,
                )
            else:
                log.info(
                    "%s: succeeded again after %s (%d failed calls)",
                    kind,
                    duration(ended.duration_s),
                    ended.occurrences,
                )
        if changed:
            self.on_change()

    def failed(self, kind: str, error: BaseException) -> None:
        now = self._clock()
        code, status, message = describe(error)
        record = {"at": rfc3339(now), "code": code, "http_status": status, "message": message}
        with self._lock:
            self._last_error = {"kind": kind, **record}
            if status is not None:
                self._server_answer = {"at": rfc3339(now), "http_status": status, "code": code}
            streak = self._failing.get(kind)
            changed = streak is None
            if streak is None:
                streak = self._failing[kind] = {"since": rfc3339(now), "calls": 0}
            streak["calls"] += 1
            streak.update(record)
        if changed:
            self.on_change()
        key = OUTAGE if code in OUTAGE_CODES else kind
        verdict = self._throttle.allow(key)
        if not verdict.log:
            return
        what = f"{kind}: {code}" + (f" (HTTP {status})" if status is not None else "") + f": {message}"
        if verdict.occurrences == 1:
            log.warning(
                "control plane: %s; trying again with backoff (the detail: `sshklm-agent status`)",
                what,
            )
        else:
            log.warning(
                "control plane: still failing after %s, %d failed calls (%d since the last line); last: %s",
                duration((now - parse_rfc3339(streak["since"])).total_seconds()),
                verdict.occurrences,
                verdict.held_back + 1,
                what,
            )

    # -- what status reads --------------------------------------------------------------------

    def snapshot(self) -> JSON:
        with self._lock:
            return {
                "deliveries": {kind: dict(v) for kind, v in self._deliveries.items()},
                "failing": {kind: dict(v) for kind, v in self._failing.items()},
                "last_error": dict(self._last_error) if self._last_error else None,
                "server_answer": dict(self._server_answer) if self._server_answer else None,
            }

    def restore(self, document: Mapping[str, Any] | None) -> None:
        """Take over what the previous process published (its status document's `reporting`).
        Anything malformed is dropped: a record of the past must never stop the start."""
        if not isinstance(document, Mapping):
            return

        def records(value: Any) -> dict[str, JSON]:
            if not isinstance(value, Mapping):
                return {}
            return {
                str(kind): dict(v)
                for kind, v in value.items()
                if isinstance(v, Mapping) and _is_time(v.get("at"))
            }

        with self._lock:
            self._deliveries = records(document.get("deliveries"))
            failing = records(document.get("failing"))
            self._failing = {k: v for k, v in failing.items() if _is_time(v.get("since"))}
            last, answer = document.get("last_error"), document.get("server_answer")
            self._last_error = dict(last) if isinstance(last, Mapping) and _is_time(last.get("at")) else None
            self._server_answer = (
                dict(answer) if isinstance(answer, Mapping) and _is_time(answer.get("at")) else None
            )


def _is_time(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parse_rfc3339(value)
    except ValueError:
        return False
    return True
