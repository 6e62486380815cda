"""The status document as Prometheus metrics, in the text exposition format (version 0.0.4).

Pure: the status document (agent/daemon/status.py, docs/status.md) in, the text out. The daemon
writes it to `metrics.textfile` for node_exporter's textfile collector on its status cadence
(agent/daemon/metrics_file.py); `sshklm-agent status --prometheus` prints it from the document the
daemon last published, so it answers without the daemon. Every metric is listed, with its labels
and meaning, in docs/status.md ("Metrics"); a test parses the output with a real parser.

Written here rather than with prometheus_client (docs/choices.md, "Metrics"): the format is a few
lines of text, and the library would bring an HTTP server, WSGI and a process-wide registry into a
root daemon that needs none of them, for ~1 MB of RSS.

Label values come from the document, partly from the server (an error code): each is cut to
MAX_LABEL characters and escaped as the format requires (backslash, double quote, line feed); a
character that is not valid UTF-8 (a lone surrogate from JSON) is replaced.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from agent.timefmt import parse_rfc3339

PREFIX = "sshklm_agent_"
MAX_LABEL = 128
# sshd's key revocation list, as status reports it (one series per state, 1 for the current one).
REVOCATION_STATES = ("ok", "not_configured", "unchecked", "missing", "invalid", "unreadable")

Sample = tuple[Mapping[str, object], float]


class _Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> None:
        """One metric family: HELP, TYPE and its samples (none: the family is left out)."""
        rendered = [f"{PREFIX}{name}{_labels(labels)} {_number(value)}" for labels, value in samples]
        if not rendered:
            return
        self.lines.append(f"# HELP {PREFIX}{name} {_escape_help(help_text)}")
        self.lines.append(f"# TYPE {PREFIX}{name} {kind}")
        self.lines.extend(rendered)

    def gauge(self, name: str, help_text: str, value: float | None) -> None:
        if value is not None:
            self.family(name, "gauge", help_text, [({}, value)])

    def info(self, name: str, help_text: str, labels: Mapping[str, object]) -> None:
        """An info-style gauge: always 1, what it says is in its labels (None becomes empty)."""
        shown = {key: "" if value is None else value for key, value in labels.items()}
        self.family(name, "gauge", help_text + " (always 1)", [(shown, 1)])

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(status: Mapping[str, Any], now: datetime) -> str:
    """The metrics of one status document; `now` gives the age of the oldest outbox event."""
    out = _Exposition()
    mode = status.get("mode")
    out.info(
        "info",
        "The agent: its version, mode (standalone, enrolled, not connected) and host id",
        {"version": status.get("version"), "mode": mode, "host_id": status.get("host_id")},
    )
    out.gauge(
        "running",
        "1 while the daemon runs, 0 once it stopped (or, from status, is not running).",
        1 if status.get("running") else 0,
    )
    out.gauge(
        "start_time_seconds", "When the daemon process started (Unix time).", _time(status.get("started_at"))
    )
    out.gauge(
        "status_updated_timestamp_seconds",
        "When the daemon last published its status (every 10 s while it runs; older: it is not running).",
        _time(status.get("updated_at")),
    )
    out.gauge(
        "last_scan_timestamp_seconds",
        "The last discovery, full or of changed files.",
        _time(status.get("last_scan_at")),
    )
    _inventory(out, status)
    _outbox(out, status, now)
    _watch(out, status)
    _counters(out, status)
    if mode == "enrolled" or status.get("reporting") is not None:
        _link(out, status)
    return out.text()


def _inventory(out: _Exposition, status: Mapping[str, Any]) -> None:
    kinds = _mapping(status.get("key_counts"))
    out.family(
        "keys",
        "gauge",
        "Keys in the inventory by kind, and whether sshd would honour them today (effective).",
        [
            ({"kind": kind, "effective": "true" if state == "effective" else "false"}, count)
            for kind, counts in sorted(kinds.items())
            for state, count in sorted(_mapping(counts).items())
            if state in ("effective", "ineffective") and _is_number(count)
        ],
    )
    out.family(
        "risk_factor_keys",
        "gauge",
        "Keys with each risk factor (policy:<rule> for a policy violation).",
        [
            ({"factor": f}, n)
            for f, n in sorted(_mapping(status.get("risk_factors")).items())
            if _is_number(n)
        ],
    )
    if status.get("key_counts") is not None:
        out.gauge(
            "inventory_problems",
            "Problems of the last inventory (unreadable files, invalid lines).",
            _number_or_none(status.get("problems")),
        )
    revocation = _mapping(status.get("revocation"))
    state = revocation.get("state")
    if state is not None:
        out.family(
            "revocation_list_state",
            "gauge",
            "sshd's key revocation list (RevokedKeys): 1 for its state; missing, invalid or "
            "unreadable mean sshd refuses every public key.",
            [({"state": s}, 1 if s == state else 0) for s in REVOCATION_STATES],
        )


def _outbox(out: _Exposition, status: Mapping[str, Any], now: datetime) -> None:
    depth = _number_or_none(status.get("outbox"))
    out.gauge("outbox_events", "Events waiting in the outbox to be delivered.", depth)
    oldest = _time(status.get("outbox_oldest_at"))
    out.gauge("outbox_oldest_event_timestamp_seconds", "When the oldest waiting event was queued.", oldest)
    if depth is not None:
        age = max(0.0, now.timestamp() - oldest) if oldest is not None else 0.0
        out.gauge(
            "outbox_oldest_event_age_seconds", "Age of the oldest waiting event (0: none waiting).", age
        )
    dropped = _mapping(_mapping(status.get("outbox_dropped")).get("by_type"))
    out.family(
        "outbox_dropped_events_total",
        "counter",
        "Events dropped by the outbox bound (state.outbox_max_events) since the state was created.",
        [({"type": t}, n) for t, n in sorted(dropped.items()) if _is_number(n)],
    )


def _watch(out: _Exposition, status: Mapping[str, Any]) -> None:
    watch = _mapping(status.get("watch"))
    out.family(
        "watched_files",
        "gauge",
        "Files watched, by method: inotify, or polled (network filesystems, past the watch limit).",
        [
            ({"method": method}, watch[key])
            for method, key in (("inotify", "targets_inotify"), ("polled", "targets_polled"))
            if _is_number(watch.get(key))
        ],
    )


def _counters(out: _Exposition, status: Mapping[str, Any]) -> None:
    counters = _mapping(status.get("counters"))
    results = _mapping(counters.get("instruction_results"))
    out.family(
        "instructions_total",
        "counter",
        "Instructions from the control plane decided, by result (applied, failed, rejected, expired).",
        [({"result": r}, n) for r, n in sorted(results.items()) if _is_number(n)],
    )
    requests = _mapping(counters.get("requests"))
    out.family(
        "requests_total",
        "counter",
        "Attempts of calls to the control plane, by request class and outcome (an HTTP status, its "
        "class as 5xx, or how an attempt without an answer failed: connect, timeout, dropped, ...).",
        [
            ({"class": cls, "status": outcome}, n)
            for cls, outcomes in sorted(requests.items())
            for outcome, n in sorted(_mapping(outcomes).items())
            if _is_number(n)
        ],
    )


def _times_by_kind(
    out: _Exposition, name: str, help_text: str, by_kind: Mapping[str, Any], field: str
) -> None:
    """A gauge family of timestamps, one series per kind whose entry has a valid time in `field`."""
    out.family(
        name,
        "gauge",
        help_text,
        [
            ({"kind": k}, t)
            for k, v in sorted(by_kind.items())
            if (t := _time(_mapping(v).get(field))) is not None
        ],
    )


def _link(out: _Exposition, status: Mapping[str, Any]) -> None:
    reporting = _mapping(status.get("reporting"))
    deliveries = _mapping(reporting.get("deliveries"))
    failing = _mapping(reporting.get("failing"))
    _times_by_kind(
        out,
        "last_delivery_timestamp_seconds",
        "The last time the control plane accepted a call of each kind (inventory, events, heartbeat, ...).",
        deliveries,
        "at",
    )
    kinds = sorted(set(deliveries) | set(failing))
    out.family(
        "failing_calls",
        "gauge",
        "Failed calls in each kind's current failure streak (0: the kind is not failing).",
        [({"kind": k}, _number_or_none(_mapping(failing.get(k)).get("calls")) or 0) for k in kinds],
    )
    _times_by_kind(
        out,
        "failing_since_timestamp_seconds",
        "When each failing kind of call began to fail.",
        failing,
        "since",
    )
    error = _mapping(reporting.get("last_error"))
    if error:
        out.info(
            "last_error_info",
            "The last failed call to the control plane: its kind, error code and HTTP status",
            {"kind": error.get("kind"), "code": error.get("code"), "http_status": error.get("http_status")},
        )
        out.gauge(
            "last_error_timestamp_seconds",
            "When the last call to the control plane failed.",
            _time(error.get("at")),
        )
    channel = _mapping(status.get("instructions"))
    if channel:
        out.gauge(
            "long_polling",
            "1 while a request waits at the control plane for instructions (contract 6.1).",
            1 if channel.get("long_polling") else 0,
        )
        out.gauge(
            "instruction_channel_failures",
            "Consecutive failed instruction requests.",
            _number_or_none(channel.get("failures")),
        )
    auth = status.get("auth_state")
    if isinstance(auth, str):
        out.info(
            "auth_info",
            "The client's authentication state (token_valid, auth_invalid, not_connected, ...)",
            {"state": auth},
        )


# -- the format ------------------------------------------------------------------------------------


def _labels(labels: Mapping[str, object]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{name}="{_escape_label(value)}"' for name, value in labels.items()) + "}"


def _escape_label(value: object) -> str:
    text = str(value)[:MAX_LABEL].encode("utf-8", "replace").decode("utf-8")
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number_or_none(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    return None


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _time(value: object) -> float | None:
    """An RFC 3339 time of the document as Unix seconds; None when absent or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        return parse_rfc3339(value).timestamp()
    except ValueError:
        return None
