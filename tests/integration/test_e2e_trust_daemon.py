"""The whole loop with a real sshd: the reference control plane issues `revoke_keys`, the real daemon
(`sshklm-agent run`, enrolled, on the real root) fetches, verifies and applies it, and sshd refuses
the key; the KRL's changes reach the control plane as events, and a KRL corrupted by hand shows in
them and in `status` at once. The time from instruction issued to sshd refusing is printed (the
figure: benchmarks/bench_revoke.py). Root only.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from agent.commands.status import read_status
from tests.controlplane import ControlPlane
from tests.fakeroot import ed25519_line
from tests.integration.daemon_support import Agent, enroll, fingerprint_of, wait_for, write_config
from tests.integration.sshd_support import REAL_SSHD_MARKS, make_site

pytestmark = [*REAL_SSHD_MARKS, pytest.mark.slow]


def agent_config(path: Path, state: Path, cp: ControlPlane, sshd_config: Path, trust_dir: Path) -> Path:
    extra = (
        f'[instructions]\npublic_keys = ["{cp.signing_public_key_openssh}"]\n'
        f'[discovery]\nsshd_config = "{sshd_config}"\nidentity_keys = false\norphan_homes = false\n'
        f'[trust]\ndir = "{trust_dir}"\ncheck_s = 1.0\n'
    )
    return write_config(path, state, cp.url, extra)


def result_of(cp: ControlPlane, jti: str) -> dict[str, Any] | None:
    found = [r for r in cp.instruction_results() if r["jti"] == jti]
    return found[0] if found else None


def jti_of(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


def test_daemon_revokes_and_reports(tmp_path: Path, agents: list[Agent]) -> None:
    site = make_site(tmp_path / "site")
    try:
        with ControlPlane.start() as cp:
            cp.poll_interval = 1
            state = tmp_path / "state"
            host_id = enroll(cp, state)
            config = agent_config(tmp_path / "agent.toml", state, cp, site.config, site.trust_dir)
            agent = Agent(config, Path("/")).start()
            agents.append(agent)
            krl = site.trust_dir / "revoked_keys"
            wait_for(krl.exists, timeout=30, what="the agent's KRL")
            site.start_sshd()
            wait_for(lambda: cp.inventory(host_id) is not None, timeout=60, what="first inventory")
            assert site.login("member") and site.login("bystander")

            fp = site.keys["member"][2]
            started = time.monotonic()
            token = cp.issue_instruction(
                host_id, "revoke_keys", {"revocation_id": "rvk_d1", "fingerprints": [fp]}
            )
            while site.login("member"):
                assert time.monotonic() - started < 60, "sshd never refused the revoked key"
            latency = time.monotonic() - started
            print(f"\nrevocation: instruction issued -> sshd refuses the key: {latency * 1000:.0f} ms")
            assert site.login("bystander")
            jti = jti_of(token)
            wait_for(lambda: result_of(cp, jti), timeout=30, what="the result")
            result = result_of(cp, jti)
            assert result is not None and result["status"] == "applied", result

            def krl_event(**want: Any) -> bool:
                return any(
                    e["type"] == "sshd_config_changed"
                    and e["path"] == str(krl)
                    and all(e["detail"].get(k) == v for k, v in want.items())
                    for e in cp.events(host_id)
                )

            wait_for(lambda: krl_event(revoked_added=[fp]), timeout=30, what="the KRL change event")

            def member_event() -> bool:
                return any(
                    e["type"] == "key_changed" and e["fingerprint"] == fp and e["key"]["revoked"]
                    for e in cp.events(host_id)
                )

            wait_for(member_event, timeout=30, what="key_changed: the member key is revoked")

            # A KRL corrupted by hand: reported at once (event and status), left for the next instruction.
            krl.write_bytes(b"SSHKRL\n\0garbage")
            wait_for(
                lambda: any(
                    e["type"] == "file_unreadable" and e["path"] == str(krl) for e in cp.events(host_id)
                ),
                timeout=30,
                what="file_unreadable for the corrupt KRL",
            )
            wait_for(
                lambda: ((read_status(str(state)) or {}).get("revocation") or {}).get("state") == "invalid",
                timeout=30,
                what="status shows the KRL invalid",
            )
            assert not site.login("bystander")
            token = cp.issue_instruction(
                host_id, "unrevoke_keys", {"revocation_id": "rvk_d1", "fingerprints": [fp]}
            )
            wait_for(lambda: site.login("member"), timeout=30, what="the key logs in again")
            assert site.login("bystander")
            wait_for(
                lambda: ((read_status(str(state)) or {}).get("revocation") or {}).get("state") == "ok",
                timeout=30,
                what="status shows the KRL ok again",
            )

            # Someone else edits the CA keys file and a principals file: events, like authorized_keys.
            ca_line = ed25519_line("hand-ca")
            ca_file = site.trust_dir / "trusted_user_ca_keys"
            ca_file.write_text(ca_file.read_text() + ca_line + "\n")
            ca_fp = fingerprint_of(ca_line)
            wait_for(
                lambda: any(
                    e["type"] == "key_added"
                    and e["fingerprint"] == ca_fp
                    and e["key"]["kind"] == "trusted_user_ca"
                    for e in cp.events(host_id)
                ),
                timeout=30,
                what="key_added for a CA added by hand",
            )
            principals = site.trust_dir / "principals" / site.user
            principals.write_text("root\n")
            principals.chmod(0o644)
            wait_for(
                lambda: any(
                    e["type"] == "sshd_config_changed"
                    and e["path"] == str(principals)
                    and e["detail"].get("added") == ["root"]
                    for e in cp.events(host_id)
                ),
                timeout=30,
                what="the principals file change",
            )
            assert agent.stop() == 0
    finally:
        site.close()
