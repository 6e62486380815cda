"""`sshklm-agent scan`: one discovery, printed as a table, JSON or NDJSON."""

from __future__ import annotations

import json
import os
import shutil
import sys
from datetime import UTC, datetime
from typing import TextIO

from agent.config import Config
from agent.host.scan import ScanContext, scan_host
from agent.host.scan_parallel import inventory_json_chunks, usable_cpus
from agent.host.setup import local_zone, open_host, policy_from, settings_from, sshd_version
from agent.inventory.model import Inventory
from agent.inventory.render import render_table

# Re-exported only for commands/rollback.py (another branch rewrites it): new code imports
# agent.host.setup.policy_from.
__all__ = ["cmd_scan", "policy_from", "run_scan", "scan_context", "write_inventory"]


def scan_context(config: Config, root: str | None) -> ScanContext:
    return ScanContext(
        now=datetime.now(UTC),
        local_tz=local_zone(),
        host_id=None,
        sshd_version=None if root else sshd_version(config.discovery.sshd_binary),
        policy=policy_from(config),
    )


def run_scan(config: Config, root: str | None) -> Inventory:
    fs, users = open_host(config, root)
    _, _, inventory = scan_host(fs, users, settings_from(config), scan_context(config, root))
    return inventory


def _homes(config: Config, root: str | None) -> dict[str, str]:
    _, users = open_host(config, root)
    try:
        return {u.name: u.home for u in users.all()}
    except OSError:
        return {}


def write_inventory(inventory: Inventory, fmt: str, out: TextIO, homes: dict[str, str]) -> None:
    # json.dumps builds the string with the C encoder; json.dump would stream ~100 tiny writes per key.
    if fmt == "json":
        out.write(json.dumps(inventory.to_json(), separators=(",", ":")) + "\n")
    elif fmt == "ndjson":
        encode = json.JSONEncoder(separators=(",", ":")).encode
        out.write("".join(encode(record.to_json()) + "\n" for record in inventory.keys))
    else:
        width = max(120, shutil.get_terminal_size((120, 24)).columns)
        out.write(render_table(inventory, width=width, homes=homes))


def cmd_scan(config: Config, *, root: str | None, fmt: str | None) -> int:
    fmt = fmt or ("table" if sys.stdout.isatty() else "json")
    try:
        if fmt in ("json", "ndjson") and usable_cpus() > 1:
            # Machine-readable output can be produced by two processes (see scan_parallel).
            fs, users = open_host(config, root)
            ctx = scan_context(config, root)
            chunks = inventory_json_chunks(fs, users, settings_from(config), ctx, ndjson=fmt == "ndjson")
            for chunk in chunks:
                sys.stdout.write(chunk)
        else:
            inventory = run_scan(config, root)
            homes = _homes(config, root) if fmt == "table" else {}
            write_inventory(inventory, fmt, sys.stdout, homes)
        sys.stdout.flush()
    except BrokenPipeError:
        # `scan | head` is fine; do not print a traceback for the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
