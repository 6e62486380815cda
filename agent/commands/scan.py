"""`sshklm-agent scan`: one discovery, printed as a table, JSON or NDJSON."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, tzinfo
from typing import TextIO

from agent.config import Config
from agent.host.safefs import HostFS
from agent.host.scan import ScanContext, ScanSettings, scan_host
from agent.host.scan_parallel import inventory_json_chunks, usable_cpus
from agent.host.users import NssUserSource, RootUserSource, UserSource
from agent.inventory.evaluate import Policy
from agent.inventory.model import Inventory
from agent.inventory.render import render_table


def settings_from(config: Config) -> ScanSettings:
    d = config.discovery
    return ScanSettings(
        sshd_config=d.sshd_config,
        host_keys=d.host_keys,
        identity_keys=d.identity_keys,
        orphan_homes=d.orphan_homes,
        skip_users=frozenset(d.skip_users),
    )


def policy_from(config: Config, version: int = 0) -> Policy:
    p = config.policy
    return Policy(
        version=version,
        min_rsa_bits=p.min_rsa_bits,
        allowed_types=frozenset(p.allowed_types),
        max_key_age_days=p.max_key_age_days,
        require_from_for_root=p.require_from_for_root,
        ephemeral_max_ttl_s=p.ephemeral_max_ttl_s,
    )


def open_host(config: Config, root: str | None) -> tuple[HostFS, UserSource]:
    """The host as discovery sees it: a fake root (tests, images) or this machine via NSS."""
    fs = HostFS(root or "/", max_bytes=config.discovery.max_file_bytes)
    users: UserSource = RootUserSource(fs) if root else NssUserSource()
    return fs, users


def sshd_version(binary: str) -> str | None:
    """`OpenSSH_9.2` as sshd itself reports it (best effort; never a reason to fail a scan)."""
    try:
        out = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stderr or out.stdout).strip()
    first = text.split(",", 1)[0].split()[0] if text else ""
    return first if first.startswith("OpenSSH") else None


def local_zone() -> tzinfo:
    zone = datetime.now().astimezone().tzinfo
    return zone or UTC


def scan_context(config: Config, root: str | None, *, host_id: str | None = None) -> ScanContext:
    return ScanContext(
        now=datetime.now(UTC),
        local_tz=local_zone(),
        host_id=host_id,
        sshd_version=None if root else sshd_version(config.discovery.sshd_binary),
        policy=policy_from(config),
    )


def run_scan(config: Config, root: str | None, *, host_id: str | None = None) -> Inventory:
    fs, users = open_host(config, root)
    _, _, inventory = scan_host(fs, users, settings_from(config), scan_context(config, root, host_id=host_id))
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
    if root is not None and not os.path.isdir(root):
        print(f"sshklm-agent: --root {root}: not a directory", file=sys.stderr)
        return 2
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
