"""The agent and the reference control plane over real, verified HTTPS on loopback (a test CA).

Every other integration test talks plain http with `allow_plain_http_loopback`; these are the only
ones that exercise the production TLS path: `server.ca_file` -> tls_context -> httpx, end to end.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.control.backoff import BackoffPolicy
from agent.control.client import ApiClient, Timeouts
from agent.control.enroll import API_KEY_FILE, enroll_host
from agent.control.errors import ApiError
from tests.controlplane import ControlPlane
from tests.fakeroot import FakeRoot
from tests.integration.daemon_support import (
    Agent,
    assert_reports_events_and_heartbeats,
    wait_for,
    write_config,
)
from tests.tlsca import LoopbackTls, write_loopback_tls, write_unrelated_ca

# Short retries for the connection errors these tests provoke (a refused certificate is not retried).
FAST = BackoffPolicy(base=0.05, cap=0.2, max_attempts=2)
IMPATIENT = Timeouts(connect=1.0, read=1.0, write=1.0, pool=1.0)
HEARTBEAT_PERIODS_WAITED = 3  # heartbeat_s = 1 in write_config
CERT_REFUSED = "CERTIFICATE_VERIFY_FAILED"
# The reference control plane's access and refresh tokens are JWTs; their values are never known here.
JWT_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.")


def facts(machine_id: str) -> dict[str, Any]:
    return {
        "machine_id": machine_id,
        "hostname": "tls-host",
        "fqdn": "tls-host",
        "os": {},
        "kernel": "",
        "agent_version": "0.1.0",
        "sshd_version": None,
        "host_keys": [],
    }


@pytest.fixture
def tls(tmp_path: Path) -> LoopbackTls:
    return write_loopback_tls(tmp_path / "tls")


@pytest.fixture
def cp(tls: LoopbackTls) -> Iterator[ControlPlane]:
    plane = ControlPlane.start(tls=tls.server_context())
    try:
        yield plane
    finally:
        plane.stop()


def enroll_over_tls(
    cp: ControlPlane, tls: LoopbackTls, state: Path, **client_options: Any
) -> tuple[str, str]:
    """(host_id, API key as stored on disk) after enrolling ``state`` through the test CA."""
    host_id = enroll_host(
        cp.url,
        cp.bootstrap_token,
        str(state),
        facts("m-" + state.name),
        ca_file=str(tls.ca_file),
        **client_options,
    ).host_id
    return host_id, (state / API_KEY_FILE).read_text().strip()


def https_agent_config(path: Path, state: Path, url: str, ca_file: Path, *, max_attempts: int = 5) -> Path:
    # Deliberately no allow_plain_http_loopback: only https may pass the agent's URL check.
    server = f'[server]\nurl = "{url}"\nca_file = "{ca_file}"\nmax_attempts = {max_attempts}\n'
    return write_config(path, state, extra=server)


def assert_no_secrets(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text
    assert JWT_SHAPE.search(text) is None


def agent_status(config: Path) -> tuple[dict[str, Any], str]:
    """`sshklm-agent status --json`: the parsed document and the raw text (to search for secrets)."""
    out = subprocess.run(
        [sys.executable, "-m", "agent", "status", "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    return json.loads(out.stdout), out.stdout + out.stderr


def test_enrolment_over_https_and_the_credentials_work(
    cp: ControlPlane, tls: LoopbackTls, tmp_path: Path
) -> None:
    assert cp.url.startswith("https://127.0.0.1:")
    host_id, api_key = enroll_over_tls(cp, tls, tmp_path / "state")
    with ApiClient(cp.url, api_key=api_key, ca_file=str(tls.ca_file), backoff=FAST) as client:
        answer = client.heartbeat(host_id, {"status": "ok"})
    assert answer["poll_interval"] == cp.poll_interval
    assert [(r.method, r.path, r.status) for r in cp.requests] == [
        ("POST", "/v1/agents/enroll", 201),
        ("POST", "/v1/auth/token", 200),
        ("POST", f"/v1/hosts/{host_id}/heartbeat", 200),
    ]


def test_enrolment_with_an_unrelated_ca_is_refused_before_anything_is_sent(
    cp: ControlPlane, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    with pytest.raises(ApiError) as refused:
        enroll_host(
            cp.url,
            cp.bootstrap_token,
            str(state),
            facts("m-unrelated"),
            ca_file=str(write_unrelated_ca(tmp_path / "other")),
            backoff=FAST,
        )
    assert refused.value.code == "TRANSPORT_ERROR"
    assert CERT_REFUSED in str(refused.value)
    assert cp.bootstrap_token not in f"{refused.value} {refused.value!r} {refused.value.details}"
    assert cp.requests == []  # the token never left the client: no request was ever decoded
    assert not (state / API_KEY_FILE).exists()


def test_failed_and_stalled_handshakes_do_not_stop_the_server(
    cp: ControlPlane, tls: LoopbackTls, tmp_path: Path
) -> None:
    address = ("127.0.0.1", int(cp.url.rsplit(":", 1)[1]))
    # Every socket here has a deadline: were handshakes done on the serving thread, the first client
    # after `silent` would time out in seconds instead of the test hanging.
    with socket.create_connection(address, timeout=IMPATIENT.connect) as silent:  # connects, never speaks
        distrustful = ssl.create_default_context(cafile=str(write_unrelated_ca(tmp_path / "other")))
        with (
            socket.create_connection(address, timeout=IMPATIENT.connect) as raw,
            pytest.raises(ssl.SSLCertVerificationError),
        ):
            distrustful.wrap_socket(raw, server_hostname=address[0])
        with socket.create_connection(address, timeout=IMPATIENT.connect) as plain:
            plain.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert not plain.recv(1024).startswith(b"HTTP/")  # a TLS alert or a close, never an answer
        host_id, _ = enroll_over_tls(cp, tls, tmp_path / "state", timeouts=IMPATIENT, backoff=FAST)
        silent.settimeout(0)
        with pytest.raises(BlockingIOError):  # no EOF: its handshake was pending the whole time
            silent.recv(1)
    assert [(r.path, r.status) for r in cp.requests] == [("/v1/agents/enroll", 201)]
    assert host_id


@pytest.mark.slow
def test_daemon_reports_and_sends_events_over_https(
    cp: ControlPlane, tls: LoopbackTls, fr: FakeRoot, tmp_path: Path, agents: list[Agent]
) -> None:
    state = tmp_path / "state"
    host_id, api_key = enroll_over_tls(cp, tls, state)
    config = https_agent_config(tmp_path / "agent.toml", state, cp.url, tls.ca_file)
    agent = Agent(config, fr.root).start()
    agents.append(agent)
    assert_reports_events_and_heartbeats(cp, host_id, fr, "added-over-tls")
    assert agent.stop() == 0
    log = agent.text()
    assert CERT_REFUSED not in log
    assert_no_secrets(log, api_key, cp.bootstrap_token)


@pytest.mark.slow
def test_daemon_trusting_an_unrelated_ca_sends_nothing_and_says_why(
    cp: ControlPlane, tls: LoopbackTls, fr: FakeRoot, tmp_path: Path, agents: list[Agent]
) -> None:
    state = tmp_path / "state"
    host_id, api_key = enroll_over_tls(cp, tls, state)
    requests_after_enrolment = len(cp.requests)
    unrelated = write_unrelated_ca(tmp_path / "other")
    # One attempt per call: the refusal is the last error at once, not after the retries.
    config = https_agent_config(tmp_path / "agent.toml", state, cp.url, unrelated, max_attempts=1)
    agent = Agent(config, fr.root).start()
    agents.append(agent)
    wait_for(lambda: CERT_REFUSED in agent.text(), what="a certificate verification error in the log")
    wait_for(
        lambda: CERT_REFUSED in (agent_status(config)[0].get("last_error") or ""),
        what="the refusal as status's last error",
    )
    time.sleep(HEARTBEAT_PERIODS_WAITED)
    assert agent.proc is not None and agent.proc.poll() is None, "the agent gave up instead of retrying"
    assert cp.inventory(host_id) is None
    assert len(cp.requests) == requests_after_enrolment, "a request got through an unverified connection"
    status, status_text = agent_status(config)
    assert status["running"] is True and status["mode"] == "enrolled" and status["host_id"] == host_id
    assert status["last_report_at"] is None and status["last_heartbeat_at"] is None
    log = agent.text()
    assert "retry" not in log  # server.max_attempts = 1 is honoured
    assert_no_secrets(log, api_key, cp.bootstrap_token)
    assert_no_secrets(status_text, api_key, cp.bootstrap_token)
    assert agent.stop() == 0
    assert "Traceback" not in agent.text()  # jobs cut short by the stop end quietly
