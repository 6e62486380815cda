"""The real daemon (`sshklm-agent run --root`) against a reference control plane that misbehaves
(issue 11, "a hostile or broken server", "redirects are not delivery", "signed-token edge cases"):
each problem shown where it showed, over real HTTP on loopback."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from agent.store.db import open_database
from agent.store.state import StateStore
from tests.controlplane import ControlPlane
from tests.fakeroot import FakeRoot, ed25519_line, writable_root
from tests.integration.daemon_support import (
    Agent,
    append_key,
    enroll,
    key_added_arrived,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.slow


def _jti(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


def _result(cp: ControlPlane, jti: str) -> dict[str, Any] | None:
    found = [r for r in cp.instruction_results() if r["jti"] == jti]
    return found[0]["result"] if found else None


def test_time_claims_nbf_and_absurd_numbers(tmp_path: Path, agents: list[Agent]) -> None:
    """An instruction not valid yet (`nbf`) is rejected NOT_YET_VALID, not applied at once; absurd
    numbers (exp=10**400, a negative iat, a boolean nbf) are rejected before anything is written:
    no file changes, no journal entry is left, and nothing stays pending to be polled in a loop."""
    fr = writable_root(tmp_path / "root")
    ak = fr.path("/home/alice/.ssh/authorized_keys")
    before = ak.read_bytes()
    with ControlPlane.start() as cp:
        cp.poll_interval = 1
        state = tmp_path / "state"
        host_id = enroll(cp, state)
        extra = f'[instructions]\npublic_keys = ["{cp.signing_public_key_openssh}"]\n'
        agent = Agent(write_config(tmp_path / "agent.toml", state, cp.url, extra), fr.root).start()
        agents.append(agent)
        wait_for(lambda: cp.inventory(host_id) is not None, what="first inventory")

        def add(rotation_id: str, claims: dict[str, Any]) -> str:
            body = {"rotation_id": rotation_id, "user": "alice", "action": "add", "new_key": ed25519_line()}
            return _jti(cp.issue_instruction(host_id, "rotation", body, claims=claims))

        expected = {
            add("rot_nbf", {"nbf": int(time.time()) + 3600}): "NOT_YET_VALID",
            add("rot_exp", {"exp": 10**400}): "VALIDATION_ERROR",
            add("rot_iat", {"iat": -1}): "VALIDATION_ERROR",
            add("rot_bool", {"nbf": True}): "VALIDATION_ERROR",
        }
        wait_for(lambda: all(_result(cp, j) for j in expected), timeout=30, what="the four results")
        for jti, code in expected.items():
            result = _result(cp, jti)
            assert result is not None and result["status"] == "rejected", (jti, result)
            assert result["error"]["code"] == code, (jti, result)
        assert ak.read_bytes() == before
        # Nothing stays pending: the polls go on at the server's pace, not in a loop.
        start = time.monotonic()
        first = sum(1 for r in cp.requests if "/instructions" in r.path and r.method == "GET")
        time.sleep(3)
        polls = sum(1 for r in cp.requests if "/instructions" in r.path and r.method == "GET") - first
        assert polls <= 3 * (time.monotonic() - start) + 2, polls
        assert agent.stop() == 0
    with open_database(state) as db:
        assert StateStore(db).unfinished_applies() == []


def _vm_hwm_kib(pid: int) -> int:
    """The process's peak resident set size (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _start(
    tmp_path: Path, agents: list[Agent], cp: ControlPlane, fr: FakeRoot, server_extra: str, before: Any = None
) -> tuple[Agent, str]:
    """An enrolled agent (full report every 2 s when something is unreported); `before(host_id)`
    runs before it starts (faults for its first calls)."""
    state = tmp_path / "state"
    host_id = enroll(cp, state)
    if before is not None:
        before(host_id)
    config = write_config(tmp_path / "agent.toml", state, cp.url)
    text = config.read_text().replace("[server]\n", "[server]\n" + server_extra)
    config.write_text(text.replace("[schedule]\n", "[schedule]\nfull_report_s = 2.0\n"))
    agent = Agent(config, fr.root).start()
    agents.append(agent)
    return agent, host_id


def test_redirected_events_and_inventory_stay_queued_and_arrive_later(
    tmp_path: Path, agents: list[Agent]
) -> None:
    """A 302/307 on PUT inventory or POST events used to count as delivered: the inventory was
    taken as accepted, the events left the outbox and were lost. Now they wait and arrive once
    the server answers properly; the log names the status and the redirect's host, never its
    query."""
    fr = writable_root(tmp_path / "root")
    with ControlPlane.start() as cp:
        cp.poll_interval = 1

        def redirect_first_inventory(host_id: str) -> None:
            cp.faults.redirect_next(1, status=307, path_prefix=f"/v1/hosts/{host_id}/inventory")

        agent, host_id = _start(tmp_path, agents, cp, fr, "max_attempts = 1\n", redirect_first_inventory)
        inventory = f"/v1/hosts/{host_id}/inventory"
        wait_for(
            lambda: cp.inventory(host_id) is not None, timeout=60, what="the inventory, after the redirect"
        )
        assert [r.status for r in cp.requests if r.path == inventory][0] == 307

        events = f"/v1/hosts/{host_id}/events"
        cp.faults.redirect_next(3, status=302, path_prefix=events)
        fp = append_key(fr, "redirected")
        wait_for(
            lambda: sum(1 for r in cp.requests if r.path == events and r.status == 302) == 3,
            timeout=30,
            what="three redirected event posts",
        )
        wait_for(
            lambda: key_added_arrived(cp, host_id, fp),
            timeout=60,
            what="the event, delivered after the redirects",
        )
        log = agent.text()
        assert "302" in log and "307" in log and "elsewhere.example" in log
        assert "not-for-logs" not in log and "/v1/moved" not in log
        assert agent.stop() == 0


def test_a_huge_or_dribbling_answer_does_not_hold_or_bloat_the_daemon(
    tmp_path: Path, agents: list[Agent]
) -> None:
    """A 200 MiB instructions answer used to be read whole (RSS up by as much, for good) and a
    server dribbling a byte at a time held the sender for ever. Now the answer is refused at its
    cap and the dribble at the call's deadline; the daemon's peak RSS does not grow with the size
    of the refused answer, and events still arrive."""
    fr = writable_root(tmp_path / "root")
    with ControlPlane.start() as cp:
        cp.poll_interval = 1
        agent, host_id = _start(tmp_path, agents, cp, fr, "max_attempts = 1\ndeadline_s = 2.0\n")
        assert agent.proc is not None
        wait_for(lambda: cp.inventory(host_id) is not None, what="first inventory")
        time.sleep(1)
        peak_before = _vm_hwm_kib(agent.proc.pid)
        instructions = f"/v1/hosts/{host_id}/instructions"
        since = len(cp.requests)
        cp.faults.huge_answer_next(2, 200 << 20, path_prefix=instructions, declare=False)
        wait_for(
            lambda: sum(1 for r in cp.requests[since:] if r.path.startswith(instructions)) >= 3,
            timeout=60,
            what="two huge answers refused, then a normal poll",
        )
        peak_after = _vm_hwm_kib(agent.proc.pid)
        before_mib, after_mib = peak_before / 1024, peak_after / 1024
        print(
            f"\ndaemon peak RSS: {before_mib:.1f} MiB before, {after_mib:.1f} MiB after two 200 MiB answers"
        )
        assert peak_after - peak_before < 64 * 1024, (peak_before, peak_after)  # the cap is 16 MiB
        assert "ANSWER_TOO_LARGE" in agent.text()

        events = f"/v1/hosts/{host_id}/events"
        cp.faults.dribble_next(1, interval=0.1, path_prefix=events)
        fp = append_key(fr, "after-dribble")
        wait_for(
            lambda: key_added_arrived(cp, host_id, fp),
            timeout=60,
            what="the event, delivered after the dribbling answer was given up",
        )
        assert "deadline passed" in agent.text()
        assert agent.stop() == 0
