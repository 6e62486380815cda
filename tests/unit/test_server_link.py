"""The server link as a part of the daemon: it sees the daemon only as a `Core`, and what it learns
from the control plane (a policy, a poll interval) flows back through it. Real HTTP on loopback
against the reference control plane; the Core's readings are plain values the test controls."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from agent.commands.scan import run_scan
from agent.config import Config, parse_config_text
from agent.control.client import Enrollment
from agent.control.enroll import enroll_host, save_credentials
from agent.control.errors import ApiError
from agent.daemon.parts import Core, Vitals
from agent.daemon.server_link import ServerLink
from agent.host.safefs import HostFS
from agent.host.setup import policy_from
from agent.host.users import RootUserSource
from agent.inventory.evaluate import Policy
from agent.inventory.model import Event, Inventory
from agent.store.db import open_database
from agent.store.state import StateStore
from tests.controlplane import ControlPlane
from tests.fakeroot import FakeRoot, ed25519_line

FACTS = {
    "machine_id": "m-link",
    "hostname": "link-host",
    "fqdn": "link-host",
    "os": {},
    "kernel": "",
    "agent_version": "0.1.0",
    "sshd_version": None,
    "host_keys": [],
}


@dataclass
class FakeDaemon:
    """The daemon's side of a Core: readings the test sets, sinks the test reads."""

    inventory: Inventory | None
    changes: int = 0
    policy: Policy = field(default_factory=lambda: policy_from(parse_config_text("")))
    adopted: list[Policy] = field(default_factory=list)
    armed: list[tuple[str, datetime]] = field(default_factory=list)
    rescans: int = 0

    def core(self, store: StateStore, fs: HostFS) -> Core:
        def rescan() -> Inventory | None:
            self.rescans += 1
            return self.inventory

        def adopt(policy: Policy) -> None:
            self.adopted.append(policy)
            self.policy = policy

        def emit(_events: object) -> None:
            raise AssertionError("the link emits no events")

        return Core(
            fs=fs,
            users=RootUserSource(fs),
            store=store,
            host_id=lambda: None,
            policy=lambda: self.policy,
            inventory=lambda: self.inventory,
            vitals=lambda: Vitals(healthy=True, uptime_s=5, last_scan_at=None, keys=1, outbox=0),
            changes=lambda: self.changes,
            rescan=rescan,
            emit=emit,
            adopt_policy=adopt,
            note_used=lambda *_a: None,
            note_managed=lambda *_a: None,
            schedule_once=lambda job_id, _fn, when: self.armed.append((job_id, when)),
        )


@pytest.fixture
def fr(tmp_path: Path) -> FakeRoot:
    root = FakeRoot(tmp_path / "root")
    root.add_user("alice", 1000)
    root.authorized_keys("alice", [ed25519_line("initial")])
    return root


def _config(state: Path, url: str, extra: str = "") -> Config:
    return parse_config_text(
        f'[server]\nurl = "{url}"\nallow_plain_http_loopback = true\nmax_attempts = 1\n'
        f'[state]\ndir = "{state}"\n' + extra
    )


@pytest.fixture
def cp() -> Iterator[ControlPlane]:
    with ControlPlane.start() as plane:
        yield plane


def _prepared(config: Config, daemon: FakeDaemon, fr: FakeRoot) -> tuple[ServerLink, StateStore]:
    store = StateStore(open_database(config.state.dir))
    link = ServerLink(config)
    link.prepare(daemon.core(store, HostFS(str(fr.root))))
    return link, store


def _inventory_puts(cp: ControlPlane) -> int:
    return sum(
        1 for r in cp.requests if r.method == "PUT" and r.path.endswith("/inventory") and r.status == 200
    )


@contextlib.contextmanager
def _enrolled(
    cp: ControlPlane, fr: FakeRoot, tmp_path: Path, *, scanned: bool, extra: str = ""
) -> Iterator[tuple[ServerLink, FakeDaemon]]:
    """A link of a host enrolled with `cp`, prepared with a FakeDaemon (holding fr's inventory when
    `scanned`)."""
    state = tmp_path / "state"
    enroll_host(cp.url, cp.bootstrap_token, str(state), FACTS)
    config = _config(state, cp.url, extra)
    daemon = FakeDaemon(inventory=run_scan(config, str(fr.root)) if scanned else None)
    link, _ = _prepared(config, daemon, fr)
    try:
        yield link, daemon
    finally:
        link.close()


def test_reports_the_inventory_only_when_something_changed_since(
    cp: ControlPlane, fr: FakeRoot, tmp_path: Path
) -> None:
    with _enrolled(cp, fr, tmp_path, scanned=True) as (link, daemon):
        link.report_if_changed()  # the first report always goes
        assert _inventory_puts(cp) == 1
        assert link.status()["last_report_at"] is not None
        link.report_if_changed()
        assert _inventory_puts(cp) == 1  # nothing changed since
        daemon.changes += 1
        cp.faults.fail_next(1, status=409, path_prefix=f"/v1/hosts/{link.host_id}/inventory")
        with pytest.raises(ApiError):
            link.report_if_changed()
        assert _inventory_puts(cp) == 1
        link.report_if_changed()  # the failed report is tried again
        assert _inventory_puts(cp) == 2
        link.report_if_changed()
        assert _inventory_puts(cp) == 2
        stored = cp.inventory(str(link.host_id))
        assert stored is not None and [k["comment"] for k in stored["keys"]] == ["initial"]


def test_a_policy_and_a_poll_interval_from_the_server_flow_back_through_the_core(
    cp: ControlPlane, fr: FakeRoot, tmp_path: Path
) -> None:
    with _enrolled(cp, fr, tmp_path, scanned=False, extra="[schedule]\nheartbeat_s = 30\n") as (link, daemon):
        cp.poll_interval = 120
        link.run_duty("heartbeat")
        # The heartbeat named a policy version: the policy duty is armed for now, as its own job.
        assert "policy" in [job for job, _ in daemon.armed]
        assert daemon.adopted == []
        daemon.armed.clear()
        link.run_duty("policy")
        assert [p.version for p in daemon.adopted] == [1]  # the reference plane's default policy
        assert link.status()["policy_version"] == 1
        assert link.heartbeat_interval() == 120.0  # the server's poll_interval, larger than ours
        link.run_duty("heartbeat")  # same policy version: nothing new flows back
        assert len(daemon.adopted) == 1
        assert [job for job, _ in daemon.armed] == ["heartbeat"]  # each duty re-armed by its own run
        assert link.status()["last_heartbeat_at"] is not None


def test_a_scan_request_is_answered_with_a_fresh_scan(cp: ControlPlane, fr: FakeRoot, tmp_path: Path) -> None:
    with _enrolled(cp, fr, tmp_path, scanned=True) as (link, daemon):
        admin = {"Authorization": f"Bearer {cp.admin_token()}"}
        started = httpx.post(f"{cp.url}/v1/scans", json={"hosts": [link.host_id]}, headers=admin)
        scan_id = started.json()["scans"][0]["scan_id"]
        link.put_scan_result(scan_id)
        assert daemon.rescans == 1
        scan = httpx.get(f"{cp.url}/v1/scans/{scan_id}", headers=admin).json()
        assert (scan["status"], scan["keys"]) == ("completed", 1)


def test_jobs_follow_the_schedule_they_are_given(tmp_path: Path) -> None:
    config = _config(tmp_path / "state", "https://cp.invalid", "[schedule]\nheartbeat_s = 45\n")
    link = ServerLink(config)
    first = datetime(2026, 1, 1, tzinfo=UTC)
    jobs = {job_id: (seconds, at) for job_id, _fn, seconds, at in link.jobs(config.schedule, first)}
    # One-off jobs, each re-armed by the link when it ends (link_schedule decides when).
    assert jobs["heartbeat"] == (None, first)
    assert jobs["full_report"][0] is None and jobs["full_report"][1] > first
    assert set(jobs) == {"heartbeat", "full_report", "token_refresh"}


def test_a_refused_url_is_never_connected_even_when_enrolled(fr: FakeRoot, tmp_path: Path) -> None:
    # Plain http to a remote server: refused at start, and no later call may connect anyway
    # (the API key would cross the network in clear). Regression: `ready` used to connect.
    state = tmp_path / "state"
    save_credentials(str(state), Enrollment("hst_1", "agt_1", "sk_agent_" + "x" * 40), "http://cp.example")
    config = parse_config_text(f'[server]\nurl = "http://cp.example"\n[state]\ndir = "{state}"\n')
    link, _ = _prepared(config, FakeDaemon(inventory=None), fr)
    assert link.problem is not None and "https" in link.problem
    assert not link.ready
    assert link.client is None and link.host_id is None
    with pytest.raises(ApiError, match="https"):
        link.deliver([])


def test_unreadable_credentials_are_a_status_problem_not_a_crash(fr: FakeRoot, tmp_path: Path) -> None:
    # A key file others may read is refused; the agent keeps watching and says why in status.
    # Regression: the refusal escaped the link's constructor and the daemon did not start.
    state = tmp_path / "state"
    save_credentials(str(state), Enrollment("hst_1", "agt_1", "sk_agent_" + "x" * 40), "https://cp.example")
    os.chmod(state / "api_key", 0o644)
    config = parse_config_text(f'[server]\nurl = "https://cp.example"\n[state]\ndir = "{state}"\n')
    link, _ = _prepared(config, FakeDaemon(inventory=None), fr)
    problem = link.status()["link_problem"]
    assert problem is not None and problem.startswith("credentials unreadable") and "mode 644" in problem
    assert "sk_agent_" not in problem
    assert not link.ready


def test_key_used_events_keep_their_wire_shape() -> None:
    # Contract §5.3: the event the usage tracker builds through the model is byte-for-byte the
    # dict it used to build by hand (the outbox stores it without seq).
    from agent.daemon.extensions import key_used_event
    from agent.daemon.usage_parse import UsageHit

    at = datetime(2026, 11, 27, 1, 2, 3, 123456, tzinfo=UTC)
    plain = UsageHit(
        user="alice", fingerprint="SHA256:abc", address="203.0.113.9", port=52144, key_type="ED25519"
    )
    event = key_used_event(plain, at, "id-1")
    assert isinstance(event, Event)
    body = {k: v for k, v in event.to_json().items() if k != "seq"}
    assert list(body.items()) == [
        ("id", "id-1"),
        ("at", "2026-11-27T01:02:03Z"),
        ("type", "key_used"),
        ("user", "alice"),
        ("path", None),
        ("fingerprint", "SHA256:abc"),
        ("key", None),
        ("detail", {"from": "203.0.113.9", "at": "2026-11-27T01:02:03Z", "port": 52144}),
    ]
    cert = UsageHit(
        user="bob",
        fingerprint="SHA256:def",
        address="198.51.100.1",
        port=22,
        key_type="ED25519-CERT",
        cert_id="bob@ca",
        ca_fingerprint="SHA256:ca",
        partial=True,
        cert_serial=42,
    )
    assert key_used_event(cert, at, "id-2").to_json()["detail"] == {
        "from": "198.51.100.1",
        "at": "2026-11-27T01:02:03Z",
        "port": 22,
        "cert_id": "bob@ca",
        "cert_serial": 42,
        "ca_fingerprint": "SHA256:ca",
        "partial": True,
    }
