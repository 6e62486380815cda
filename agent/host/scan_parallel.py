"""A full discovery on two cores, straight to JSON text (`sshklm-agent scan --format json|ndjson`).

The accounts are split in two by name. A forked child scans the second half while this process
scans the first; each reads, parses, evaluates and serialises its own records with the same
functions as the one-process scan (`read_target`, `assemble`, `to_json`). The one fact that
crosses halves, a key authorized for several accounts (the "shared_key" risk), is exchanged once
in the middle. Records sort by (kind, user, path, line) and every account of the first half sorts
before every account of the second (records without an account go to the first half), so each
kind's first-half records followed by its second-half records is exactly the one-process order:
the output is byte for byte what `json.dumps(inventory.to_json())` prints.

CLI only: fork() in the threaded daemon could inherit locks held by its other threads. If the
child fails in any way, the whole scan is redone in this process.
"""

from __future__ import annotations

import contextlib
import json
import marshal
import os
import signal
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO

from agent.host.safefs import HostFS
from agent.host.scan import (
    FileResult,
    Plan,
    ScanContext,
    ScanSettings,
    Target,
    TargetKey,
    assemble,
    gc_paused,
    plan_targets,
    read_targets,
    scan_host,
    target_key,
    users_per_key,
)
from agent.host.users import UserSource

_encode = json.JSONEncoder(separators=(",", ":")).encode
_LENGTH = struct.Struct(">Q")
# Records encoded per encoder call: amortises the encoder set-up without holding every
# record's dict at once (peak memory).
_CHUNK = 5000
# Share of the accounts this process scans; the forked child takes the rest.
FIRST_SHARE = 0.45


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def split_targets(plan: Plan) -> tuple[tuple[Target, ...], tuple[Target, ...]]:
    """(first, second): accounts up to the FIRST_SHARE quantile of names (and every target
    without an account), then the rest. Every record of the first part sorts before the
    second's within a kind."""
    names = sorted({t.user.name for t in plan.targets if t.user is not None})
    if len(names) < 2:
        return plan.targets, ()
    # The parent also plans (before the fork) and stitches the output: it takes a little less.
    pivot = names[max(0, int(len(names) * FIRST_SHARE) - 1)]
    first = tuple(t for t in plan.targets if t.user is None or t.user.name <= pivot)
    # The KRL applies to every account's keys: both halves read it.
    second = tuple(
        t for t in plan.targets if (t.user is not None and t.user.name > pivot) or t.kind == "revoked_keys"
    )
    return first, second


@dataclass(frozen=True)
class EncodedPart:
    """One half's output: its key records as JSON texts per kind (sorted), and its per-target
    scan errors as JSON texts (targets without errors left out)."""

    keys: dict[str, list[str]]
    errors: dict[TargetKey, list[str]]
    # The inventory's own members besides keys and errors: the KRL (the same in both halves) and
    # the half's authorized principals (JSON values, in order).
    krl: Any = None
    principals: list[Any] = field(default_factory=list)


def encode_part(
    plan: Plan,
    results: Mapping[TargetKey, FileResult],
    ctx: ScanContext,
    key_users: Mapping[str, list[str]],
    *,
    ndjson: bool = False,
) -> EncodedPart:
    """For JSON each kind's run is ONE text (records joined by commas): one encoder call per kind
    instead of one per record, which costs more than the encoding itself at 100,000 keys."""
    inventory = assemble(plan, results, ctx, (), key_users=key_users)
    keys: dict[str, list[str]] = {}
    records = inventory.keys
    start = 0
    while start < len(records):
        kind = records[start].kind
        end = start
        while end < len(records) and end - start < _CHUNK and records[end].kind == kind:
            end += 1
        chunk = [r.to_json() for r in records[start:end]]
        texts = keys.setdefault(kind, [])
        if ndjson:
            texts.extend(_encode(r) for r in chunk)
        else:
            texts.append(_encode(chunk)[1:-1])  # "[a,b]" -> "a,b": joins like per-record texts
        start = end
    errors = {k: [_encode(e.to_json()) for e in res.errors] for k, res in results.items() if res.errors}
    krl = inventory.krl.to_json() if inventory.krl else None
    return EncodedPart(keys, errors, krl, [p.to_json() for p in inventory.principals])


# --- the child and its pipes -------------------------------------------------------------------


class WorkerFailed(Exception):
    """The child died or said something unreadable."""


def _send(out: BinaryIO, payload: Any) -> None:
    data = marshal.dumps(payload)
    out.write(_LENGTH.pack(len(data)))
    out.write(data)
    out.flush()


def _receive(inp: BinaryIO) -> object:
    head = inp.read(_LENGTH.size)
    if len(head) != _LENGTH.size:
        raise WorkerFailed("worker ended early")
    (size,) = _LENGTH.unpack(head)
    data = inp.read(size)
    if len(data) != size:
        raise WorkerFailed("worker ended early")
    try:
        return marshal.loads(data)  # noqa: S302 - our own forked child, over a private pipe
    except (EOFError, ValueError, TypeError) as exc:
        raise WorkerFailed("unreadable worker message") from exc


class _Child:
    """A forked process running `work(from_parent, to_parent)`; it never returns into our code."""

    def __init__(self, work: Callable[[BinaryIO, BinaryIO], None]) -> None:
        down_r, down_w = os.pipe()
        up_r, up_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child
            status = 1
            try:
                os.close(down_w)
                os.close(up_r)
                with os.fdopen(down_r, "rb") as inp, os.fdopen(up_w, "wb") as out:
                    work(inp, out)
                status = 0
            except BaseException:  # the parent sees the failure and scans alone
                status = 1
            finally:
                os._exit(status)
        os.close(down_r)
        os.close(up_w)
        self.inp: BinaryIO = os.fdopen(up_r, "rb")
        self.out: BinaryIO = os.fdopen(down_w, "wb")

    def send(self, payload: Any) -> None:
        try:
            _send(self.out, payload)
        except OSError as exc:  # EPIPE: the child is gone
            raise WorkerFailed("worker gone") from exc

    def receive(self) -> object:
        return _receive(self.inp)

    def close_pipes(self) -> None:
        for stream in (self.out, self.inp):
            with contextlib.suppress(OSError):
                stream.close()

    def stop(self) -> None:
        """End the child whatever it is doing, and reap it."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.finish()

    def finish(self) -> bool:
        """Close the pipes, reap the child; True when it exited cleanly."""
        self.close_pipes()
        _, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status) == 0


def _child_work(
    fs: HostFS, targets: tuple[Target, ...], plan: Plan, ctx: ScanContext, ndjson: bool
) -> Callable[[BinaryIO, BinaryIO], None]:
    def work(inp: BinaryIO, out: BinaryIO) -> None:
        results = read_targets(fs, targets, plan, ctx)
        _send(out, {fp: list(users) for fp, users in users_per_key(results.values()).items()})
        key_users = _receive(inp)
        assert isinstance(key_users, dict)
        part = encode_part(plan, results, ctx, key_users, ndjson=ndjson)
        _send(out, (part.keys, part.errors, part.krl, part.principals))

    return work


# --- the scan ------------------------------------------------------------------------------------


def scan_json_parts(
    fs: HostFS, users: UserSource, settings: ScanSettings, ctx: ScanContext, *, ndjson: bool = False
) -> tuple[Plan, list[EncodedPart], _Child] | None:
    """Both halves' encoded output and the child (for the caller to reap once the output is
    written), or None when two processes cannot be used (then scan alone)."""
    with gc_paused():
        plan = plan_targets(fs, users, settings, ctx.sshd_version)
        first, second = split_targets(plan)
        if not second:
            return None
        child = _Child(_child_work(fs, second, plan, ctx, ndjson))
        try:
            results = read_targets(fs, first, plan, ctx)
            key_users = users_per_key(results.values())
            theirs = child.receive()
            if not isinstance(theirs, dict):
                raise WorkerFailed("unexpected worker message")
            for fingerprint, names in theirs.items():
                key_users.setdefault(fingerprint, set()).update(names)
            shared = _shared(key_users)
            child.send(shared)
            mine = encode_part(plan, results, ctx, shared, ndjson=ndjson)
            del results  # freed while the child finishes, not after
            answer = child.receive()
            if not (isinstance(answer, tuple) and len(answer) == 4):
                raise WorkerFailed("unexpected worker message")
        except WorkerFailed:
            child.stop()
            return None
        except BaseException:
            child.stop()
            raise
        child.close_pipes()
        return plan, [mine, EncodedPart(*answer)], child


def _shared(key_users: Mapping[str, set[str]]) -> dict[str, list[str]]:
    """The keys authorized for several accounts: all `assemble` needs to know of the other half."""
    return {fp: sorted(users) for fp, users in key_users.items() if len(users) > 1}


def inventory_json_chunks(
    fs: HostFS, users: UserSource, settings: ScanSettings, ctx: ScanContext, *, ndjson: bool = False
) -> Iterator[str]:
    """The scan's JSON document (or NDJSON lines), in chunks, computed on two processes when it can."""
    parts = scan_json_parts(fs, users, settings, ctx, ndjson=ndjson)
    if parts is None:
        _, _, inventory = scan_host(fs, users, settings, ctx)
        if ndjson:
            yield "".join(_encode(record.to_json()) + "\n" for record in inventory.keys)
        else:
            yield json.dumps(inventory.to_json(), separators=(",", ":")) + "\n"
        return
    plan, halves, child = parts
    try:
        yield from _stitch(plan, ctx, halves, ndjson=ndjson)
    finally:
        # The answer was complete, so how the child ends no longer matters; just reap it.
        child.finish()


def _stitch(plan: Plan, ctx: ScanContext, halves: list[EncodedPart], *, ndjson: bool) -> Iterator[str]:
    kinds = sorted({kind for half in halves for kind in half.keys})
    runs = [half.keys[kind] for kind in kinds for half in halves if half.keys.get(kind)]
    if ndjson:
        for run in runs:
            yield "".join(text + "\n" for text in run)
        return
    error_texts = [_encode(e.to_json()) for e in plan.errors]
    for target in plan.targets:
        key = target_key(target)
        # Both halves read the KRL (split_targets): its errors once.
        for half in halves[:1] if target.kind == "revoked_keys" else halves:
            error_texts += half.errors.get(key, ())
    yield _head(plan, ctx, halves) + ',"keys":['
    for index, run in enumerate(runs):
        yield ("," if index else "") + ",".join(run)
    yield '],"errors":[' + ",".join(error_texts) + "]}\n"


def _head(plan: Plan, ctx: ScanContext, halves: list[EncodedPart]) -> str:
    """The document's text up to its "keys" member (keys and errors are its last two members)."""
    empty = assemble(replace(plan, errors=()), {}, ctx, ())
    document = empty.to_json()
    document["krl"] = halves[0].krl
    document["authorized_principals"] = [p for half in halves for p in half.principals]
    text = json.dumps(document, separators=(",", ":"))
    tail = ',"keys":[],"errors":[]}'
    if not text.endswith(tail):
        raise AssertionError("Inventory.to_json must end with keys and errors")
    return text[: -len(tail)]
