"""StrictModes, line effectiveness, risk and policy: pure evaluation over values."""

from __future__ import annotations

import stat
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo

import pytest

from agent.inventory.evaluate import (
    LineFacts,
    Policy,
    RiskInputs,
    SshdFacts,
    line_problem,
    risk_of,
    strict_modes_problem,
)
from agent.ssh.authorized_keys import expiry_time_utc

NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
UID = 1000


@dataclass(frozen=True)
class St:
    path: str
    uid: int
    gid: int
    mode: int


def reg(mode: int, uid: int = UID, gid: int = UID) -> St:
    return St("/home/u/.ssh/authorized_keys", uid, gid, stat.S_IFREG | mode)


def chain(
    home_mode: int = 0o755, ssh_mode: int = 0o700, home_uid: int = UID, root_mode: int = 0o755
) -> list[St]:
    return [
        St("/", 0, 0, stat.S_IFDIR | root_mode),
        St("/home", 0, 0, stat.S_IFDIR | 0o755),
        St("/home/u", home_uid, UID, stat.S_IFDIR | home_mode),
        St("/home/u/.ssh", UID, UID, stat.S_IFDIR | ssh_mode),
    ]


@pytest.mark.parametrize(
    ("file", "dirs", "private", "reason"),
    [
        (reg(0o600), chain(), (), None),
        (reg(0o644), chain(), (), None),
        (reg(0o600, uid=0), chain(), (), None),
        (reg(0o600, uid=1001), chain(), (), "StrictModes: bad ownership of file"),
        (reg(0o666), chain(), (), "StrictModes: bad modes on file"),
        (reg(0o620), chain(), (), "StrictModes: bad modes on file"),
        # Debian: group write tolerated for the user's private group.
        (reg(0o620), chain(), (UID,), None),
        (reg(0o600), chain(ssh_mode=0o777), (), "StrictModes: bad modes on directory /home/u/.ssh"),
        (reg(0o600), chain(home_mode=0o775), (), "StrictModes: bad modes on directory /home/u"),
        (reg(0o600), chain(home_mode=0o775), (UID,), None),
        (reg(0o600), chain(home_uid=1001), (), "StrictModes: bad ownership of directory /home/u"),
        # Directories above the home are not checked when the file is under the home.
        (reg(0o600), chain(root_mode=0o777), (), None),
        (St("/x", UID, UID, stat.S_IFIFO | 0o600), chain(), (), "StrictModes: not a regular file"),
    ],
)
def test_strict_modes(file: St, dirs: list[St], private: tuple[int, ...], reason: str | None) -> None:
    assert strict_modes_problem(file, dirs, uid=UID, home="/home/u", private_gids=private) == reason


def test_strict_modes_walks_to_root_for_files_outside_home() -> None:
    file = St("/etc/ssh/keys/u", 0, 0, stat.S_IFREG | 0o644)
    dirs = [
        St("/", 0, 0, stat.S_IFDIR | 0o777),
        St("/etc", 0, 0, stat.S_IFDIR | 0o755),
        St("/etc/ssh", 0, 0, stat.S_IFDIR | 0o755),
        St("/etc/ssh/keys", 0, 0, stat.S_IFDIR | 0o755),
    ]
    assert (
        strict_modes_problem(file, dirs, uid=UID, home="/home/u") == "StrictModes: bad modes on directory /"
    )


SSHD = SshdFacts(pubkey_authentication=True, permit_root_login="prohibit-password", strict_modes=True)


def facts(**kw: object) -> LineFacts:
    base: dict[str, object] = dict(
        options_error=None,
        expiry_time=None,
        has_principals=False,
        cert_authority=False,
        has_command=False,
        certificate_valid_before=None,
    )
    base.update(kw)
    return LineFacts(**base)  # type: ignore[arg-type]


def problem(f: LineFacts, *, sshd: SshdFacts = SSHD, is_root: bool = False, tz: tzinfo = UTC) -> str | None:
    return line_problem(f, sshd=sshd, is_root=is_root, now=NOW, local_tz=tz, parse_expiry=expiry_time_utc)


def test_effective_line() -> None:
    assert problem(facts()) is None


def test_bad_options() -> None:
    assert problem(facts(options_error="unknown option")) == "bad key options: unknown option"


def test_principals_without_cert_authority() -> None:
    assert problem(facts(has_principals=True)) == "principals= without cert-authority"
    assert problem(facts(has_principals=True, cert_authority=True)) is None


@pytest.mark.parametrize(
    ("value", "expired"),
    [
        ("20261127115959Z", True),
        ("20261127120001Z", False),
        ("20261126", True),
        ("202611271300", False),
        ("20270101", False),
    ],
)
def test_expiry_time(value: str, expired: bool) -> None:
    assert (problem(facts(expiry_time=value)) == "expired (expiry-time)") is expired


def test_expiry_time_without_z_is_local_time() -> None:
    plus_two = timezone_offset(hours=2)
    # 13:00 local at UTC+2 is 11:00 UTC: already past at 12:00 UTC.
    assert problem(facts(expiry_time="202611271300"), tz=plus_two) == "expired (expiry-time)"
    assert problem(facts(expiry_time="202611271300Z"), tz=plus_two) is None


def timezone_offset(hours: int) -> tzinfo:
    from datetime import timezone

    return timezone(timedelta(hours=hours))


def test_expired_certificate() -> None:
    assert problem(facts(certificate_valid_before=NOW - timedelta(seconds=1))) == "certificate expired"


def test_sshd_settings() -> None:
    off = SshdFacts(pubkey_authentication=False, permit_root_login="yes", strict_modes=True)
    assert problem(facts(), sshd=off) == "PubkeyAuthentication no"
    no_root = SshdFacts(True, "no", True)
    assert problem(facts(), sshd=no_root, is_root=True) == "PermitRootLogin no"
    assert problem(facts(), sshd=no_root, is_root=False) is None
    forced = SshdFacts(True, "forced-commands-only", True)
    assert (
        problem(facts(), sshd=forced, is_root=True) == "PermitRootLogin forced-commands-only without command="
    )
    assert problem(facts(has_command=True), sshd=forced, is_root=True) is None


def inputs(**kw: object) -> RiskInputs:
    base: dict[str, object] = dict(
        kind="authorized_key",
        base_type="ssh-ed25519",
        bits=256,
        age=None,
        encrypted=None,
        grants_root=False,
        orphaned=False,
        shared=False,
        managed=False,
        has_from=False,
    )
    base.update(kw)
    return RiskInputs(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "factor"),
    [
        ({"age": timedelta(days=400)}, "key_age_gt_365d"),
        ({"base_type": "ssh-dss", "bits": 1024}, "algorithm_dsa"),
        ({"base_type": "ssh-rsa", "bits": 1024}, "rsa_lt_2048"),
        ({"kind": "identity_key", "encrypted": False}, "no_passphrase"),
        ({"grants_root": True}, "root_key"),
        ({"orphaned": True}, "orphaned"),
        ({"shared": True}, "shared_key"),
        ({"age": timedelta(days=400)}, "never_rotated"),
    ],
)
def test_risk_factors(kw: dict[str, object], factor: str) -> None:
    risk = risk_of(inputs(**kw), None)
    assert factor in risk.factors and risk.score > 0


def test_no_risk() -> None:
    assert risk_of(inputs(), None).factors == ()
    assert risk_of(inputs(base_type="ssh-rsa", bits=2048), None).score == 0
    assert "never_rotated" not in risk_of(inputs(age=timedelta(days=400), managed=True), None).factors


def test_score_capped() -> None:
    risk = risk_of(
        inputs(
            base_type="ssh-dss",
            bits=1024,
            age=timedelta(days=999),
            grants_root=True,
            orphaned=True,
            shared=True,
        ),
        None,
    )
    assert risk.score == 100


POLICY = Policy(
    version=3,
    min_rsa_bits=3072,
    allowed_types=frozenset({"ssh-ed25519", "ssh-rsa"}),
    max_key_age_days=90,
    require_from_for_root=True,
    ephemeral_max_ttl_s=3600,
)


def test_policy_violations() -> None:
    risk = risk_of(inputs(base_type="ecdsa-sha2-nistp256"), POLICY)
    assert "policy:allowed_types" in risk.factors
    assert "policy:min_rsa_bits" in risk_of(inputs(base_type="ssh-rsa", bits=2048), POLICY).factors
    assert "policy:max_key_age_days" in risk_of(inputs(age=timedelta(days=91)), POLICY).factors
    assert "policy:require_from_for_root" in risk_of(inputs(grants_root=True), POLICY).factors
    assert (
        "policy:require_from_for_root" not in risk_of(inputs(grants_root=True, has_from=True), POLICY).factors
    )
    assert risk_of(inputs(), POLICY).factors == ()
