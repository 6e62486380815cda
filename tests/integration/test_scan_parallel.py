"""The two-process scan prints exactly what the one-process scan prints, also when its child fails."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import pytest

from agent.host import scan_parallel
from agent.host.safefs import HostFS
from agent.host.scan import ScanContext, ScanSettings, plan_targets, scan_host
from agent.host.scan_parallel import inventory_json_chunks, split_targets
from agent.host.users import RootUserSource
from tests.fakeroot import FakeRoot, ed25519_line, rsa_line
from tests.integration.test_scan_batched_reads import hostile_root


def _context() -> ScanContext:
    return ScanContext(now=datetime(2026, 1, 1, tzinfo=UTC), local_tz=UTC, snapshot_id="s", host_id="h")


def _root(base: Path) -> FakeRoot:
    fr = hostile_root(base)
    shared = ed25519_line("shared")
    weak = rsa_line(1024, "weak")
    # Accounts on both sides of the split, out of name order in passwd, some sharing a key.
    for number in (7, 3, 9, 1, 5, 8, 2, 6, 4):
        name = f"u{number}"
        fr.add_user(name, 2000 + number)
        lines = [ed25519_line(f"{name}-own")]
        if number in (1, 9):
            lines.append(shared)
        if number == 4:
            lines.append("not a key")
        fr.authorized_keys(name, lines)
    fr.authorized_keys("root", [weak], mode=0o600)
    return fr


def _outputs(fr: FakeRoot, ndjson: bool) -> tuple[str, str]:
    with HostFS(str(fr.root)) as fs:
        users = RootUserSource(fs)
        parallel = "".join(inventory_json_chunks(fs, users, ScanSettings(), _context(), ndjson=ndjson))
        _, _, inventory = scan_host(fs, users, ScanSettings(), _context())
    if ndjson:
        single = "".join(json.dumps(k.to_json(), separators=(",", ":")) + "\n" for k in inventory.keys)
    else:
        single = json.dumps(inventory.to_json(), separators=(",", ":")) + "\n"
    return parallel, single


@pytest.mark.parametrize("ndjson", [False, True])
def test_two_processes_print_what_one_prints(tmp_path: Path, ndjson: bool) -> None:
    fr = _root(tmp_path)
    parallel, single = _outputs(fr, ndjson)
    assert parallel == single
    records = [json.loads(line) for line in parallel.splitlines()] if ndjson else json.loads(parallel)["keys"]
    shared = [k for k in records if k["comment"] == "shared"]
    assert {k["user"] for k in shared} == {"u1", "u9"}  # one in each half
    assert all("shared_key" in k["risk"]["factors"] for k in shared)


def test_split_puts_every_first_half_account_before_the_second(tmp_path: Path) -> None:
    fr = _root(tmp_path)
    with HostFS(str(fr.root)) as fs:
        plan = plan_targets(fs, RootUserSource(fs), ScanSettings())
    first, second = split_targets(plan)
    assert set(first) | set(second) == set(plan.targets) and not set(first) & set(second)
    first_names = {t.user.name for t in first if t.user}
    second_names = {t.user.name for t in second if t.user}
    assert second_names and max(first_names) < min(second_names)
    assert all(t.user is not None for t in second)


def test_failed_child_falls_back_to_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fr = _root(tmp_path)

    def dying_child(*_args: object) -> Callable[[BinaryIO, BinaryIO], None]:
        def work(inp: BinaryIO, out: BinaryIO) -> None:
            out.write(b"\0\0\0")  # half a length prefix, then death
            out.flush()
            os._exit(3)

        return work

    monkeypatch.setattr(scan_parallel, "_child_work", dying_child)
    parallel, single = _outputs(fr, ndjson=False)
    assert parallel == single
