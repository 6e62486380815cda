"""The real daemon (`sshklm-agent run --root`) against a reference control plane that misbehaves
(issue 11, "a hostile or broken server", "redirects are not delivery", "signed-token edge cases"):
each problem shown where it showed, over real HTTP on loopback."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from agent.store.db import open_database
from agent.store.state import StateStore
from tests.controlplane import ControlPlane
from tests.fakeroot import FakeRoot, ed25519_line
from tests.integration.daemon_support import Agent, enroll, wait_for, write_config

pytestmark = pytest.mark.slow


def _jti(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


def _result(cp: ControlPlane, jti: str) -> dict[str, Any] | None:
    found = [r for r in cp.instruction_results() if r["jti"] == jti]
    return found[0]["result"] if found else None


def _owned_root(tmp_path: Path) -> FakeRoot:
    uid = os.geteuid() or 1000
    fr = FakeRoot(tmp_path / "root")
    home = fr.add_user("alice", uid)
    fr.authorized_keys("alice", [ed25519_line("initial")])
    if os.geteuid() == 0:
        for p in (home, home / ".ssh", home / ".ssh/authorized_keys"):
            os.chown(p, uid, uid)
    return fr


def test_time_claims_nbf_and_absurd_numbers(tmp_path: Path, agents: list[Agent]) -> None:
    """An instruction not valid yet (`nbf`) is rejected NOT_YET_VALID, not applied at once; absurd
    numbers (exp=10**400, a negative iat, a boolean nbf) are rejected before anything is written:
    no file changes, no journal entry is left, and nothing stays pending to be polled in a loop."""
    fr = _owned_root(tmp_path)
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
