"""Contract §6.1 end to end: the server link's instruction channel against the reference control plane
over real HTTP on loopback (a waiting request answered when an instruction is issued, a restart, a
proxy's idle cut, 429 and 5xx, an older server, token expiry during a wait). Instructions are answered
by a stand-in handler: applying them is the applier's business (tests/integration/test_daemon*)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest

from agent.control.enroll import enroll_host
from agent.daemon.server_link import ServerLink
from tests.controlplane import ControlPlane, RequestRecord
from tests.fakeroot import FakeRoot
from tests.integration.daemon_support import Agent, enroll, wait_for, write_config
from tests.unit.test_server_link import FACTS, FakeDaemon, _config, _prepared

pytestmark = pytest.mark.slow


def _jti(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


class Handled:
    """A stand-in instruction handler: every instruction is 'applied'; remembers what it saw."""

    def __init__(self) -> None:
        self.jtis: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, token: str) -> tuple[str | None, dict[str, object]]:
        jti = _jti(token)
        with self.lock:
            self.jtis.append(jti)
        return jti, {
            "status": "applied",
            "at": "2026-01-01T00:00:00Z",
            "error": None,
            "fingerprints_after": [],
        }


@contextlib.contextmanager
def running_link(
    cp: ControlPlane, tmp_path: Path, schedule: str
) -> Iterator[tuple[ServerLink, str, Handled]]:
    """An enrolled link whose instruction channel runs (its duties do not: no scheduler here)."""
    state = tmp_path / "state"
    host_id = enroll_host(cp.url, cp.bootstrap_token, str(state), FACTS).host_id
    config = _config(state, cp.url, "[schedule]\nstartup_splay_s = 0\njitter = 0.0\n" + schedule)
    fr = FakeRoot(tmp_path / "root")
    link, _ = _prepared(config, FakeDaemon(inventory=None), fr)
    handled = Handled()
    link.handle_instructions_with(handled)
    link.jobs(config.schedule, datetime.now(UTC))
    link.start()
    try:
        yield link, host_id, handled
    finally:
        link.stop()
        link.close()


def instruction_requests(cp: ControlPlane, host_id: str) -> list[RequestRecord]:
    return [r for r in list(cp.requests) if r.path.startswith(f"/v1/hosts/{host_id}/instructions")]


def result_posted(cp: ControlPlane, jti: str) -> bool:
    return any(r["jti"] == jti for r in cp.instruction_results())


def issue(cp: ControlPlane, host_id: str, n: int = 1) -> str:
    return _jti(cp.issue_instruction(host_id, "scan", {"scan_id": f"scn_{n}"}))


def waiting(cp: ControlPlane) -> bool:
    return cp._app.waiters.held > 0


def reporting(link: ServerLink) -> dict[str, Any]:
    """What the link recorded in its Core's LinkHealth (status's `reporting`)."""
    return link._view().health.snapshot()


@pytest.fixture
def cp() -> Iterator[ControlPlane]:
    with ControlPlane.start() as plane:
        yield plane


def test_an_instruction_issued_while_a_request_waits_is_answered_by_that_request(
    cp: ControlPlane, tmp_path: Path
) -> None:
    with running_link(cp, tmp_path, "long_poll_s = 30\n") as (link, host_id, handled):
        for n in range(3):
            wait_for(lambda: waiting(cp), what="a request waiting at the server")
            before = instruction_requests(cp, host_id)
            issued_at = time.monotonic()
            jti = issue(cp, host_id, n)
            wait_for(lambda: result_posted(cp, jti), what="the result")  # noqa: B023
            answered = [r for r in instruction_requests(cp, host_id) if r not in before]
            # The request that brought it was already waiting when it was issued (no new poll was
            # needed), and it asked the server to wait.
            assert answered and answered[0].at < issued_at and "wait=" in answered[0].path
            assert handled.jtis[-1] == jti
        status = link.status()["instructions"]
        assert status["mode"] == "long_poll" and status["long_polling"] is True and status["failures"] == 0
        # Against 30 s waits, three instructions cost about four requests, not a poll per second.
        assert len(instruction_requests(cp, host_id)) <= 6


def test_a_server_restart_while_a_request_waits(tmp_path: Path) -> None:
    db = tmp_path / "cp.db"
    cp = ControlPlane.start(db=str(db))
    port = int(cp.url.rsplit(":", 1)[1])
    try:
        with running_link(cp, tmp_path, "long_poll_s = 30\n") as (link, host_id, _):
            wait_for(lambda: waiting(cp), what="a request waiting")
            cp.stop()  # the waiting request is dropped, then every connection is refused
            time.sleep(3.0)
            cp = ControlPlane.start(port=port, db=str(db))
            jti = issue(cp, host_id)
            wait_for(lambda: result_posted(cp, jti), timeout=30, what="the result after the restart")
            assert link.status()["instructions"]["mode"] == "long_poll"
    finally:
        cp.stop()


def test_a_restart_costs_a_bounded_number_of_attempts(cp: ControlPlane, tmp_path: Path) -> None:
    # While the server refuses connections the channel backs off (the one backoff): count them.
    db_state = tmp_path
    with running_link(cp, db_state, "long_poll_s = 30\n") as (link, host_id, _):
        wait_for(lambda: waiting(cp), what="a request waiting")
        cp.faults.fail_next(10_000, status=503, path_prefix=f"/v1/hosts/{host_id}/instructions")
        issue(cp, host_id)  # answers the waiting request at once; the next ones meet the 503s
        time.sleep(6.0)
        failed = [r for r in instruction_requests(cp, host_id) if r.status == 503]
        # Full jitter from 1 s doubling: ~6 attempts in 6 s at most, never a tight loop.
        assert 1 <= len(failed) <= 8
        assert link.status()["instructions"]["failures"] == len(failed)
        cp.faults.clear()


def test_a_proxy_cutting_idle_requests_costs_one_quick_retry_then_a_shorter_wait(
    cp: ControlPlane, tmp_path: Path
) -> None:
    # Scaled down: waits of 4 s, a proxy that cuts requests idle for 2 s.
    cp.faults.cut_idle(2.0)
    with running_link(cp, tmp_path, "long_poll_s = 4\n") as (link, host_id, handled):
        wait_for(
            lambda: sum(1 for r in instruction_requests(cp, host_id) if r.status == 200) >= 2,
            timeout=20,
            what="answered long-polls under the shorter wait",
        )
        status = link.status()["instructions"]
        assert status["wait_s"] == 1 and status["failures"] == 0  # lowered below the cut, no backoff
        requests = instruction_requests(cp, host_id)
        cut = [r for r in requests if r.status == 0]
        # The random first wait may or may not be cut; after that: a cut, one quick retry cut again,
        # then waits below the cut that are answered.
        assert 1 <= len(cut) <= 3
        jti = issue(cp, host_id)
        wait_for(lambda: result_posted(cp, jti), what="an instruction after the cuts")
        assert jti in handled.jtis
        # A planned cut is the path's habit, not a failed call: LinkHealth never saw one.
        health = reporting(link)
        assert "instructions" not in health["failing"] and health["last_error"] is None
        assert link.status()["instructions"]["last_error"] is None
        assert "instructions" in health["deliveries"]


@pytest.mark.parametrize(("status", "retry_after"), [(429, 2), (503, None)])
def test_429_and_5xx_on_the_long_poll_back_off(
    cp: ControlPlane, tmp_path: Path, status: int, retry_after: int | None
) -> None:
    with running_link(cp, tmp_path, "long_poll_s = 30\n") as (link, host_id, _):
        wait_for(lambda: waiting(cp), what="a request waiting")
        cp.faults.fail_next(
            10_000, status=status, path_prefix=f"/v1/hosts/{host_id}/instructions", retry_after=retry_after
        )
        issue(cp, host_id)
        started = time.monotonic()
        time.sleep(5.0)
        window = time.monotonic() - started
        refused = [r for r in instruction_requests(cp, host_id) if r.status == status]
        assert refused, "the fault was never met"
        if retry_after is not None:
            # Never before Retry-After: at most one request per 2 s.
            gaps = [b.at - a.at for a, b in zip(refused, refused[1:], strict=False)]
            assert all(gap >= retry_after for gap in gaps), gaps
            assert len(refused) <= window / retry_after + 1
        else:
            assert len(refused) <= 8  # full jitter 1, 2, 4 s: a handful, never a loop
        # The failing channel is in status: LinkHealth's record and when it tries next.
        failing = reporting(link)["failing"]["instructions"]
        assert failing["http_status"] == status and failing["calls"] >= 1
        assert link.status()["instructions"]["next_retry_at"] is not None
        cp.faults.clear()
        jti = issue(cp, host_id, 2)
        wait_for(lambda: result_posted(cp, jti), timeout=40, what="the result once the faults end")
        wait_for(lambda: "instructions" not in reporting(link)["failing"], what="the channel recovered")
        # The channel clears its next try when it has taken the answer (just after LinkHealth).
        wait_for(lambda: link.status()["instructions"]["next_retry_at"] is None, what="no next try")


def test_a_redirected_long_poll_is_a_transient_failure_never_an_answer(
    cp: ControlPlane, tmp_path: Path
) -> None:
    """A 3xx to the long-poll is never followed and never an (empty) answer: the channel backs off
    as after a 5xx, LinkHealth records HTTP_REDIRECT, and the instruction arrives once the server
    answers properly."""
    with running_link(cp, tmp_path, "long_poll_s = 30\n") as (link, host_id, handled):
        wait_for(lambda: waiting(cp), what="a request waiting")
        cp.faults.redirect_next(3, path_prefix=f"/v1/hosts/{host_id}/instructions")
        jti = issue(cp, host_id)  # answers the waiting request; the next ones are redirected
        wait_for(lambda: result_posted(cp, jti), what="the first instruction")
        wait_for(
            lambda: len([r for r in instruction_requests(cp, host_id) if r.status == 302]) == 3,
            timeout=20,
            what="the redirects met",
        )
        jti = issue(cp, host_id, 2)
        wait_for(lambda: result_posted(cp, jti), timeout=40, what="the instruction after the redirects")
        assert handled.jtis.count(jti) == 1
        # Recorded as failed calls (the last error outlives the recovery), naming no path or query.
        last = reporting(link)["last_error"]
        assert last["kind"] == "instructions" and last["code"] == "HTTP_REDIRECT"
        assert last["http_status"] == 302
        assert "not-for-logs" not in str(reporting(link)) and "not-for-logs" not in str(link.status())
        assert "instructions" not in reporting(link)["failing"]


def test_an_older_server_that_ignores_wait_is_polled(cp: ControlPlane, tmp_path: Path) -> None:
    cp.long_poll = False
    with running_link(cp, tmp_path, "long_poll_s = 30\nheartbeat_s = 1\n") as (link, host_id, _):
        cp.poll_interval = 1
        wait_for(lambda: len(instruction_requests(cp, host_id)) >= 4, what="polls")
        requests = instruction_requests(cp, host_id)
        assert "wait=" in requests[0].path  # asked once...
        assert all("wait=" not in r.path for r in requests[1:])  # ...then polled (wait again in an hour)
        gaps = [b.at - a.at for a, b in zip(requests[1:], requests[2:], strict=False)]
        assert all(gap >= 0.9 for gap in gaps), gaps  # every poll_interval, not back to back
        assert link.status()["instructions"]["mode"] == "polling"
        jti = issue(cp, host_id)
        wait_for(lambda: result_posted(cp, jti), what="a result while polling")


def test_an_access_token_that_expires_during_a_wait(tmp_path: Path) -> None:
    # Access tokens live 4 s; waits are 3 s: tokens go stale between and during waits, and the
    # server revokes them outright too. Every request still goes out with a valid token.
    with (
        ControlPlane.start(access_ttl=4) as cp,
        running_link(cp, tmp_path, "long_poll_s = 3\n") as (
            link,
            host_id,
            _,
        ),
    ):
        wait_for(lambda: waiting(cp), what="a request waiting")
        cp.expire_access_tokens()  # the waiting request's token is dead now
        wait_for(lambda: len(instruction_requests(cp, host_id)) >= 5, timeout=30, what="several waits")
        jti = issue(cp, host_id)
        wait_for(lambda: result_posted(cp, jti), what="the result")
        assert link.status()["auth_state"] == "ok"
        refreshes = [r for r in cp.requests if r.path in ("/v1/auth/refresh", "/v1/auth/token")]
        assert len(refreshes) >= 2
        # A 401 is renewed once and retried at once, never a loop of refusals.
        refused = [r for r in instruction_requests(cp, host_id) if r.status == 401]
        assert len(refused) <= 1


def test_the_daemon_long_polls_with_heartbeats_every_five_minutes_within_its_thread_budget(
    tmp_path: Path, agents: list[Agent]
) -> None:
    # A real agent (heartbeat_s = 1): once its request waits at the server, it stops heartbeating
    # every second (§6.1: every 5 minutes), and the channel's thread keeps it within 10 threads.
    fr = FakeRoot(tmp_path / "root")
    fr.add_user("alice", 1000)
    with ControlPlane.start() as cp:
        state = tmp_path / "state"
        host_id = enroll(cp, state)
        agent = Agent(write_config(tmp_path / "agent.toml", state, cp.url), fr.root).start()
        agents.append(agent)
        wait_for(lambda: waiting(cp), what="a request waiting at the server")
        assert agent.proc is not None
        threads = len(os.listdir(f"/proc/{agent.proc.pid}/task"))
        assert threads <= 10
        wait_for(lambda: cp.inventory(host_id) is not None, what="first inventory")
        time.sleep(4.0)
        heartbeats = [r for r in cp.requests if r.path.endswith("/heartbeat")]
        assert 1 <= len(heartbeats) <= 2  # the first, perhaps one before the wait was confirmed
        assert agent.stop() == 0
