"""The reference control plane over real HTTP on loopback, driven with httpx directly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tests.controlplane import ControlPlane

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cp() -> Iterator[ControlPlane]:
    with ControlPlane.start() as server:
        yield server


@pytest.fixture
def client(cp: ControlPlane) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cp.url, timeout=5) as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def enroll(client: httpx.Client, cp: ControlPlane, machine_id: str = "m-1", hostname: str = "web-01") -> Any:
    body = {"machine_id": machine_id, "hostname": hostname, "os": {"id": "debian", "version_id": "12"}}
    r = client.post("/v1/agents/enroll", json=body, headers=bearer(cp.bootstrap_token))
    assert r.status_code == 201, r.text
    return r.json()


def tokens(client: httpx.Client, api_key: str) -> Any:
    r = client.post("/v1/auth/token", json={"api_key": api_key})
    assert r.status_code == 200, r.text
    return r.json()


def agent(
    client: httpx.Client, cp: ControlPlane, machine_id: str = "m-1", hostname: str = "web-01"
) -> tuple[str, str]:
    """Enroll a host; returns (host_id, access token)."""
    e = enroll(client, cp, machine_id, hostname)
    return e["host_id"], tokens(client, e["api_key"])["access_token"]


def admin(client: httpx.Client, cp: ControlPlane) -> dict[str, str]:
    return bearer(tokens(client, cp.admin_api_key)["access_token"])


def event(n: int, **over: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "seq": n,
        "at": "2026-11-26T23:31:08Z",
        "type": "key_added",
        "user": "deploy",
        "path": "/home/deploy/.ssh/authorized_keys",
        "fingerprint": "SHA256:x",
        "key": None,
        "detail": {},
        **over,
    }


def assert_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    details: dict[str, Any] = body["error"]["details"]
    return details


# -- enrollment and authentication ------------------------------------------------------------------


def test_enroll_again_keeps_host_id_and_revokes_old_key(client: httpx.Client, cp: ControlPlane) -> None:
    first = enroll(client, cp)
    old_access = tokens(client, first["api_key"])["access_token"]
    second = enroll(client, cp)
    assert second["host_id"] == first["host_id"] and second["host_id"].startswith("hst_")
    assert second["api_key"] != first["api_key"] and second["api_key"].startswith("sk_agent_")
    assert_error(client.post("/v1/auth/token", json={"api_key": first["api_key"]}), 401, "AUTH_INVALID")
    # Tokens obtained with the old key die with it.
    hb = client.post(
        f"/v1/hosts/{first['host_id']}/heartbeat", json={"status": "ok"}, headers=bearer(old_access)
    )
    assert_error(hb, 401, "AUTH_INVALID")
    assert tokens(client, second["api_key"])["token_type"] == "Bearer"
    assert enroll(client, cp, machine_id="m-2")["host_id"] != first["host_id"]


def test_enroll_needs_the_bootstrap_token(client: httpx.Client, cp: ControlPlane) -> None:
    body = {"machine_id": "m-1", "hostname": "web-01"}
    assert_error(client.post("/v1/agents/enroll", json=body), 401, "AUTH_INVALID")
    assert_error(client.post("/v1/agents/enroll", json=body, headers=bearer("bt_wrong")), 401, "AUTH_INVALID")
    r = client.post("/v1/agents/enroll", json={"hostname": "x"}, headers=bearer(cp.bootstrap_token))
    assert assert_error(r, 422, "VALIDATION_ERROR")["field"] == "machine_id"


def test_token_claims_lifetimes_and_refresh_rotation(client: httpx.Client, cp: ControlPlane) -> None:
    e = enroll(client, cp)
    pair = tokens(client, e["api_key"])
    assert pair["expires_in"] == 900 and pair["refresh_expires_in"] == 604800
    claims = jwt.decode(pair["access_token"], options={"verify_signature": False})
    assert (
        claims["sub"] == e["host_id"] and claims["typ"] == "access" and claims["exp"] - claims["iat"] == 900
    )
    assert claims["jti"]
    renewed = client.post("/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert renewed.status_code == 200
    assert renewed.json()["refresh_token"] != pair["refresh_token"]
    again = client.post("/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert assert_error(again, 401, "AUTH_INVALID")["reason"] == "token_rotated"
    # An access token is not a refresh token, and the other way round.
    wrong = client.post("/v1/auth/refresh", json={"refresh_token": pair["access_token"]})
    assert_error(wrong, 401, "AUTH_INVALID")
    hb = client.post(
        f"/v1/hosts/{e['host_id']}/heartbeat", json={}, headers=bearer(renewed.json()["refresh_token"])
    )
    assert_error(hb, 401, "AUTH_INVALID")


def test_access_token_expires_after_its_ttl() -> None:
    with ControlPlane.start(access_ttl=2, refresh_ttl=3) as cp, httpx.Client(base_url=cp.url) as client:
        host_id, access = agent(client, cp)
        exp = jwt.decode(access, options={"verify_signature": False})["exp"]
        assert client.get(f"/v1/hosts/{host_id}/policy", headers=bearer(access)).status_code == 200
        time.sleep(max(0.0, exp - time.time()) + 0.05)
        r = client.get(f"/v1/hosts/{host_id}/policy", headers=bearer(access))
        assert assert_error(r, 401, "AUTH_INVALID")["reason"] == "token_expired"


def test_expire_helpers_and_revoked_api_key(client: httpx.Client, cp: ControlPlane) -> None:
    e = enroll(client, cp)
    pair = tokens(client, e["api_key"])
    path = f"/v1/hosts/{e['host_id']}/policy"
    cp.expire_access_tokens()
    assert assert_error(client.get(path, headers=bearer(pair["access_token"])), 401, "AUTH_INVALID")[
        "reason"
    ] == ("token_expired")
    renewed = client.post("/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}).json()
    assert client.get(path, headers=bearer(renewed["access_token"])).status_code == 200
    cp.expire_refresh_tokens()
    assert_error(
        client.post("/v1/auth/refresh", json={"refresh_token": renewed["refresh_token"]}), 401, "AUTH_INVALID"
    )
    fresh = tokens(client, e["api_key"])
    cp.revoke_api_key(e["host_id"])
    assert_error(client.get(path, headers=bearer(fresh["access_token"])), 401, "AUTH_INVALID")
    assert_error(client.post("/v1/auth/token", json={"api_key": e["api_key"]}), 401, "AUTH_INVALID")


# -- rate limits and idempotency --------------------------------------------------------------------


def test_rate_limit_answers_429_with_retry_after() -> None:
    with ControlPlane.start(limits={"write": 3, "read": 2}) as cp, httpx.Client(base_url=cp.url) as client:
        e = enroll(client, cp)  # the bootstrap subject's budget, not the host's
        access = tokens(client, e["api_key"])["access_token"]  # auth calls count as write: 1 of 3
        hb = f"/v1/hosts/{e['host_id']}/heartbeat"
        first = client.post(hb, json={}, headers=bearer(access))
        assert first.headers["X-RateLimit-Limit"] == "3" and first.headers["X-RateLimit-Remaining"] == "1"
        assert int(first.headers["X-RateLimit-Reset"]) > 0
        assert client.post(hb, json={}, headers=bearer(access)).status_code == 200
        limited = client.post(hb, json={}, headers=bearer(access))
        details = assert_error(limited, 429, "RATE_LIMITED")
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        assert details["retry_after"] == int(limited.headers["Retry-After"])
        assert limited.headers["X-RateLimit-Remaining"] == "0"
        # Other classes and other keys keep their own budgets.
        assert client.get(f"/v1/hosts/{e['host_id']}/policy", headers=bearer(access)).status_code == 200
        other = enroll(client, cp, machine_id="m-2", hostname="web-02")
        assert client.post("/v1/auth/token", json={"api_key": other["api_key"]}).status_code == 200


def test_scan_class_has_its_own_limit() -> None:
    with ControlPlane.start(limits={"scan": 1}) as cp, httpx.Client(base_url=cp.url) as client:
        enroll(client, cp)
        headers = admin(client, cp)
        assert client.post("/v1/scans", json={"hosts": ["web-01"]}, headers=headers).status_code == 201
        assert_error(
            client.post("/v1/scans", json={"hosts": ["web-01"]}, headers=headers), 429, "RATE_LIMITED"
        )
        assert client.get("/v1/hosts", headers=headers).status_code == 200


def test_idempotency_key_replays_the_first_answer(client: httpx.Client, cp: ControlPlane) -> None:
    host_id, access = agent(client, cp)
    key = str(uuid.uuid4())
    batch = {"events": [event(1), event(2)]}
    headers = {**bearer(access), "Idempotency-Key": key}
    first = client.post(f"/v1/hosts/{host_id}/events", json=batch, headers=headers)
    replay = client.post(f"/v1/hosts/{host_id}/events", json=batch, headers=headers)
    assert first.json() == replay.json() == {"accepted": 2, "duplicates": 0}
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert len(cp.events(host_id)) == 2 and cp.duplicate_count(host_id) == 0  # not applied twice
    other = client.post(f"/v1/hosts/{host_id}/events", json={"events": [event(3)]}, headers=headers)
    assert assert_error(other, 422, "VALIDATION_ERROR")["reason"] == "idempotency_key_reuse"


def test_retried_refresh_with_same_key_replays_instead_of_failing(
    client: httpx.Client, cp: ControlPlane
) -> None:
    pair = tokens(client, enroll(client, cp)["api_key"])
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    first = client.post("/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}, headers=headers)
    retry = client.post("/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}, headers=headers)
    assert first.status_code == retry.status_code == 200 and first.json() == retry.json()


# -- reporting --------------------------------------------------------------------------------------


def test_heartbeat_inventory_and_duplicate_events(client: httpx.Client, cp: ControlPlane) -> None:
    host_id, access = agent(client, cp)
    hb = client.post(
        f"/v1/hosts/{host_id}/heartbeat", json={"status": "ok", "keys": 1}, headers=bearer(access)
    )
    assert hb.json() == {"poll_interval": 60, "policy_version": 1, "pending_instructions": 0}
    inventory = {
        "snapshot_id": "s",
        "generation": 1,
        "host_id": host_id,
        "keys": [{"user": "deploy"}],
        "errors": [],
    }
    put = client.put(f"/v1/hosts/{host_id}/inventory", json=inventory, headers=bearer(access))
    assert put.json() == {"accepted": True} and cp.inventory(host_id) == inventory
    bad_inventory = client.put(f"/v1/hosts/{host_id}/inventory", json={"keys": 3}, headers=bearer(access))
    assert_error(bad_inventory, 422, "VALIDATION_ERROR")
    e1, e2, e3 = event(1), event(2), event(3)
    path = f"/v1/hosts/{host_id}/events"
    assert client.post(path, json={"events": [e1, e2]}, headers=bearer(access)).json() == {
        "accepted": 2,
        "duplicates": 0,
    }
    assert client.post(path, json={"events": [e2, e3, e3]}, headers=bearer(access)).json() == {
        "accepted": 1,
        "duplicates": 2,
    }
    assert [e["id"] for e in cp.events(host_id)] == [e1["id"], e2["id"], e3["id"]]
    assert cp.duplicate_count(host_id) == 2


def test_event_batches_are_validated(client: httpx.Client, cp: ControlPlane) -> None:
    host_id, access = agent(client, cp)
    path = f"/v1/hosts/{host_id}/events"
    too_many = client.post(path, json={"events": [event(i) for i in range(501)]}, headers=bearer(access))
    assert assert_error(too_many, 422, "VALIDATION_ERROR") == {"max": 500, "count": 501}
    assert (
        client.post(path, json={"events": [event(i) for i in range(500)]}, headers=bearer(access)).status_code
        == 200
    )
    bad_type = client.post(path, json={"events": [event(1), event(2, type="nope")]}, headers=bearer(access))
    assert assert_error(bad_type, 422, "VALIDATION_ERROR")["index"] == 1
    poisoned = event(3, user="poison")
    cp.set_event_validator(lambda ev: "poisoned user" if ev.get("user") == "poison" else None)
    r = client.post(path, json={"events": [event(4), event(5), poisoned]}, headers=bearer(access))
    details = assert_error(r, 422, "VALIDATION_ERROR")
    assert details["index"] == 2 and details["errors"] == [{"index": 2, "reason": "poisoned user"}]
    assert len(cp.events(host_id)) == 500  # a rejected batch applies nothing
    cp.set_event_validator(None)
    assert client.post(path, json={"events": [poisoned]}, headers=bearer(access)).json()["accepted"] == 1


# -- instructions -----------------------------------------------------------------------------------


def verify_instruction(cp: ControlPlane, jws: str, host_id: str) -> dict[str, Any]:
    public = serialization.load_ssh_public_key(cp.signing_public_key_openssh.encode())
    assert isinstance(public, Ed25519PublicKey)
    claims: dict[str, Any] = jwt.decode(
        jws, public, algorithms=["EdDSA"], audience=host_id, options={"require": ["exp", "iat", "jti", "aud"]}
    )
    # The PEM form is the same key.
    assert jwt.decode(jws, cp.signing_public_key_pem, algorithms=["EdDSA"], audience=host_id) == claims
    header = jwt.get_unverified_header(jws)
    assert header["alg"] == "EdDSA" and header["kid"] == cp.signing_kid
    return claims


def test_scan_instruction_is_signed_and_result_completes_it(client: httpx.Client, cp: ControlPlane) -> None:
    host_id, access = agent(client, cp)
    enroll(client, cp, machine_id="m-2", hostname="web-02")
    adm = admin(client, cp)
    started = client.post("/v1/scans", json={"hosts": ["web-01", host_id]}, headers=adm)
    assert started.status_code == 201
    scan_ids = [s["scan_id"] for s in started.json()["scans"]]
    got = client.get(f"/v1/hosts/{host_id}/instructions", headers=bearer(access)).json()
    assert got["poll_interval"] == 60 and len(got["instructions"]) == 2
    claims = [verify_instruction(cp, j, host_id) for j in got["instructions"]]
    assert [c["body"]["scan_id"] for c in claims] == scan_ids  # oldest first
    assert all(
        c["kind"] == "scan" and c["jti"].startswith("ins_") and c["exp"] - c["iat"] == 3600 for c in claims
    )
    inventory = {
        "host_id": host_id,
        "keys": [{"user": "root", "type": "ssh-ed25519", "fingerprint": "SHA256:a"}],
    }
    assert (
        client.put(f"/v1/scans/{scan_ids[0]}/result", json=inventory, headers=bearer(access)).status_code
        == 200
    )
    assert client.get(f"/v1/scans/{scan_ids[0]}", headers=adm).json()["status"] == "completed"
    result: dict[str, Any] = {
        "status": "applied",
        "at": "2026-11-26T23:31:08Z",
        "error": None,
        "fingerprints_after": [],
    }
    done = client.post(f"/v1/instructions/{claims[0]['jti']}/result", json=result, headers=bearer(access))
    assert done.status_code == 200
    remaining = client.get(f"/v1/hosts/{host_id}/instructions", headers=bearer(access)).json()["instructions"]
    assert [verify_instruction(cp, j, host_id)["jti"] for j in remaining] == [claims[1]["jti"]]
    assert cp.instruction_results() == [
        {"jti": claims[0]["jti"], "host_id": host_id, "kind": "scan", "status": "applied", "result": result}
    ]
    unknown = client.post("/v1/instructions/ins_nope/result", json=result, headers=bearer(access))
    assert_error(unknown, 404, "NOT_FOUND")
    bad = client.post(
        f"/v1/instructions/{claims[1]['jti']}/result", json={"status": "done"}, headers=bearer(access)
    )
    assert_error(bad, 422, "VALIDATION_ERROR")


def test_rotation_status_follows_its_instruction_result(client: httpx.Client, cp: ControlPlane) -> None:
    host_id, access = agent(client, cp)
    adm = admin(client, cp)
    body = {"host": "web-01", "user": "deploy", "old_fingerprint": "SHA256:old", "algorithm": "ed25519"}
    created = client.post("/v1/rotations", json=body, headers=adm)
    assert created.status_code == 201
    rotation = created.json()
    assert rotation["status"] == "pending" and rotation["public_key"].startswith("ssh-ed25519 ")
    private = serialization.load_ssh_private_key(rotation["private_key"].encode(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    (jws,) = client.get(f"/v1/hosts/{host_id}/instructions", headers=bearer(access)).json()["instructions"]
    claims = verify_instruction(cp, jws, host_id)
    assert claims["kind"] == "rotation"
    assert claims["body"] == {
        "rotation_id": rotation["rotation_id"],
        "user": "deploy",
        "action": "replace",
        "old_fingerprint": "SHA256:old",
        "new_key": rotation["public_key"],
    }
    result = {
        "status": "rejected",
        "at": "2026-11-26T23:31:08Z",
        "error": {"code": "VALIDATION_ERROR", "message": "policy"},
        "fingerprints_after": [],
    }
    client.post(f"/v1/instructions/{claims['jti']}/result", json=result, headers=bearer(access))
    status = client.get(f"/v1/rotations/{rotation['rotation_id']}", headers=adm).json()
    assert status["status"] == "rejected" and "private_key" not in status
    missing_key = client.post("/v1/rotations", json={**body, "algorithm": "rsa"}, headers=adm)
    assert_error(missing_key, 422, "VALIDATION_ERROR")
    remove = client.post(
        "/v1/rotations",
        json={"host": host_id, "user": "deploy", "old_fingerprint": "SHA256:old", "action": "remove"},
        headers=adm,
    )
    assert remove.status_code == 201 and "private_key" not in remove.json()


def test_revocations_and_cas_on_many_hosts_follow_their_results(
    client: httpx.Client, cp: ControlPlane
) -> None:
    hosts = [agent(client, cp, f"m-{n}", f"web-0{n}") for n in (1, 2)]
    adm = admin(client, cp)
    created = client.post("/v1/revocations", json={"fingerprints": ["SHA256:" + "A" * 43]}, headers=adm)
    assert created.status_code == 201, created.text
    revocation = created.json()
    assert set(revocation["hosts"]) == {h for h, _ in hosts}  # every host by default

    def answer(host_id: str, access: str, kind: str, status: str) -> dict[str, Any]:
        (jws,) = client.get(f"/v1/hosts/{host_id}/instructions", headers=bearer(access)).json()[
            "instructions"
        ]
        claims = verify_instruction(cp, jws, host_id)
        assert claims["kind"] == kind
        result = {"status": status, "at": "2026-11-26T23:31:08Z", "error": None, "fingerprints_after": []}
        assert (
            client.post(
                f"/v1/instructions/{claims['jti']}/result", json=result, headers=bearer(access)
            ).status_code
            == 200
        )
        return dict(claims["body"])

    body = answer(*hosts[0], "revoke_keys", "applied")
    assert body == {"revocation_id": revocation["revocation_id"], "fingerprints": ["SHA256:" + "A" * 43]}
    answer(*hosts[1], "revoke_keys", "failed")
    doc = client.get(f"/v1/revocations/{revocation['revocation_id']}", headers=adm).json()
    assert [doc["hosts"][h]["revoke"]["status"] for h, _ in hosts] == ["applied", "failed"]
    withdrawn = client.post(
        f"/v1/revocations/{revocation['revocation_id']}/withdraw", json={"hosts": ["web-01"]}, headers=adm
    )
    assert withdrawn.status_code == 202
    assert answer(*hosts[0], "unrevoke_keys", "applied") == body
    doc = client.get(f"/v1/revocations/{revocation['revocation_id']}", headers=adm).json()
    assert doc["hosts"][hosts[0][0]]["unrevoke"]["status"] == "applied"

    ca = client.post(
        "/v1/cas",
        json={"hosts": ["web-02"], "public_key": "ssh-ed25519 AAAA", "principals": {"deploy": ["oncall"]}},
        headers=adm,
    ).json()
    assert answer(*hosts[1], "trust_ca", "applied")["principals"] == {"deploy": ["oncall"]}
    assert client.post(f"/v1/cas/{ca['ca_id']}/untrust", json={}, headers=adm).status_code == 202
    assert answer(*hosts[1], "untrust_ca", "applied") == {"ca_id": ca["ca_id"]}
    doc = client.get(f"/v1/cas/{ca['ca_id']}", headers=adm).json()
    assert doc["hosts"][hosts[1][0]]["untrust"]["status"] == "applied"
    empty = client.post("/v1/revocations", json={"hosts": ["web-01"]}, headers=adm)
    assert_error(empty, 422, "VALIDATION_ERROR")


def test_forged_instructions_fail_verification(client: httpx.Client, cp: ControlPlane) -> None:
    host_id, _ = agent(client, cp)
    public = cp.signing_public_key_pem
    good = cp.issue_instruction(host_id, "scan", {"scan_id": "scn_1"}, exp_s=60)
    assert verify_instruction(cp, good, host_id)["body"] == {"scan_id": "scn_1"}
    forgeries = [
        cp.issue_instruction(host_id, "scan", {}, sign=False),
        cp.issue_instruction(host_id, "scan", {}, alg="none"),
        cp.issue_instruction(host_id, "scan", {}, alg="HS256"),
        cp.issue_instruction(host_id, "scan", {}, key=Ed25519PrivateKey.generate()),
    ]
    for jws in forgeries:
        with pytest.raises(jwt.InvalidTokenError):
            jwt.decode(jws, public, algorithms=["EdDSA"], audience=host_id)
    other_aud = cp.issue_instruction(host_id, "scan", {}, aud="hst_other")
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(other_aud, public, algorithms=["EdDSA"], audience=host_id)
    expired = cp.issue_instruction(host_id, "scan", {}, exp_s=-10)
    with pytest.raises(jwt.ExpiredSignatureError):
        jwt.decode(expired, public, algorithms=["EdDSA"], audience=host_id)
    with pytest.raises(KeyError):
        cp.issue_instruction("hst_unknown", "scan", {})


# -- policy -----------------------------------------------------------------------------------------


def test_policy_etag_and_304(client: httpx.Client, cp: ControlPlane) -> None:
    host_id, access = agent(client, cp)
    path = f"/v1/hosts/{host_id}/policy"
    first = client.get(path, headers=bearer(access))
    policy = first.json()
    assert (
        policy["version"] == 1 and policy["min_rsa_bits"] == 2048 and policy["ephemeral_max_ttl_s"] == 86400
    )
    etag = first.headers["ETag"]
    unchanged = client.get(path, headers={**bearer(access), "If-None-Match": etag})
    assert unchanged.status_code == 304 and unchanged.content == b"" and unchanged.headers["ETag"] == etag
    adm = admin(client, cp)
    put = client.put(f"/v1/policies/{host_id}", json={"min_rsa_bits": 3072}, headers=adm)
    assert put.status_code == 200 and put.json()["version"] == 2
    changed = client.get(path, headers={**bearer(access), "If-None-Match": etag})
    assert (
        changed.status_code == 200
        and changed.json()["min_rsa_bits"] == 3072
        and changed.headers["ETag"] != etag
    )
    hb = client.post(f"/v1/hosts/{host_id}/heartbeat", json={}, headers=bearer(access)).json()
    assert hb["policy_version"] == 2
    bad = client.put("/v1/policies/default", json={"min_rsa_bits": "big", "colour": 1}, headers=adm)
    assert_error(bad, 422, "VALIDATION_ERROR")
    assert_error(client.put("/v1/policies/default", json={}, headers=bearer(access)), 403, "AUTH_FORBIDDEN")


# -- administrator calls ----------------------------------------------------------------------------


def test_hosts_keys_and_ephemeral_grants(client: httpx.Client, cp: ControlPlane) -> None:
    host_id, access = agent(client, cp)
    keys = [
        {"kind": "authorized_key", "user": "deploy", "type": "ssh-ed25519", "fingerprint": "SHA256:a"},
        {"kind": "authorized_key", "user": "root", "type": "ssh-rsa", "fingerprint": "SHA256:b"},
    ]
    client.put(
        f"/v1/hosts/{host_id}/inventory", json={"host_id": host_id, "keys": keys}, headers=bearer(access)
    )
    adm = admin(client, cp)
    (host,) = client.get("/v1/hosts", headers=adm).json()["hosts"]
    assert host["host_id"] == host_id and host["hostname"] == "web-01" and host["keys"] == 2
    assert client.get("/v1/keys", headers=adm).json()["keys"][0]["host_id"] == host_id
    by_user = client.get("/v1/keys", params={"user": "root"}, headers=adm).json()["keys"]
    assert [k["fingerprint"] for k in by_user] == ["SHA256:b"]
    by_alg = client.get("/v1/keys", params={"algorithm": "ed25519", "host": "web-01"}, headers=adm).json()[
        "keys"
    ]
    assert [k["fingerprint"] for k in by_alg] == ["SHA256:a"]
    assert client.get("/v1/keys", params={"fingerprint": "SHA256:zzz"}, headers=adm).json()["keys"] == []
    assert_error(client.get("/v1/keys", params={"host": "nope"}, headers=adm), 404, "NOT_FOUND")

    grant = client.post(
        "/v1/ephemeral",
        json={"host": "web-01", "username": "deploy", "ttl": 300, "reason": "incident"},
        headers=adm,
    )
    assert grant.status_code == 201
    g = grant.json()
    assert g["grant_id"].startswith("eph_") and g["expires_at"].endswith("Z")
    assert isinstance(serialization.load_ssh_private_key(g["private_key"].encode(), None), Ed25519PrivateKey)
    (jws,) = client.get(f"/v1/hosts/{host_id}/instructions", headers=bearer(access)).json()["instructions"]
    claims = verify_instruction(cp, jws, host_id)
    assert claims["kind"] == "ephemeral" and claims["body"]["public_key"] == g["public_key"]
    assert claims["body"]["user"] == "deploy" and claims["body"]["expires_at"] == g["expires_at"]
    too_long = client.post(
        "/v1/ephemeral", json={"host": host_id, "username": "deploy", "ttl": 86401}, headers=adm
    )
    assert_error(too_long, 422, "VALIDATION_ERROR")
    revoke = client.post(f"/v1/ephemeral/{g['grant_id']}/revoke", json={}, headers=adm)
    assert revoke.status_code == 202
    pending = client.get(f"/v1/hosts/{host_id}/instructions", headers=bearer(access)).json()["instructions"]
    last = verify_instruction(cp, pending[-1], host_id)
    assert last["kind"] == "revoke_ephemeral" and last["body"] == {"grant_id": g["grant_id"]}
    applied: dict[str, Any] = {
        "status": "applied",
        "at": "2026-11-26T23:31:08Z",
        "error": None,
        "fingerprints_after": [],
    }
    client.post(f"/v1/instructions/{last['jti']}/result", json=applied, headers=bearer(access))
    assert client.get(f"/v1/ephemeral/{g['grant_id']}", headers=adm).json()["status"] == "revoked"


def test_a_host_key_acts_only_on_its_own_host(client: httpx.Client, cp: ControlPlane) -> None:
    a_id, a_access = agent(client, cp, "m-a", "a")
    b_id, b_access = agent(client, cp, "m-b", "b")
    assert_error(
        client.post(f"/v1/hosts/{b_id}/heartbeat", json={}, headers=bearer(a_access)), 403, "AUTH_FORBIDDEN"
    )
    assert_error(
        client.get(f"/v1/hosts/{b_id}/instructions", headers=bearer(a_access)), 403, "AUTH_FORBIDDEN"
    )
    assert_error(client.get("/v1/hosts", headers=bearer(a_access)), 403, "AUTH_FORBIDDEN")
    jws = cp.issue_instruction(b_id, "scan", {"scan_id": "scn_x"})
    jti = jwt.decode(jws, options={"verify_signature": False})["jti"]
    result: dict[str, Any] = {
        "status": "applied",
        "at": "2026-11-26T23:31:08Z",
        "error": None,
        "fingerprints_after": [],
    }
    assert_error(
        client.post(f"/v1/instructions/{jti}/result", json=result, headers=bearer(a_access)),
        403,
        "AUTH_FORBIDDEN",
    )
    assert (
        client.post(f"/v1/instructions/{jti}/result", json=result, headers=bearer(b_access)).status_code
        == 200
    )
    assert_error(client.get("/v1/hosts/hst_missing/policy", headers=admin(client, cp)), 404, "NOT_FOUND")
    # A forgotten host (key still valid) is NOT_FOUND to its own agent: the cue to re-register.
    cp.forget_host(a_id)
    assert_error(
        client.post(f"/v1/hosts/{a_id}/heartbeat", json={}, headers=bearer(a_access)), 404, "NOT_FOUND"
    )
    assert_error(client.get("/v1/nowhere", headers=bearer(b_access)), 404, "NOT_FOUND")


# -- fault injection and the request log ------------------------------------------------------------


def test_fail_next_answers_the_chosen_error_then_recovers(client: httpx.Client, cp: ControlPlane) -> None:
    host_id, access = agent(client, cp)
    hb = f"/v1/hosts/{host_id}/heartbeat"
    cp.faults.fail_next(2, status=429, code="RATE_LIMITED", path_prefix=hb, retry_after=7)
    policy = client.get(f"/v1/hosts/{host_id}/policy", headers=bearer(access))
    assert policy.status_code == 200  # other paths are untouched
    for _ in range(2):
        r = client.post(hb, json={}, headers=bearer(access))
        assert assert_error(r, 429, "RATE_LIMITED")["retry_after"] == 7 and r.headers["Retry-After"] == "7"
    assert client.post(hb, json={}, headers=bearer(access)).status_code == 200
    cp.faults.fail_next(1)
    assert_error(client.get(f"/v1/hosts/{host_id}/policy", headers=bearer(access)), 503, "UNAVAILABLE")
    assert client.get(f"/v1/hosts/{host_id}/policy", headers=bearer(access)).status_code == 200


def test_delay_makes_clients_time_out_and_idempotency_saves_the_retry(
    client: httpx.Client, cp: ControlPlane
) -> None:
    host_id, access = agent(client, cp)
    path = f"/v1/hosts/{host_id}/events"
    headers = {**bearer(access), "Idempotency-Key": str(uuid.uuid4())}
    batch = {"events": [event(1)]}
    cp.faults.delay(0.5, path_prefix=path)
    with pytest.raises(httpx.ReadTimeout):
        client.post(path, json=batch, headers=headers, timeout=0.1)
    cp.faults.delay(0, path_prefix=path)
    deadline = time.monotonic() + 5
    while not cp.events(host_id) and time.monotonic() < deadline:  # applied after the client gave up
        time.sleep(0.02)
    retry = client.post(path, json=batch, headers=headers)
    assert retry.json() == {"accepted": 1, "duplicates": 0} and retry.headers["Idempotent-Replayed"] == "true"
    assert len(cp.events(host_id)) == 1 and cp.duplicate_count(host_id) == 0


def test_drop_next_closes_the_connection_without_an_answer(client: httpx.Client, cp: ControlPlane) -> None:
    host_id, access = agent(client, cp)
    path = f"/v1/hosts/{host_id}/events"
    cp.faults.drop_next(1, path_prefix=path)
    with pytest.raises(httpx.TransportError):
        client.post(path, json={"events": [event(1)]}, headers=bearer(access))
    assert cp.events(host_id) == []  # dropped before processing
    cp.faults.drop_next(1, path_prefix=path, after_processing=True)
    with pytest.raises(httpx.TransportError):
        client.post(path, json={"events": [event(2)]}, headers=bearer(access))
    assert [e["seq"] for e in cp.events(host_id)] == [2]  # applied, answer lost
    assert client.post(path, json={"events": [event(3)]}, headers=bearer(access)).status_code == 200
    statuses = [r.status for r in cp.requests if r.path == path]
    assert statuses == [0, 0, 200]


def test_request_log_hides_credentials(client: httpx.Client, cp: ControlPlane) -> None:
    host_id, access = agent(client, cp)
    client.get(f"/v1/hosts/{host_id}/policy", headers={**bearer(access), "User-Agent": "sshklm-agent/0.1.0"})
    method, path, status, at, headers = cp.requests[-1]
    assert (method, path, status) == ("GET", f"/v1/hosts/{host_id}/policy", 200)
    assert at <= time.monotonic() and headers["user-agent"] == "sshklm-agent/0.1.0"
    assert headers["authorization"] == "Bearer <redacted>"
    assert all(access not in str(r) for r in cp.requests)


def test_test_endpoints_drive_a_server_over_http(client: httpx.Client, cp: ControlPlane) -> None:
    host_id, access = agent(client, cp)
    key = bearer(cp.admin_api_key)
    assert_error(
        client.post("/_test/faults/fail", json={"n": 1}, headers=bearer(access)), 403, "AUTH_FORBIDDEN"
    )
    assert_error(client.post("/_test/faults/fail", json={"n": 1}), 401, "AUTH_INVALID")
    assert client.post("/_test/faults/fail", json={"n": 1, "status": 500}, headers=key).status_code == 200
    assert_error(client.get(f"/v1/hosts/{host_id}/policy", headers=bearer(access)), 500, "INTERNAL_ERROR")
    client.post("/_test/event-validator", json={"reject_types": ["key_used"]}, headers=key)
    r = client.post(
        f"/v1/hosts/{host_id}/events", json={"events": [event(1, type="key_used")]}, headers=bearer(access)
    )
    assert assert_error(r, 422, "VALIDATION_ERROR")["index"] == 0
    issued = client.post(
        "/_test/instructions",
        json={"host_id": host_id, "kind": "scan", "body": {"scan_id": "s"}},
        headers=key,
    )
    assert verify_instruction(cp, issued.json()["jws"], host_id)["kind"] == "scan"
    client.post("/_test/tokens/expire-access", headers=key)
    assert_error(client.get(f"/v1/hosts/{host_id}/policy", headers=bearer(access)), 401, "AUTH_INVALID")
    logged = client.get("/_test/requests", headers=key).json()["requests"]
    assert [r["status"] for r in logged[-2:]] == [422, 401]
    events = client.get(f"/_test/hosts/{host_id}/events", headers=key).json()
    assert events == {"events": [], "duplicates": 0}


# -- persistence and the command line ---------------------------------------------------------------


def test_file_database_survives_a_restart(tmp_path: Path) -> None:
    db = str(tmp_path / "cp.db")
    with ControlPlane.start(db=db) as cp, httpx.Client(base_url=cp.url) as client:
        e = enroll(client, cp)
        old_admin = cp.admin_api_key
    with ControlPlane.start(db=db) as cp, httpx.Client(base_url=cp.url) as client:
        access = tokens(client, e["api_key"])["access_token"]
        assert (
            client.post(f"/v1/hosts/{e['host_id']}/heartbeat", json={}, headers=bearer(access)).status_code
            == 200
        )
        assert_error(client.post("/v1/auth/token", json={"api_key": old_admin}), 401, "AUTH_INVALID")


def test_command_line_prints_banner_and_stops_on_sigterm(tmp_path: Path) -> None:
    key_file = tmp_path / "signing.pem"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.controlplane",
            "--port",
            "0",
            "--db",
            str(tmp_path / "cp.db"),
            "--signing-key",
            str(key_file),
            "--rate-write",
            "5",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = dict(proc.stdout.readline().rstrip("\n").split(": ", 1) for _ in range(5))
        pem = "".join(proc.stdout.readline() for _ in range(3))
        assert banner["url"].startswith("http://127.0.0.1:") and pem.startswith("-----BEGIN PUBLIC KEY-----")
        assert banner["signing_public_key"].startswith("ssh-ed25519 AAAA")
        assert os.stat(key_file).st_mode & 0o777 == 0o600
        with httpx.Client(base_url=banner["url"]) as client:
            r = client.post(
                "/v1/agents/enroll",
                json={"machine_id": "m", "hostname": "h"},
                headers=bearer(banner["bootstrap_token"]),
            )
            assert r.status_code == 201 and r.headers["X-RateLimit-Limit"] == "5"
            assert client.post("/v1/auth/token", json={"api_key": banner["admin_api_key"]}).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        _, stderr = proc.communicate()
        assert banner["bootstrap_token"] not in stderr and banner["admin_api_key"] not in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
