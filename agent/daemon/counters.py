"""What the metrics count (docs/status.md, "Metrics"): every attempt of a call to the control plane,
by request class and outcome, and every instruction the agent decided, by its result.

The client tells each attempt's outcome through its `on_attempt` hook (agent/control/client.py,
where every attempt is judged); the instruction handler counts the results it produces
(agent/daemon/extensions.py). Label values are bounded here, whatever a server answers: a status
the contract names is kept, any other is folded into its class (`5xx`), and an attempt without an
answer is named by how it failed (`connect`, `timeout`, `dropped`, ...).

Kept across restarts: the daemon publishes the counts in its status document and takes them back
at start (like LinkHealth's record), so they only grow, as a Prometheus counter must; the metrics
file is written after the document (agent/daemon/service.py), so a kill -9, which loses at most the
last seconds of counting, never makes a published counter go back. Only a new state directory
starts them again from zero, which Prometheus reads as a counter reset.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from agent.inventory.model import Event

if TYPE_CHECKING:  # the standalone agent never loads the client (nor httpx)
    from agent.control.retry import Attempt

JSON = dict[str, Any]

# The results an instruction can have (contract §6).
INSTRUCTION_RESULTS = ("applied", "failed", "rejected", "expired")
# Statuses the contract (or HTTP around it) gives; any other is counted as its class ("5xx").
NAMED_STATUSES = frozenset(
    {200, 201, 202, 204, 304, 400, 401, 403, 404, 409, 413, 422, 429, 500, 502, 503, 504}
)
TRANSPORT_OUTCOMES = frozenset({"connect", "dropped", "timeout", "tls", "unsupported", "unread"})
REQUEST_CLASSES = frozenset({"read", "write", "scan", "ephemeral"})
MAX_RESTORED = 256  # request (class, outcome) pairs taken back at start at most: bounded anyway


def attempt_outcome(attempt: Attempt) -> str:
    """The outcome label of one attempt: its HTTP status, its status class, or how it failed."""
    status = attempt.status
    if status is None:
        return attempt.transport if attempt.transport in TRANSPORT_OUTCOMES else "transport"
    if status in NAMED_STATUSES:
        return str(status)
    return f"{status // 100}xx" if 100 <= status <= 999 else "other"


def instruction_result(event: Event) -> str | None:
    """The result an instruction event stands for; None for other events, and for an ephemeral
    grant's expiry, which reports with the same event types but is no instruction."""
    if event.type not in ("instruction_applied", "instruction_failed"):
        return None
    if event.detail.get("action") == "ephemeral_expiry":
        return None
    if event.type == "instruction_applied":
        return "applied"
    status = event.detail.get("status")
    return status if status in INSTRUCTION_RESULTS else "failed"


class Counters:
    """Thread-safe: the client's callers (sender, scheduler workers, the instruction channel) count
    at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[tuple[str, str]] = Counter()
        self._instructions: Counter[str] = Counter()

    def attempt(self, request_class: str, attempt: Attempt) -> None:
        """The client's hook: one attempt of a call, whatever came of it."""
        cls = request_class if request_class in REQUEST_CLASSES else "write"
        outcome = attempt_outcome(attempt)
        with self._lock:
            self._requests[(cls, outcome)] += 1

    def instruction(self, result: object) -> None:
        """One instruction decided (applied, failed, rejected or expired)."""
        key = result if isinstance(result, str) and result in INSTRUCTION_RESULTS else "failed"
        with self._lock:
            self._instructions[key] += 1

    def snapshot(self) -> JSON:
        with self._lock:
            requests: dict[str, dict[str, int]] = {}
            for (cls, outcome), count in sorted(self._requests.items()):
                requests.setdefault(cls, {})[outcome] = count
            return {
                "requests": requests,
                "instruction_results": {r: self._instructions.get(r, 0) for r in INSTRUCTION_RESULTS},
            }

    def restore(self, document: object) -> None:
        """Take over the counts the previous process published (its status document's `counters`).
        Anything malformed is dropped: a record of the past must never stop the start."""
        if not isinstance(document, Mapping):
            return
        requests: Counter[tuple[str, str]] = Counter()
        by_class = document.get("requests")
        if isinstance(by_class, Mapping):
            for cls, outcomes in by_class.items():
                if cls not in REQUEST_CLASSES or not isinstance(outcomes, Mapping):
                    continue
                for outcome, count in outcomes.items():
                    if _count(count) and isinstance(outcome, str) and len(requests) < MAX_RESTORED:
                        requests[(cls, outcome[:16])] = count
        instructions: Counter[str] = Counter()
        results = document.get("instruction_results")
        if isinstance(results, Mapping):
            for result in INSTRUCTION_RESULTS:
                if _count(results.get(result)):
                    instructions[result] = results[result]
        with self._lock:
            self._requests.update(requests)
            self._instructions.update(instructions)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
