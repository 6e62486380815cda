"""`sshklm-agent enroll`: register this host, store host_id and its own API key (0600)."""

from __future__ import annotations

import sys

from agent.config import Config


def cmd_enroll(config: Config, *, server: str, token_file: str) -> int:
    from agent.commands.scan import run_scan
    from agent.control.connect import api_client, plain_http_allowed
    from agent.control.enroll import EnrollmentError, collect_host_facts, enroll_host, read_token
    from agent.control.errors import ApiError
    from agent.host.setup import sshd_version

    if not plain_http_allowed(server, config.server.allow_plain_http_loopback):
        print(
            "sshklm-agent: --server must be https:// (plain http only to loopback with "
            "server.allow_plain_http_loopback = true)",
            file=sys.stderr,
        )
        return 2
    try:
        token = read_token(token_file)
        inventory = run_scan(config, None)
        host_keys = [
            {"type": k.type, "fingerprint": k.fingerprint} for k in inventory.keys if k.kind == "host_key"
        ]
        version = sshd_version(config.discovery.sshd_binary)
        facts = collect_host_facts("/", host_keys=host_keys, sshd_version_text=version)
        client = api_client(config, server)
        enrollment = enroll_host(server, token, config.state.dir, facts, client=client)
    except (EnrollmentError, ApiError, OSError, ValueError) as exc:
        print(f"sshklm-agent: enrollment failed: {exc}", file=sys.stderr)
        return 1
    print(f"enrolled: host {enrollment.host_id}; credentials stored in {config.state.dir}")
    return 0
