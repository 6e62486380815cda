"""A writer SIGKILLed in the middle of appending loses nothing it reported as appended.

The child appends batches in a loop and prints each batch's ids only after `append`
returned (flushing stdout), occasionally acks the oldest events (printing "acking" before
and "acked" after). The parent kills it with SIGKILL at a random moment, reopens the
database and checks: integrity ok, every reported id present unless its ack completed,
seqs strictly increasing in report order, and a new writer never reuses a seq.
(Power loss cannot be simulated here; it rests on WAL + synchronous=FULL, checked in
test_store_db.)
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from agent.store.db import DB_NAME, open_database
from agent.store.outbox import Outbox

REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import random, sys, uuid
from agent.store.db import open_database
from agent.store.outbox import Outbox

box = Outbox(open_database(sys.argv[1]))
rng = random.Random(int(sys.argv[2]))
out = sys.stdout
n = 0
while True:
    batch = [{"id": str(uuid.uuid4()), "type": "key_added", "detail": {"n": n + i}}
             for i in range(rng.randint(1, 5))]
    n += len(batch)
    box.append(batch)
    out.write("appended " + " ".join(e["id"] for e in batch) + "\n")
    out.flush()
    if rng.random() < 0.1:
        ids = [e["id"] for e in box.peek(limit=3)]
        out.write("acking " + " ".join(ids) + "\n")
        out.flush()
        box.ack(ids)
        out.write("acked " + " ".join(ids) + "\n")
        out.flush()
"""


def _run_and_kill(state: Path, seed: int, min_appends: int) -> list[tuple[str, list[str]]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(state), str(seed)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    appends = 0
    deadline = time.monotonic() + 60
    while appends < min_appends and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        appends += line.startswith("appended ")
    time.sleep(random.Random(seed).uniform(0.0, 0.2))  # let it run into an arbitrary moment
    os.kill(proc.pid, signal.SIGKILL)
    lines.extend(proc.stdout.readlines())  # everything it flushed before dying
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    parsed = []
    for line in lines:
        if not line.endswith("\n"):
            continue  # a torn last line cannot happen with flush-per-line, but be exact
        verb, *ids = line.split()
        parsed.append((verb, ids))
    return parsed


def test_kill_9_loses_no_appended_event_and_never_reuses_seq(tmp_path: Path) -> None:
    state = tmp_path / "state"
    reported: list[str] = []  # appended ids in the order the children reported them
    acked: set[str] = set()
    maybe_acked: set[str] = set()
    last_seq_before = 0  # highest seq ever assigned when the previous writer died
    for round_no in range(3):
        this_round: list[str] = []
        for verb, ids in _run_and_kill(state, seed=round_no, min_appends=40):
            if verb == "appended":
                this_round.extend(ids)
            elif verb == "acking":
                maybe_acked.update(ids)
            elif verb == "acked":
                acked.update(ids)
        reported.extend(this_round)
        assert len(this_round) >= 40

        conn = sqlite3.connect(state / DB_NAME)
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        conn.close()

        with open_database(state) as db:
            box = Outbox(db)
            pending = box.peek(limit=1_000_000)
            last_seq = box.last_seq()
        seq_of = {e["id"]: e["seq"] for e in pending}
        seqs = [e["seq"] for e in pending]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert max(seqs, default=0) <= last_seq

        for event_id in reported:
            if event_id in acked:
                assert event_id not in seq_of, "an event whose ack returned came back"
            elif event_id not in maybe_acked:
                assert event_id in seq_of, "an event whose append returned was lost"
        # Report order is seq order.
        present = [seq_of[i] for i in reported if i in seq_of]
        assert present == sorted(present)
        # The restarted writer continued above every seq assigned before it (even acked ones).
        assert all(seq_of[i] > last_seq_before for i in this_round if i in seq_of)
        last_seq_before = last_seq
