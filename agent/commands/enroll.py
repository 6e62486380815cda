"""`sshklm-agent enroll`: register this host, store host_id and its own API key (0600)."""

from __future__ import annotations

import sys

from agent.commands import UsageError
from agent.config import Config


def cmd_enroll(config: Config, *, server: str | None, token_file: str, root: str | None = None) -> int:
    """`server`: the control plane's URL (default: server.url); `root`: take the host facts (machine
    id, hostname) and host keys from a filesystem image instead of this machine (the demo)."""
    from agent.commands.preflight import check_state_dir
    from agent.commands.scan import run_scan
    from agent.control.connect import api_client, plain_http_allowed
    from agent.control.enroll import EnrollmentError, collect_host_facts, enroll_host, read_token
    from agent.control.errors import ApiError
    from agent.host.setup import sshd_version

    url = server or config.server.url
    if not url:
        raise UsageError(
            "enroll: no control plane: give --server URL, or set server.url in the configuration"
        )
    if not plain_http_allowed(url, config.server.allow_plain_http_loopback):
        raise UsageError(
            "--server must be https:// (plain http only to loopback with "
            "server.allow_plain_http_loopback = true)"
        )
    problem = check_state_dir(config.state.dir)
    if problem is not None:
        raise UsageError(f"configuration: {problem}")
    try:
        token = read_token(token_file)
    except EnrollmentError as exc:
        raise UsageError(
            f"enroll: {exc} (give --token-file FILE holding the token, or --token - with the token on "
            "standard input)"
        ) from None
    try:
        inventory = run_scan(config, root)
        host_keys = [
            {"type": k.type, "fingerprint": k.fingerprint} for k in inventory.keys if k.kind == "host_key"
        ]
        version = None if root else sshd_version(config.discovery.sshd_binary)
        facts = collect_host_facts(root or "/", host_keys=host_keys, sshd_version_text=version)
        client = api_client(config, url)
        enrollment = enroll_host(url, token, config.state.dir, facts, client=client)
    except (EnrollmentError, ApiError, OSError, ValueError) as exc:
        print(f"sshklm-agent: enrollment failed: {exc}", file=sys.stderr)
        return 1
    print(f"enrolled: host {enrollment.host_id}; credentials stored in {config.state.dir}")
    return 0
