"""The daemon applies what the control plane issues: poll -> verify -> apply -> result + attributed events."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.controlplane import ControlPlane
from tests.fakeroot import ed25519_line, writable_root
from tests.integration.daemon_support import Agent, enroll, fingerprint_of, wait_for, write_config

pytestmark = pytest.mark.slow


def results(cp: ControlPlane, jti: str) -> list[dict]:  # type: ignore[type-arg]
    return [r for r in cp.instruction_results() if r["jti"] == jti]


def test_rotation_add_and_forged_instruction(tmp_path: Path, agents: list[Agent]) -> None:
    # The fake user owns its files as whoever runs the test (root in CI), so writes pass the owner checks.
    fr = writable_root(tmp_path / "root")
    with ControlPlane.start() as cp:
        cp.poll_interval = 1  # the server's poll_interval wins over the agent's when larger
        state = tmp_path / "state"
        host_id = enroll(cp, state)
        extra = f'[instructions]\npublic_keys = ["{cp.signing_public_key_openssh}"]\n'
        agent = Agent(write_config(tmp_path / "agent.toml", state, cp.url, extra), fr.root).start()
        agents.append(agent)
        wait_for(lambda: cp.inventory(host_id) is not None, what="first inventory")

        new = ed25519_line("rotated-in")
        body = {"rotation_id": "rot_test1", "user": "alice", "action": "add", "new_key": new}
        good = cp.issue_instruction(host_id, "rotation", body)
        forged = cp.issue_instruction(host_id, "rotation", {**body, "rotation_id": "rot_forged"}, sign=False)
        good_jti = _jti(good)
        forged_jti = _jti(forged)
        wait_for(lambda: results(cp, good_jti) and results(cp, forged_jti), timeout=30, what="both results")
        assert results(cp, good_jti)[0]["status"] == "applied"
        assert results(cp, forged_jti)[0]["status"] == "rejected"
        text = fr.path("/home/alice/.ssh/authorized_keys").read_text()
        assert new in text and "initial" in text
        fp = fingerprint_of(new)
        assert fp in results(cp, good_jti)[0]["result"]["fingerprints_after"]

        def attributed() -> bool:
            return any(
                e["type"] == "key_added"
                and e["fingerprint"] == fp
                and e["detail"].get("managed_by") == "rotation:rot_test1"
                for e in cp.events(host_id)
            )

        wait_for(attributed, timeout=20, what="key_added event with managed_by")
        assert agent.stop() == 0


def _jti(token: str) -> str:
    import jwt

    return str(jwt.decode(token, options={"verify_signature": False})["jti"])
