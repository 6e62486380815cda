"""Each server call the daemon makes on its schedule stands alone (issue 11) and a failed full
report is retried with the back-off, not an hour later (issue 15). A real agent process against
the reference control plane with a fault on one call."""

from __future__ import annotations

from pathlib import Path

import jwt
import pytest

from tests.controlplane import ControlPlane
from tests.fakeroot import FakeRoot, ed25519_line, writable_root
from tests.integration.daemon_support import Agent, enroll, wait_for, write_config

pytestmark = pytest.mark.slow


def _owned_root(tmp_path: Path) -> FakeRoot:
    return writable_root(tmp_path / "root")


def _start(cp: ControlPlane, tmp_path: Path, fr: FakeRoot, agents: list[Agent], host_id: str) -> None:
    keys = f'[instructions]\npublic_keys = ["{cp.signing_public_key_openssh}"]\n'
    config = write_config(tmp_path / "agent.toml", tmp_path / "state", cp.url, keys)
    agents.append(Agent(config, fr.root).start())


def _rotation_applied(cp: ControlPlane, host_id: str, label: str) -> str:
    body = {"rotation_id": f"rot_{label}", "user": "alice", "action": "add", "new_key": ed25519_line(label)}
    jti = str(
        jwt.decode(cp.issue_instruction(host_id, "rotation", body), options={"verify_signature": False})[
            "jti"
        ]
    )

    def posted() -> bool:
        return any(r["jti"] == jti for r in cp.instruction_results())

    wait_for(posted, timeout=30, what=f"the result of {label}")
    return next(r["status"] for r in cp.instruction_results() if r["jti"] == jti)


@pytest.mark.parametrize(
    ("failing", "status", "code"),
    [("policy", 404, "NOT_FOUND"), ("heartbeat", 503, None), ("policy", 403, "AUTH_FORBIDDEN")],
)
def test_one_failing_call_never_keeps_instructions_from_arriving(
    tmp_path: Path, agents: list[Agent], failing: str, status: int, code: str | None
) -> None:
    fr = _owned_root(tmp_path)
    with ControlPlane.start() as cp:
        cp.poll_interval = 1
        agent_host = enroll(cp, tmp_path / "state")
        cp.faults.fail_next(10_000, status=status, code=code, path_prefix=f"/v1/hosts/{agent_host}/{failing}")
        _start(cp, tmp_path, fr, agents, agent_host)
        wait_for(lambda: cp.inventory(agent_host) is not None, what="first inventory")
        assert _rotation_applied(cp, agent_host, "isolated") == "applied"
        failed = [r for r in cp.requests if r.path.startswith(f"/v1/hosts/{agent_host}/{failing}")]
        assert failed and all(r.status == status for r in failed)


def test_a_policy_the_server_does_not_have_keeps_the_local_one_without_an_error(
    tmp_path: Path, agents: list[Agent]
) -> None:
    # Contract §2: NOT_FOUND on the policy means "no policy for this host": keep the local policy.
    fr = _owned_root(tmp_path)
    with ControlPlane.start() as cp:
        cp.poll_interval = 1
        host_id = enroll(cp, tmp_path / "state")
        cp.faults.fail_next(10_000, status=404, code="NOT_FOUND", path_prefix=f"/v1/hosts/{host_id}/policy")
        _start(cp, tmp_path, fr, agents, host_id)
        wait_for(
            lambda: any(r.path.startswith(f"/v1/hosts/{host_id}/policy") for r in cp.requests),
            what="a policy request",
        )
        wait_for(lambda: any(r.path.endswith("/heartbeat") for r in cp.requests), what="a heartbeat")
        agent = agents[0]
        assert agent.stop() == 0
        assert "job heartbeat" not in agent.text() and "NOT_FOUND" not in agent.text()


def test_a_failed_first_full_report_is_retried_with_the_backoff(tmp_path: Path, agents: list[Agent]) -> None:
    # Issue 15: the server refuses the first inventories (down at start); the next attempt must
    # come with the normal back-off, not full_report_s (an hour) later.
    fr = _owned_root(tmp_path)
    with ControlPlane.start() as cp:
        state = tmp_path / "state"
        host_id = enroll(cp, state)
        cp.faults.fail_next(3, status=503, path_prefix=f"/v1/hosts/{host_id}/inventory")
        config = write_config(tmp_path / "agent.toml", state, cp.url, "")
        text = config.read_text().replace(
            "allow_plain_http_loopback = true\n", "allow_plain_http_loopback = true\nmax_attempts = 1\n"
        )
        config.write_text(text)
        agents.append(Agent(config, fr.root).start())
        wait_for(
            lambda: cp.inventory(host_id) is not None, timeout=40, what="the inventory, after 3 refusals"
        )
        puts = [r.status for r in cp.requests if r.path == f"/v1/hosts/{host_id}/inventory"]
        assert puts[:3] == [503, 503, 503] and puts[-1] == 200
