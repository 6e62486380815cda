"""Hostile homes, odd accounts and hostile file names through the real daemon
(`sshklm-agent run --root FAKE` as a child process) and the reference control plane issuing
signed instructions."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.controlplane import ControlPlane
from tests.fakeroot import FakeRoot, ed25519_line, ed25519_private_openssh
from tests.integration.daemon_support import (
    Agent,
    enroll,
    fingerprint_of,
    jti_of,
    results_for,
    wait_for,
    with_host_identity,
    write_config,
)
from tests.integration.test_odd_accounts import assert_odd_accounts_reported, odd_root

pytestmark = pytest.mark.slow

ROOT_REASON = "accounts with distinct uids need root (chown)"


def _enrolled_agent(
    cp: ControlPlane, tmp_path: Path, fr: FakeRoot, agents: list[Agent], *, signed: bool = False
) -> tuple[str, Agent]:
    """The daemon enrolled with `cp` on `fr` (taking `cp`'s signed instructions when `signed`),
    once its first inventory arrived."""
    cp.poll_interval = 1
    state = tmp_path / "state"
    host_id = enroll(cp, state)
    extra = f'[instructions]\npublic_keys = ["{cp.signing_public_key_openssh}"]\n' if signed else ""
    agent = Agent(write_config(tmp_path / "agent.toml", state, cp.url, extra), fr.root).start()
    agents.append(agent)
    wait_for(lambda: cp.inventory(host_id) is not None, what="first inventory")
    return host_id, agent


def _tree(root: Path) -> dict[str, tuple[int, int, int, int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.relpath(os.path.join(dirpath, name), root)] = (
                st.st_ino,
                st.st_mtime_ns,
                st.st_size,
                st.st_uid,
                st.st_mode,
            )
    return out


@pytest.mark.root(reason=ROOT_REASON)
@pytest.mark.skipif(os.geteuid() != 0, reason=ROOT_REASON)
def test_signed_add_through_a_home_aimed_at_root_changes_nothing(tmp_path: Path, agents: list[Agent]) -> None:
    """alice owns /srv/alice and replaces her home /srv/alice/home by a link to /root (which has
    no ~/.ssh): the signed `add` for alice fails UNSAFE_PATH, nothing appears under /root, and the
    inventory attributes none of root's keys to alice."""
    fr = FakeRoot(tmp_path / "root")
    with_host_identity(fr)
    uid = 2001
    fr.add_account("alice", uid, uid, "/srv/alice/home")
    srv = fr.path("/srv/alice")
    srv.mkdir(parents=True)
    os.chown(srv, uid, uid)
    (srv / "home").symlink_to("/root")
    os.lchown(srv / "home", uid, uid)
    fr.path("/root").mkdir(mode=0o700)
    (fr.root / "etc/ssh/authorized_keys").mkdir()
    fr.write_sshd_config("AuthorizedKeysFile .ssh/authorized_keys /etc/ssh/authorized_keys/%u\n")
    fr.write("/etc/ssh/authorized_keys/root", ed25519_line("root-central") + "\n", 0o644)
    with ControlPlane.start() as cp:
        host_id, agent = _enrolled_agent(cp, tmp_path, fr, agents, signed=True)
        inventory = cp.inventory(host_id)
        assert inventory is not None
        assert [k["comment"] for k in inventory["keys"] if k["user"] == "alice"] == []
        assert any(e["user"] == "alice" for e in inventory["errors"])

        before = _tree(fr.root)
        body = {"rotation_id": "rot_aim", "user": "alice", "action": "add", "new_key": ed25519_line("alice")}
        jti = jti_of(cp.issue_instruction(host_id, "rotation", body))
        wait_for(lambda: results_for(cp, jti), timeout=30, what="the result")
        result = results_for(cp, jti)[0]
        assert result["status"] == "failed", result
        assert result["result"]["error"]["code"] == "UNSAFE_PATH"
        assert _tree(fr.root) == before
        assert not fr.path("/root/.ssh").exists()
        assert agent.stop() == 0


def test_odd_accounts_never_stop_the_daemon(tmp_path: Path, agents: list[Agent]) -> None:
    """Odd passwd entries at start and added while it runs: the daemon reports them in the
    inventory's errors, keeps running, and still reports alice's new key."""

    fr = with_host_identity(odd_root(tmp_path))
    with ControlPlane.start() as cp:
        host_id, agent = _enrolled_agent(cp, tmp_path, fr, agents)
        inventory = cp.inventory(host_id)
        assert inventory is not None
        assert_odd_accounts_reported(inventory)
        # More odd entries while it runs: the re-plan reports them and the daemon goes on.
        with (fr.root / "etc/passwd").open("ab") as f:
            f.write(b"late:x:991:991::rel/ative:/bin/sh\nlate2\xff:x:990:990::/x:/bin/sh\n")
        late = ed25519_line("late-key")
        with fr.path("/home/alice/.ssh/authorized_keys").open("a") as f:
            f.write(late + "\n")
        fp = fingerprint_of(late)
        wait_for(
            lambda: any(e["type"] == "key_added" and e["fingerprint"] == fp for e in cp.events(host_id)),
            what="alice's key after the late odd accounts",
        )
        assert agent.proc is not None and agent.proc.poll() is None
        assert "Traceback" not in agent.text()
        assert agent.stop() == 0


def test_a_user_rewriting_junk_is_reread_later_and_her_last_change_is_still_reported(
    tmp_path: Path, agents: list[Agent]
) -> None:
    """alice rewrites her authorized_keys as 1 MiB of invalid lines, over and over; each re-read
    costs more than her re-read budget, so her later changes wait — but bob's go through at once,
    and alice's last change (a key after the junk) is reported when her budget allows."""
    fr = FakeRoot(tmp_path / "root")
    uid = os.geteuid() or 1000
    for name in ("alice", "bob"):
        fr.add_user(name, uid)
        fr.authorized_keys(name, [ed25519_line(f"{name}-initial")])
    with_host_identity(fr)
    junk = b"a\n" * ((1 << 19) - 2048)  # under discovery.max_file_bytes, with room for a key after it
    with ControlPlane.start() as cp:
        host_id, agent = _enrolled_agent(cp, tmp_path, fr, agents)

        def added(fp: str) -> bool:
            return any(e["type"] == "key_added" and e["fingerprint"] == fp for e in cp.events(host_id))

        alice = fr.path("/home/alice/.ssh/authorized_keys")
        for _ in range(3):  # each re-read of 524,288 invalid lines overdraws her budget
            alice.write_bytes(junk)
            time.sleep(0.6)
        last = ed25519_line("alice-after-the-junk")
        alice.write_bytes(junk + last.encode() + b"\n")
        bob_key = ed25519_line("bob-meanwhile")
        with fr.path("/home/bob/.ssh/authorized_keys").open("a") as f:
            f.write(bob_key + "\n")
        wait_for(lambda: added(fingerprint_of(bob_key)), timeout=20, what="bob's key while alice is deferred")
        wait_for(lambda: added(fingerprint_of(last)), timeout=120, what="alice's last change, late")
        assert "re-reads of alice deferred" in agent.text()
        assert agent.proc is not None and agent.proc.poll() is None
        assert agent.stop() == 0


def test_hostile_file_names_do_not_forge_log_lines(tmp_path: Path, agents: list[Agent]) -> None:
    """A key file in ~/.ssh named with a newline and escape sequences, added while the daemon
    runs (standalone: every change is logged): its log line stays one line, escaped."""
    fr = FakeRoot(tmp_path / "root")
    fr.add_user("alice", os.geteuid() or 1000)
    fr.authorized_keys("alice", [ed25519_line("initial")])
    agent = Agent(write_config(tmp_path / "agent.toml", tmp_path / "state"), fr.root).start()
    agents.append(agent)
    wait_for(lambda: "ready" in agent.text(), what="the daemon ready")
    forged = "2026-01-01 00:00:00,000 INFO sshklm.daemon: FORGED"
    private, _ = ed25519_private_openssh()
    fr.write(f"/home/alice/.ssh/id_x\n{forged}\x1b[2J\x1b[31m\u2028", private)
    wait_for(lambda: "key_added" in agent.text(), what="the new key logged")
    text = agent.text()
    assert not any(line.startswith(forged) for line in text.splitlines())
    assert "id_x\\n2026-01-01" in text
    for raw in ("\x1b", "\u2028"):
        assert raw not in text
    assert agent.stop() == 0
