"""The daemon applies what the control plane issues: poll -> verify -> apply -> result + attributed events."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.controlplane import ControlPlane
from tests.fakeroot import ed25519_line, writable_root
from tests.integration.daemon_support import (
    Agent,
    enroll,
    fingerprint_of,
    jti_of,
    results_for,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.slow


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
        good_jti = jti_of(good)
        forged_jti = jti_of(forged)
        wait_for(
            lambda: results_for(cp, good_jti) and results_for(cp, forged_jti), timeout=30, what="both results"
        )
        assert results_for(cp, good_jti)[0]["status"] == "applied"
        assert results_for(cp, forged_jti)[0]["status"] == "rejected"
        text = fr.path("/home/alice/.ssh/authorized_keys").read_text()
        assert new in text and "initial" in text
        fp = fingerprint_of(new)
        assert fp in results_for(cp, good_jti)[0]["result"]["fingerprints_after"]

        def attributed() -> bool:
            return any(
                e["type"] == "key_added"
                and e["fingerprint"] == fp
                and e["detail"].get("managed_by") == "rotation:rot_test1"
                for e in cp.events(host_id)
            )

        wait_for(attributed, timeout=20, what="key_added event with managed_by")
        assert agent.stop() == 0


def test_ephemeral_sweep_runs_at_the_configured_interval(tmp_path: Path, agents: list[Agent]) -> None:
    """schedule.ephemeral_sweep_s is honoured: a grant whose removal at expiry failed (its ~/.ssh
    was unsafe then) is removed by the next sweep, within seconds with a 1 s sweep (the default
    sweep runs once a minute)."""
    fr = writable_root(tmp_path / "root")
    ssh = fr.path("/home/alice/.ssh")
    with ControlPlane.start() as cp:
        cp.poll_interval = 1
        state = tmp_path / "state"
        host_id = enroll(cp, state)
        extra = f'[instructions]\npublic_keys = ["{cp.signing_public_key_openssh}"]\n'
        config = write_config(tmp_path / "agent.toml", state, cp.url, extra)
        config.write_text(config.read_text().replace("[schedule]\n", "[schedule]\nephemeral_sweep_s = 1.0\n"))
        agent = Agent(config, fr.root).start()
        agents.append(agent)
        wait_for(lambda: cp.inventory(host_id) is not None, what="first inventory")

        expires = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=8)
        body = {
            "grant_id": "eph_sweep1",
            "user": "alice",
            "public_key": ed25519_line("visitor"),
            "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        jti = jti_of(cp.issue_instruction(host_id, "ephemeral", body))
        wait_for(lambda: results_for(cp, jti), timeout=6, what="the grant's result")
        assert results_for(cp, jti)[0]["status"] == "applied"
        ak = ssh / "authorized_keys"
        assert "sshklm-ephemeral:eph_sweep1" in ak.read_text()
        os.chmod(ssh, 0o770)  # group-writable: every write below it is refused

        def expiry_failed() -> bool:
            return any(
                e["type"] == "instruction_failed" and e["detail"].get("grant_id") == "eph_sweep1"
                for e in cp.events(host_id)
            )

        wait_for(expiry_failed, timeout=30, what="the failed removal at expiry")
        assert "sshklm-ephemeral:eph_sweep1" in ak.read_text()
        os.chmod(ssh, 0o700)
        # Generous for a 1 s sweep; the default (60 s) sweep would not come for another ~40 s.
        wait_for(lambda: "sshklm-ephemeral:eph_sweep1" not in ak.read_text(), timeout=20, what="the sweep")
        assert "initial" in ak.read_text()
        assert agent.stop() == 0
