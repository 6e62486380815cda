"""The metrics (agent/metrics.py): Prometheus' text format, checked with prometheus_client's own
parser; every metric documented in docs/status.md; hostile label values kept inside their quotes;
the counters behind them (agent/daemon/counters.py) bounded and restored."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from agent.control.retry import Attempt
from agent.daemon.counters import Counters, attempt_outcome, instruction_result
from agent.daemon.status import status_document
from agent.inventory.model import Event
from agent.metrics import render
from tests.unit.test_status_render import FAILING, LINK, NOW, _document

DOCS = Path(__file__).resolve().parents[2] / "docs" / "status.md"


def _parse(text: str) -> dict[str, Any]:
    """family name -> the parsed family (the parser raises on anything malformed)."""
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families, "nothing parsed"
    return families


def _samples(families: dict[str, Any], name: str) -> list[Sample]:
    return list(families[name].samples)


def _value(families: dict[str, Any], name: str, **labels: str) -> float:
    family = name.removesuffix("_total")
    matches = [s.value for s in families[family].samples if s.labels == labels and s.name == name]
    assert len(matches) == 1, (name, labels, families[family].samples)
    return float(matches[0])


def _enrolled_document() -> dict[str, Any]:
    counters = Counters()
    for status in (200, 200, 503, 429, 299):
        counters.attempt("read", Attempt(status))
    counters.attempt("write", Attempt(None, "connect"))
    counters.attempt("write", Attempt(204))
    counters.instruction("applied")
    counters.instruction("rejected")
    doc = _document(
        {**LINK, "instructions": {"mode": "long_poll", "long_polling": True, "wait_s": 60, "failures": 0}},
        FAILING,
        watch={"targets_inotify": 5, "targets_polled": 2},
        outbox_dropped={"total": 3, "by_type": {"key_used": 3}, "merged": 0, "last_at": None},
        counters=counters.snapshot(),
    )
    doc["key_counts"] = {
        "authorized_key": {"effective": 3, "ineffective": 1},
        "host_key": {"effective": 2, "ineffective": 0},
    }
    doc["risk_factors"] = {"no_passphrase": 1, "root_key": 0, "policy:type_not_allowed": 2}
    doc["revocation"] = {"state": "missing", "path": "/k", "entries": 0, "version": None, "problem": "gone"}
    return doc


def test_the_metrics_of_an_enrolled_agent_parse_and_say_what_the_document_says() -> None:
    text = render(_enrolled_document(), NOW)
    families = _parse(text)
    assert _value(families, "sshklm_agent_running") == 1
    info = _samples(families, "sshklm_agent_info")[0]
    assert info.labels == {"version": "0.1.0", "mode": "enrolled", "host_id": "hst_abc"} and info.value == 1
    assert _value(families, "sshklm_agent_keys", kind="authorized_key", effective="true") == 3
    assert _value(families, "sshklm_agent_keys", kind="authorized_key", effective="false") == 1
    assert _value(families, "sshklm_agent_risk_factor_keys", factor="policy:type_not_allowed") == 2
    assert _value(families, "sshklm_agent_risk_factor_keys", factor="root_key") == 0
    assert _value(families, "sshklm_agent_revocation_list_state", state="missing") == 1
    assert _value(families, "sshklm_agent_revocation_list_state", state="ok") == 0
    assert _value(families, "sshklm_agent_outbox_events") == 42
    oldest = datetime(2026, 12, 4, 12, 1, 2, tzinfo=UTC).timestamp()
    assert _value(families, "sshklm_agent_outbox_oldest_event_timestamp_seconds") == oldest
    assert _value(families, "sshklm_agent_outbox_oldest_event_age_seconds") == NOW.timestamp() - oldest
    assert _value(families, "sshklm_agent_outbox_dropped_events_total", type="key_used") == 3
    assert _value(families, "sshklm_agent_watched_files", method="polled") == 2
    # Counters: by class and outcome (a status the contract does not name is counted by its class).
    assert _value(families, "sshklm_agent_requests_total", **{"class": "read", "status": "200"}) == 2
    assert _value(families, "sshklm_agent_requests_total", **{"class": "read", "status": "2xx"}) == 1
    assert _value(families, "sshklm_agent_requests_total", **{"class": "write", "status": "connect"}) == 1
    assert _value(families, "sshklm_agent_instructions_total", result="applied") == 1
    assert _value(families, "sshklm_agent_instructions_total", result="expired") == 0
    assert families["sshklm_agent_requests"].type == "counter"
    # The server conversation.
    inventory_at = datetime(2026, 12, 4, 11, 0, 1, tzinfo=UTC).timestamp()
    assert _value(families, "sshklm_agent_last_delivery_timestamp_seconds", kind="inventory") == inventory_at
    assert _value(families, "sshklm_agent_failing_calls", kind="events") == 30
    assert _value(families, "sshklm_agent_failing_calls", kind="inventory") == 0
    error = _samples(families, "sshklm_agent_last_error_info")[0]
    assert error.labels == {"kind": "events", "code": "TRANSPORT_ERROR", "http_status": ""}
    assert _value(families, "sshklm_agent_long_polling") == 1
    assert _samples(families, "sshklm_agent_auth_info")[0].labels == {"state": "token_valid"}


def test_the_format_is_kept_to_the_letter() -> None:
    """What the parser forgives, checked here: HELP and TYPE once before each family's samples,
    names in the agent's namespace with their unit, counters ending in _total, one series per
    label set, a final newline."""
    text = render(_enrolled_document(), NOW)
    assert text.endswith("\n") and "\n\n" not in text
    seen_families: list[str] = []
    series: set[str] = set()
    current = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            current = line.split()[2]
            assert current not in seen_families
            seen_families.append(current)
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert name == current and kind in ("gauge", "counter")
            assert name.endswith("_total") == (kind == "counter"), name
            continue
        name = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0)  # type: ignore[union-attr]
        assert name == current, f"{line!r} outside its family"
        key = line.rsplit(" ", 1)[0]
        assert key not in series, f"duplicate series {key}"
        series.add(key)
    for name in seen_families:
        assert name.startswith("sshklm_agent_")
        assert re.search(r"_(total|seconds|events|keys|calls|files|problems|info|failures|state)$", name) or (
            name in ("sshklm_agent_running", "sshklm_agent_long_polling")
        ), f"{name}: say its unit"


def test_every_metric_is_documented_and_every_documented_metric_exists() -> None:
    documented = set(re.findall(r"^\| (?:gauge|counter) \| `(sshklm_agent_[a-z_]+)`", DOCS.read_text(), re.M))
    standalone = status_document(
        running=False,
        pid=1,
        now=NOW,
        started_at=NOW,
        last_scan_at=None,
        inventory=None,
        outbox=0,
        watch={},
        last_error=None,
        next_jobs={},
        link=None,
    )
    rendered = set()
    for doc in (_enrolled_document(), standalone):
        for family in text_string_to_metric_families(render(doc, NOW)):
            rendered.add(family.name + ("_total" if family.type == "counter" else ""))
    assert rendered - documented == set(), "undocumented"
    assert documented - rendered == set(), "documented but never rendered"


@pytest.mark.parametrize(
    "code",
    [
        'FAKE"} 1\nsshklm_agent_running 0\n# ',  # a server trying to add a series of its own
        "back\\slash",
        "lone \ud800 surrogate",
        "x" * 1000,
        "",
    ],
)
def test_a_hostile_label_value_stays_inside_its_quotes(code: str) -> None:
    doc = _enrolled_document()
    doc["reporting"] = {**doc["reporting"], "last_error": {"kind": "events", "at": None, "code": code}}
    families = _parse(render(doc, NOW))
    error = _samples(families, "sshklm_agent_last_error_info")
    assert len(error) == 1
    expected = code[:128].encode("utf-8", "replace").decode("utf-8")
    assert error[0].labels["code"] == expected
    assert [s.value for s in _samples(families, "sshklm_agent_running")] == [1]


def test_nothing_known_yet_is_still_valid() -> None:
    families = _parse(render({"running": False, "mode": None, "note": "no state"}, NOW))
    assert _value(families, "sshklm_agent_running") == 0
    assert "sshklm_agent_keys" not in families and "sshklm_agent_requests" not in families


def test_a_malformed_document_renders_what_it_can() -> None:
    doc = _enrolled_document()
    doc.update(
        updated_at="not a time",
        key_counts={"authorized_key": "many", "host_key": {"effective": True, "ineffective": 2}},
        counters={"requests": ["read"], "instruction_results": {"applied": "1"}},
        reporting={"deliveries": {"events": {"at": 5}}, "failing": None, "last_error": "oops"},
    )
    families = _parse(render(doc, NOW))
    assert "sshklm_agent_status_updated_timestamp_seconds" not in families
    assert [s.labels for s in _samples(families, "sshklm_agent_keys")] == [
        {"kind": "host_key", "effective": "false"}
    ]
    assert "sshklm_agent_requests" not in families and "sshklm_agent_last_error_info" not in families


# -- the counters -------------------------------------------------------------------------


def test_attempt_outcomes_are_a_bounded_set() -> None:
    assert attempt_outcome(Attempt(200)) == "200"
    assert attempt_outcome(Attempt(503)) == "503"
    assert attempt_outcome(Attempt(599)) == "5xx"
    assert attempt_outcome(Attempt(999)) == "9xx"
    assert attempt_outcome(Attempt(1234)) == "other"
    assert attempt_outcome(Attempt(None, "timeout")) == "timeout"
    outcomes = {attempt_outcome(Attempt(s)) for s in range(0, 2000)}
    assert len(outcomes) <= 40


def _event(event_type: str, **detail: object) -> Event:
    return Event("e1", 0, NOW, event_type, "alice", None, None, None, dict(detail))  # type: ignore[arg-type]


def test_instruction_results_come_from_their_events_and_a_grant_expiry_is_none() -> None:
    assert instruction_result(_event("instruction_applied", jti="j", kind="rotation")) == "applied"
    assert instruction_result(_event("instruction_failed", jti="j", status="rejected")) == "rejected"
    assert instruction_result(_event("instruction_failed", jti="j", status="expired")) == "expired"
    assert instruction_result(_event("instruction_applied", action="ephemeral_expiry")) is None
    assert instruction_result(_event("instruction_failed", action="ephemeral_expiry", code="X")) is None
    assert instruction_result(_event("key_added")) is None


def test_counters_are_restored_and_what_is_malformed_is_dropped() -> None:
    first = Counters()
    first.attempt("read", Attempt(200))
    first.attempt("scan", Attempt(429))
    first.instruction("applied")
    again = Counters()
    again.restore(first.snapshot())
    again.attempt("read", Attempt(200))
    snapshot = again.snapshot()
    assert snapshot["requests"] == {"read": {"200": 2}, "scan": {"429": 1}}
    assert snapshot["instruction_results"]["applied"] == 1
    broken = Counters()
    broken.restore(
        {
            "requests": {"read": {"200": -1, "503": "x", "404": 2}, "bogus": {"200": 5}, "write": []},
            "instruction_results": {"applied": True, "failed": 3},
        }
    )
    assert broken.snapshot()["requests"] == {"read": {"404": 2}}
    assert broken.snapshot()["instruction_results"] == {
        "applied": 0,
        "failed": 3,
        "rejected": 0,
        "expired": 0,
    }
    for junk in (None, [], "x", {"requests": None}):
        Counters().restore(junk)
