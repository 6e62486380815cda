"""The reference control plane as an administrator and a shell see it (issue 15): the values a
shell needs as `export` lines, the key view following change events at once, and an ephemeral
grant's status following what the agent did."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.controlplane import ControlPlane
from tests.controlplane.keyview import apply_events, expired_grants
from tests.integration.test_controlplane import agent, bearer

REPO = Path(__file__).resolve().parents[2]


def _record(line: int, fingerprint: str = "SHA256:a", comment: str = "k") -> dict[str, Any]:
    return {
        "kind": "authorized_key",
        "user": "alice",
        "path": "/home/alice/.ssh/authorized_keys",
        "line": line,
        "fingerprint": fingerprint,
        "comment": comment,
    }


def _event(
    kind: str, record: dict[str, Any], at: str = "2026-12-04T12:00:05Z", **detail: Any
) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "seq": 1,
        "at": at,
        "type": kind,
        "user": record.get("user"),
        "path": record.get("path"),
        "fingerprint": record.get("fingerprint"),
        "key": record,
        "detail": detail,
    }


def test_key_view_applies_events_after_the_inventory_idempotently() -> None:
    inventory = [_record(1)]
    added = _event("key_added", _record(2, "SHA256:b"))
    # at least once: the same event twice, and an event the inventory already holds
    view = apply_events(inventory, [added, added, _event("key_added", _record(1))], "2026-12-04T12:00:00Z")
    assert [(k["line"], k["fingerprint"]) for k in view] == [(1, "SHA256:a"), (2, "SHA256:b")]
    changed = _event("key_changed", _record(2, "SHA256:b", comment="renamed"))
    removed = _event("key_removed", _record(1))
    view = apply_events(view, [changed, removed], "2026-12-04T12:00:00Z")
    assert view == [_record(2, "SHA256:b", comment="renamed")]
    # An event from before the inventory was collected is in it already.
    old = _event("key_removed", _record(1), at="2026-12-04T11:59:59Z")
    assert apply_events(inventory, [old], "2026-12-04T12:00:00Z") == inventory
    assert inventory == [_record(1)]  # the input is not changed


def test_an_appended_key_shows_in_the_admin_view_with_its_event() -> None:
    with ControlPlane.start() as cp, httpx.Client(base_url=cp.url, timeout=5) as client:
        _appended_key_shows(cp, client)


def _appended_key_shows(cp: ControlPlane, client: httpx.Client) -> None:
    host_id, token = agent(client, cp)
    inventory = {"collected_at": "2026-12-04T12:00:00Z", "keys": [_record(1)], "errors": []}
    assert (
        client.put(f"/v1/hosts/{host_id}/inventory", json=inventory, headers=bearer(token)).status_code == 200
    )
    event = _event("key_added", _record(2, "SHA256:b"))
    r = client.post(f"/v1/hosts/{host_id}/events", json={"events": [event]}, headers=bearer(token))
    assert r.status_code == 200, r.text
    admin = bearer(cp.admin_token())
    keys = client.get("/v1/keys", params={"user": "alice"}, headers=admin).json()["keys"]
    assert [k["fingerprint"] for k in keys] == ["SHA256:a", "SHA256:b"]
    assert cp.inventory(host_id) == inventory  # what the agent PUT is kept as it came


def test_a_grant_the_agent_expired_reads_expired() -> None:
    with ControlPlane.start() as cp, httpx.Client(base_url=cp.url, timeout=5) as client:
        _grant_expires(cp, client)


def _grant_expires(cp: ControlPlane, client: httpx.Client) -> None:
    host_id, token = agent(client, cp)
    admin = bearer(cp.admin_token())
    r = client.post(
        "/v1/ephemeral",
        json={"host": host_id, "username": "alice", "ttl": 60, "reason": "t"},
        headers={**admin, "Idempotency-Key": "g1"},
    )
    assert r.status_code == 201, r.text
    grant = r.json()
    jti = grant["instruction_id"]
    applied = {"status": "applied", "at": "2026-12-04T12:00:00Z", "error": None, "fingerprints_after": []}
    assert (
        client.post(f"/v1/instructions/{jti}/result", json=applied, headers=bearer(token)).status_code == 200
    )
    assert client.get(f"/v1/ephemeral/{grant['grant_id']}", headers=admin).json()["status"] == "active"
    # The agent removes the key at expiry and says so with an event (it has no result to post).
    expiry = _event(
        "instruction_applied",
        _record(3, grant["fingerprint"]),
        action="ephemeral_expiry",
        grant_id=grant["grant_id"],
        jti=jti,
    )
    expiry["key"] = None
    assert expired_grants([expiry]) == [grant["grant_id"]]
    r = client.post(f"/v1/hosts/{host_id}/events", json={"events": [expiry]}, headers=bearer(token))
    assert r.status_code == 200, r.text
    assert client.get(f"/v1/ephemeral/{grant['grant_id']}", headers=admin).json()["status"] == "expired"


def test_print_env_in_the_background_is_what_a_shell_needs(tmp_path: Path) -> None:
    env_file = tmp_path / "cp.env"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.controlplane",
            "--port",
            "0",
            "--db",
            str(tmp_path / "cp.db"),
            "--background",
            "--print-env",
            "--env-file",
            str(env_file),
            "--log",
            str(tmp_path / "cp.log"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    # It returned: the server runs on in the background, already listening.
    values = {}
    for line in done.stdout.splitlines():
        assert line.startswith("export ")
        name, _, quoted = line.removeprefix("export ").partition("=")
        values[name] = shlex.split(quoted)[0]
    pid = int(values["CONTROL_PLANE_PID"])
    try:
        assert set(values) == {
            "CONTROL_PLANE_URL",
            "BOOTSTRAP_TOKEN",
            "ADMIN_API_KEY",
            "SIGNING_PUBLIC_KEY",
            "CONTROL_PLANE_PID",
        }
        assert values["SIGNING_PUBLIC_KEY"].startswith("ssh-ed25519 AAAA")
        assert env_file.read_text() == done.stdout and os.stat(env_file).st_mode & 0o777 == 0o600
        with httpx.Client(base_url=values["CONTROL_PLANE_URL"]) as c:
            r = c.post("/v1/auth/token", json={"api_key": values["ADMIN_API_KEY"]})
            assert r.status_code == 200
        # A shell consumes it as is.
        shell = subprocess.run(
            ["sh", "-c", f'eval "$(cat {shlex.quote(str(env_file))})"; printf %s "$SIGNING_PUBLIC_KEY"'],
            capture_output=True,
            text=True,
            check=True,
        )
        assert shell.stdout == values["SIGNING_PUBLIC_KEY"]
        assert values["BOOTSTRAP_TOKEN"] not in (tmp_path / "cp.log").read_text()
    finally:
        os.kill(pid, signal.SIGTERM)
