"""`sshklm-agent status`: the document the daemon publishes and the screen that prints it."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from agent.commands.status import render
from agent.config import parse_config_text
from agent.daemon.counters import Counters
from agent.daemon.server_link import ServerLink
from agent.daemon.status import status_document, summary_line

NOW = datetime(2026, 12, 4, 12, 15, 0, tzinfo=UTC)
DOCS = Path(__file__).resolve().parents[2] / "docs" / "status.md"


def _document(link: dict[str, object] | None, reporting: dict[str, object] | None, **extra: object) -> dict:  # type: ignore[type-arg]
    doc = status_document(
        running=True,
        pid=4242,
        now=NOW,
        started_at=datetime(2026, 12, 4, 10, 0, 0, tzinfo=UTC),
        last_scan_at=datetime(2026, 12, 4, 12, 14, 0, tzinfo=UTC),
        inventory=None,
        outbox=42,
        watch={"targets_inotify": 5, "targets_polled": 0},
        last_error=None,
        next_jobs={
            "heartbeat": "2026-12-04T12:15:02Z",
            "ephemeral-sweep": "2026-12-04T12:16:00Z",
            "token_refresh": "2026-12-04T12:15:30Z",
        },
        link=link,
        outbox_oldest_at=datetime(2026, 12, 4, 12, 1, 2, tzinfo=UTC),
        reporting=reporting,
        retry_at=datetime(2026, 12, 4, 12, 15, 37, tzinfo=UTC) if reporting else None,
    )
    doc.update(extra)
    return doc


LINK = {
    "host_id": "hst_abc",
    "server": "https://cp.example.com",
    "auth_state": "token_valid",
    "token_expires_at": "2026-12-04T12:30:00Z",
    "last_report_at": None,
    "last_heartbeat_at": None,
    "link_problem": None,
    "policy_version": 3,
}
FAILING = {
    "deliveries": {
        "inventory": {"at": "2026-12-04T11:00:01Z", "count": None},
        "events": {"at": "2026-12-04T12:00:40Z", "count": 12},
        "heartbeat": {"at": "2026-12-04T12:00:55Z", "count": None},
    },
    "failing": {
        "events": {
            "since": "2026-12-04T12:01:02Z",
            "calls": 30,
            "at": "2026-12-04T12:14:59Z",
            "code": "TRANSPORT_ERROR",
            "http_status": None,
            "message": "ConnectError: [Errno 111] Connection refused",
        },
        "heartbeat": {
            "since": "2026-12-04T12:01:30Z",
            "calls": 11,
            "at": "2026-12-04T12:14:30Z",
            "code": "SERVER_ERROR",
            "http_status": 503,
            "message": "maintenance",
        },
    },
    "last_error": {
        "kind": "events",
        "at": "2026-12-04T12:14:59Z",
        "code": "TRANSPORT_ERROR",
        "http_status": None,
        "message": "ConnectError: [Errno 111] Connection refused",
    },
    "server_answer": {"at": "2026-12-04T12:14:30Z", "http_status": 503, "code": "SERVER_ERROR"},
}


def test_why_is_this_host_not_reporting_in_one_screen() -> None:
    text = render(_document(LINK, FAILING), NOW)
    lines = text.splitlines()
    assert len(lines) <= 24  # one screen
    head = "\n".join(lines[:7])  # the answer comes first
    assert "mode:         enrolled: host hst_abc, server https://cp.example.com" in head
    assert (
        "reporting:    FAILING since 2026-12-04T12:01:02Z (13 min ago): events, heartbeat (41 failed calls)"
        in head
    )
    assert "last error:   2026-12-04T12:14:59Z (1 s ago) events: TRANSPORT_ERROR: ConnectError" in head
    assert "server said:  HTTP 503 SERVER_ERROR at 2026-12-04T12:14:30Z (30 s ago)" in head
    assert "next try:     2026-12-04T12:15:37Z (in 37 s) (delivery backoff)" in head
    assert "outbox:       42 events waiting, the oldest since 2026-12-04T12:01:02Z (13 min ago)" in head
    assert "inventory 2026-12-04T11:00:01Z (1 h 14 min ago)" in text
    assert "events    2026-12-04T12:00:40Z (14 min ago), 12 events" in text


def test_every_row_is_aligned() -> None:
    # issue 15: `next ephemeral-sweep:2026-…` and `next token_refresh:2026-…` lost their alignment.
    text = render(_document(LINK, FAILING), NOW)
    columns = {len(m.group(1)) for m in re.finditer(r"^(\S[^:]*:\s+)\S", text, re.M)}
    assert columns == {14}, text
    jobs = [
        line
        for line in text.splitlines()
        if "2026-12-04T12:1" in line and ("heartbeat" in line or "sweep" in line or "token_refresh" in line)
    ]
    times = {line.index("2026-12-04T12:1") for line in jobs if "(" not in line.split("2026")[0]}
    assert len(times) == 1, jobs


def test_not_enrolled_says_so_and_never_enrolled() -> None:
    # issue 15: it showed `mode: enrolled` and then `server: not enrolled`.
    link = ServerLink(parse_config_text('[server]\nurl = "https://cp.example.com"\n')).status()
    link["link_problem"] = "not enrolled: run `sshklm-agent enroll --server URL --token-file FILE`"
    doc = _document(link, None)
    assert doc["mode"] == "not connected"
    text = render(doc, NOW)
    mode = next(line for line in text.splitlines() if line.startswith("mode:"))
    assert mode == (
        "mode:         not enrolled: run `sshklm-agent enroll --server URL --token-file FILE` "
        "(server https://cp.example.com)"
    )
    assert "mode:         enrolled" not in text and "reporting:" not in text
    assert "not enrolled" in summary_line(doc)


def test_standalone() -> None:
    text = render(_document(None, None), NOW)
    assert "mode:         standalone (no server.url): changes are logged, nothing is sent" in text
    assert "delivered" not in text and "reporting" not in text


def test_nothing_delivered_yet_says_what_it_waits_for() -> None:
    doc = _document(LINK, {"deliveries": {}, "failing": {}, "last_error": None, "server_answer": None})
    text = render(doc, NOW)
    assert (
        "reporting:    nothing delivered yet: first contact 2026-12-04T12:15:02Z (in 2 s) (start-up splay)"
        in text
    )


def test_a_failing_instruction_channel_says_when_it_tries_next() -> None:
    channel = {
        "mode": "long_poll",
        "long_polling": False,
        "wait_s": 60,
        "failures": 3,
        "last_error": "2026-12-04T12:14:00Z SERVER_ERROR (HTTP 503): down",
        "next_retry_at": "2026-12-04T12:15:20Z",
    }
    text = render(_document({**LINK, "instructions": channel}, FAILING), NOW)
    assert "next try:     2026-12-04T12:15:20Z (in 20 s) (instructions backoff)" in text
    channel.update(failures=0, next_retry_at=None)
    assert "instructions backoff" not in render(_document({**LINK, "instructions": channel}, FAILING), NOW)


def _fields(value: object, prefix: str = "") -> set[str]:
    out: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            name = f"{prefix}{key}"
            out.add(name)
            if isinstance(item, dict) and key not in (
                "next_jobs",
                "watch",
                "deliveries",
                "failing",
                # Maps of kinds, factors, classes and results to counts (described as one field each).
                "key_counts",
                "risk_factors",
                "requests",
                "instruction_results",
            ):
                out |= _fields(item, name + ".")
    return out


def test_every_field_of_status_json_is_documented() -> None:
    documented = set(re.findall(r"^\| `([A-Za-z_.]+)` \|", DOCS.read_text(), re.M))
    fields = _fields(_document(LINK, FAILING)) | _fields({"reporting": {"next_retry_at": None}})
    # The server link's own fields, as ServerLink.status() gives them (the instruction channel's too).
    fields |= _fields(ServerLink(parse_config_text('[server]\nurl = "https://cp.example.com"\n')).status())
    # After a reload, its record (agent/daemon/service.py Daemon._finish_reload).
    reload_record = {
        "started_usec": 1,
        "finished_at": "…",
        "result": "applied",
        "detail": None,
        "generation": 1,
    }
    fields |= _fields({"last_reload": reload_record})
    # After the outbox bound acted (store/outbox.py Outbox.dropped()); by_type's keys are event types.
    fields |= _fields({"outbox_dropped": {"total": 1, "by_type": {}, "merged": 0, "last_at": None}})
    # With a scan: the revocation list's state (agent/daemon/status.py revocation_status).
    fields |= _fields(
        {"revocation": {"state": "ok", "path": "/k", "entries": 0, "version": 1, "problem": None}}
    )
    # The metrics' counters (agent/daemon/counters.py Counters.snapshot()).
    fields |= _fields({"counters": Counters().snapshot()})
    # The per-kind records: one documented shape each.
    fields |= {f"reporting.deliveries.KIND.{k}" for k in FAILING["deliveries"]["events"]}  # type: ignore[index]
    fields |= {f"reporting.failing.KIND.{k}" for k in FAILING["failing"]["events"]}  # type: ignore[index]
    assert fields - documented == set(), "undocumented"
    assert documented - fields == set(), "documented but not in the document"


def test_outbox_losses_over_the_bound_are_shown() -> None:
    quiet = render(_document(None, None, outbox_dropped={"total": 0, "by_type": {}, "merged": 0}), NOW)
    assert "dropped" not in quiet
    doc = _document(None, None, outbox_dropped={"total": 7, "by_type": {"key_used": 7}, "merged": 3})
    assert "7 dropped over its bound (state.outbox_max_events)" in render(doc, NOW)


def test_a_broken_revocation_list_is_said_loudly() -> None:
    ok = {
        "state": "ok",
        "path": "/etc/ssh/sshklm-agent/revoked_keys",
        "entries": 3,
        "version": 2,
        "problem": None,
    }
    assert "revocation:   ok, 3 entries in /etc/ssh/sshklm-agent/revoked_keys" in render(
        _document(None, None, revocation=ok), NOW
    )
    broken = {**ok, "state": "invalid", "problem": "not a KRL"}
    text = render(_document(None, None, revocation=broken), NOW)
    assert "INVALID: /etc/ssh/sshklm-agent/revoked_keys: sshd refuses EVERY public key" in text
    assert "KRL invalid: sshd refuses every public key" in summary_line(
        _document(None, None, revocation=broken)
    )
