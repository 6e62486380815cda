"""The real daemon keeps `state.outbox_max_events` for key_used events too (issue 11): during an
outage, sshd log lines (real or forged) used to grow the outbox without bound."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from agent.store.db import open_database
from agent.store.state import StateStore
from tests.controlplane import ControlPlane
from tests.fakeroot import FakeRoot
from tests.integration.daemon_support import Agent, enroll, wait_for, write_config

pytestmark = pytest.mark.slow

FP = "SHA256:o6tOjwaQ04Kkn2YQuHGGGv4mPuuxvagTp3cv4XMQ1CM"
LINES = 400
BOUND = 50


def _queue(state: Path) -> tuple[int, int]:
    """(events pending, events counted as dropped) read from the daemon's database as it runs."""
    conn = sqlite3.connect(f"file:{state / 'agent.db'}?mode=ro", uri=True, timeout=5)
    try:
        depth = conn.execute("SELECT count(*) FROM outbox WHERE kind = 'event'").fetchone()[0]
        row = conn.execute("SELECT value FROM kv WHERE key = 'outbox_dropped'").fetchone()
    finally:
        conn.close()
    return int(depth), int(json.loads(row[0])["total"]) if row else 0


def test_key_used_events_keep_the_outbox_bound_during_an_outage(
    fr: FakeRoot, tmp_path: Path, agents: list[Agent]
) -> None:
    auth_log = tmp_path / "auth.log"
    auth_log.write_text("")
    with ControlPlane.start() as cp:
        state = tmp_path / "state"
        host_id = enroll(cp, state)
        config = write_config(tmp_path / "agent.toml", state, cp.url)
        text = config.read_text().replace("[usage]\nenabled = false\n", "")
        text = text.replace("[state]\n", f"[state]\noutbox_max_events = {BOUND}\n")
        config.write_text(text + f'[usage]\nsource = "file"\nlog_file = "{auth_log}"\n')
        agent = Agent(config, fr.root).start()
        agents.append(agent)
        wait_for(lambda: cp.inventory(host_id) is not None, what="first inventory")
        wait_for(lambda: "key usage: source file" in agent.text(), what="usage follower started")
        # The outage: every event post fails from now on.
        cp.faults.fail_next(10**6, 503, path_prefix=f"/v1/hosts/{host_id}/events")
        with auth_log.open("a") as f:
            for i in range(LINES):  # each from its own address: nothing to merge
                f.write(
                    f"2026-11-27T01:02:{i % 60:02d}.000000+00:00 host sshd[{1000 + i}]: "
                    f"Accepted publickey for alice from 198.51.{i // 250}.{i % 250} port 52144 "
                    f"ssh2: ED25519 {FP}\n"
                )
        seen: list[tuple[int, int]] = []

        def all_read() -> bool:
            depth, dropped = _queue(state)
            seen.append((depth, dropped))
            return depth > BOUND or depth + dropped >= LINES

        wait_for(all_read, timeout=60, what="every log line read")
        assert max(depth for depth, _ in seen) <= BOUND, seen[-5:]
        assert agent.stop() == 0
    with open_database(state, check_integrity=False) as db:
        status = StateStore(db).get_status()
    assert status is not None
    dropped = status["outbox_dropped"]
    assert dropped["total"] >= LINES - BOUND and dropped["by_type"]["key_used"] >= LINES - BOUND
    assert "outbox over its bound" in agent.text()
