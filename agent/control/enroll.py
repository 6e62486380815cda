"""Enrollment: host facts, the bootstrap token, and the credential files in the state directory.

Files written under ``state_dir`` (mode 0700):
- ``api_key``         the host's API key, mode 0600 (what ``server.api_key_file`` points at)
- ``enrollment.json`` host_id, agent_id, server_url, enrolled_at: not secret, mode 0644
Both are written with the safe file layer's atomic write (``write_private_file``: a fresh O_EXCL
temp file, fsynced, renamed over the old one within the held directory, the directory fsynced), so
a re-enrollment atomically replaces the old key. The bootstrap token is only ever read
from a file or stdin (never argv) and is never stored.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import socket
import stat
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from agent import __version__
from agent.control.client import ApiClient, Enrollment
from agent.host.safefs import UnsafePath, open_private_dir, write_private_file

log = logging.getLogger("sshklm.control")

API_KEY_FILE = "api_key"
ENROLLMENT_FILE = "enrollment.json"
MAX_TOKEN_BYTES = 16 * 1024
STDIN_MARKER = "-"


class EnrollmentError(Exception):
    """Local enrollment problem (token file, state directory); messages never carry secrets."""


# -- facts ------------------------------------------------------------------


def parse_os_release(text: str) -> dict[str, str]:
    """KEY=value lines of os-release(5), with shell-style quotes removed (pure)."""
    fields: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        fields[key.strip()] = value
    return fields


def _read_text(path: str, limit: int = 64 * 1024) -> str | None:
    try:
        with open(path, "rb") as handle:
            return handle.read(limit).decode("utf-8", "replace")
    except OSError:
        return None


def collect_host_facts(
    root: str = "/",
    *,
    host_keys: Sequence[Mapping[str, Any]] = (),
    sshd_version_text: str | None = None,
) -> dict[str, Any]:
    """The enrollment body (contract section 4) for the host at ``root``.

    With ``root`` other than "/" (tests, images) hostname and kernel come from files under it;
    for the live host the kernel and FQDN come from the running system. ``host_keys`` and
    ``sshd_version_text`` are supplied by the caller (the scanner knows them).
    """

    def under(path: str) -> str:
        return os.path.join(root, path.lstrip("/"))

    live = os.path.realpath(root) == "/"
    machine_id = (
        _read_text(under("/etc/machine-id")) or _read_text(under("/var/lib/dbus/machine-id")) or ""
    ).strip()
    if not machine_id:
        raise EnrollmentError("no machine-id found (/etc/machine-id)")
    hostname = (_read_text(under("/etc/hostname")) or "").strip() or (socket.gethostname() if live else "")
    fqdn = socket.getfqdn(hostname) if live and hostname else hostname
    os_release = parse_os_release(
        _read_text(under("/etc/os-release")) or _read_text(under("/usr/lib/os-release")) or ""
    )
    kernel = platform.release() if live else (_read_text(under("/proc/sys/kernel/osrelease")) or "").strip()
    return {
        "machine_id": machine_id,
        "hostname": hostname,
        "fqdn": fqdn,
        "os": {"id": os_release.get("ID", ""), "version_id": os_release.get("VERSION_ID", "")},
        "kernel": kernel,
        "agent_version": __version__,
        "sshd_version": sshd_version_text,
        "host_keys": [dict(key) for key in host_keys],
    }


# -- bootstrap token --------------------------------------------------------


def read_token(token_file: str, stdin: TextIO | None = None) -> str:
    """The bootstrap token from a file, or from stdin when ``token_file`` is "-"; stripped, not empty."""
    if token_file == STDIN_MARKER:
        source = stdin if stdin is not None else sys.stdin
        text = source.read(MAX_TOKEN_BYTES)
    else:
        try:
            with open(token_file, "rb") as handle:
                text = handle.read(MAX_TOKEN_BYTES).decode("utf-8")
        except OSError as exc:
            raise EnrollmentError(f"cannot read token file {token_file}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise EnrollmentError(f"token file {token_file} is not UTF-8 text") from None
    token = text.strip()
    if not token:
        raise EnrollmentError("bootstrap token is empty")
    if any(ch.isspace() for ch in token):
        raise EnrollmentError("bootstrap token must be a single line without spaces")
    return token


# -- credential files -------------------------------------------------------


@dataclass(frozen=True)
class StoredCredentials:
    host_id: str
    agent_id: str
    server_url: str
    api_key: str = field(repr=False)


def ensure_state_dir(state_dir: str) -> None:
    """Create ``state_dir`` 0700 (or tighten it); refuse a symlink, a non-directory, or a directory
    owned by another uid (the safe file layer's rule for the agent's own directories)."""
    try:
        os.close(open_private_dir(state_dir))
    except UnsafePath as exc:
        raise EnrollmentError(f"state directory {state_dir} {exc.reason}") from None
    except OSError as exc:
        raise EnrollmentError(f"cannot create state directory {state_dir}: {exc.strerror}") from None


def save_credentials(
    state_dir: str, enrollment: Enrollment, server_url: str, now: datetime | None = None
) -> None:
    ensure_state_dir(state_dir)
    write_private_file(state_dir, API_KEY_FILE, (enrollment.api_key + "\n").encode("utf-8"), 0o600)
    record = {
        "host_id": enrollment.host_id,
        "agent_id": enrollment.agent_id,
        "server_url": server_url,
        "enrolled_at": (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    write_private_file(
        state_dir, ENROLLMENT_FILE, (json.dumps(record, indent=2) + "\n").encode("utf-8"), 0o644
    )


def read_api_key(path: str) -> str:
    """The API key from ``path``; refuses a file other users could read or a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise EnrollmentError(f"cannot open API key file {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if info.st_mode & 0o077:
            raise EnrollmentError(
                f"API key file {path} is accessible by group/other (mode {stat.S_IMODE(info.st_mode):o})"
            )
        key = os.read(fd, 4096).decode("utf-8", "replace").strip()
    finally:
        os.close(fd)
    if not key:
        raise EnrollmentError(f"API key file {path} is empty")
    return key


def load_credentials(state_dir: str) -> StoredCredentials | None:
    """What ``save_credentials`` wrote, or None when this host has not enrolled yet."""
    text = _read_text(os.path.join(state_dir, ENROLLMENT_FILE))
    if text is None:
        return None
    try:
        record = json.loads(text)
        host_id, agent_id, server_url = record["host_id"], record["agent_id"], record["server_url"]
    except (ValueError, KeyError, TypeError):
        raise EnrollmentError(f"{ENROLLMENT_FILE} in {state_dir} is malformed") from None
    api_key = read_api_key(os.path.join(state_dir, API_KEY_FILE))
    return StoredCredentials(str(host_id), str(agent_id), str(server_url), api_key)


def enroll_host(
    server_url: str,
    bootstrap_token: str,
    state_dir: str,
    facts: Mapping[str, Any],
    *,
    client: ApiClient | None = None,
    **client_options: Any,
) -> Enrollment:
    """Enroll this host and store its credentials; safe to repeat (same machine -> same host_id,
    the new key replaces the old one). ``client_options`` go to ApiClient when no client is given."""
    ensure_state_dir(state_dir)  # fail on a bad state dir before using the one-time token
    own = client is None
    api = client if client is not None else ApiClient(server_url, **client_options)
    try:
        enrollment = api.enroll(bootstrap_token, facts)
    finally:
        if own:
            api.close()
    save_credentials(state_dir, enrollment, server_url)
    log.info("stored credentials for host %s in %s", enrollment.host_id, state_dir)
    return enrollment
