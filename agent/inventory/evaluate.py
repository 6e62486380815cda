"""Would sshd honour this key today, and how risky is it? Pure functions over values.

StrictModes follows OpenSSH's `auth_secure_path()` (misc.c / auth.c): the file must be a
regular file owned by root or the user with no group/other write bit, and every directory on
its *real* path, from the file's parent up to the home (or up to `/` when the file is not
under the home), must be owned by root or the user with no group/other write bit. Debian's
patch also tolerates group write when the group is the user's private group (only that user
in it); callers say which gids count as private via `private_gids`.
"""

from __future__ import annotations

import stat
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import NamedTuple, Protocol

from agent.inventory.model import Risk


class StatLike(Protocol):
    @property
    def path(self) -> str: ...
    @property
    def uid(self) -> int: ...
    @property
    def gid(self) -> int: ...
    @property
    def mode(self) -> int: ...


def _writable_by_others(info: StatLike, private_gids: Collection[int]) -> bool:
    if info.mode & stat.S_IWOTH:
        return True
    return bool(info.mode & stat.S_IWGRP) and info.gid not in private_gids


def strict_modes_problem(
    file: StatLike,
    chain: Sequence[StatLike],
    *,
    uid: int,
    home: str,
    private_gids: Collection[int] = (),
) -> str | None:
    """The reason sshd's StrictModes would refuse this file, or None.

    `chain` holds the directories of the file's real path from `/` down to its parent.
    """
    if not stat.S_ISREG(file.mode):
        return "StrictModes: not a regular file"
    if file.uid not in (0, uid):
        return "StrictModes: bad ownership of file"
    if _writable_by_others(file, private_gids):
        return "StrictModes: bad modes on file"
    home = home.rstrip("/") or "/"
    for directory in reversed(chain):
        if directory.uid not in (0, uid):
            return f"StrictModes: bad ownership of directory {directory.path}"
        if _writable_by_others(directory, private_gids):
            return f"StrictModes: bad modes on directory {directory.path}"
        if directory.path.rstrip("/") == home.rstrip("/") or directory.path == home:
            break
    return None


@dataclass(frozen=True)
class LineFacts:
    """What evaluation needs to know about one authorized_keys line (no content)."""

    options_error: str | None
    expiry_time: str | None
    has_principals: bool
    cert_authority: bool
    has_command: bool
    certificate_valid_before: datetime | None


@dataclass(frozen=True)
class SshdFacts:
    pubkey_authentication: bool
    permit_root_login: str
    strict_modes: bool


def line_problem(
    facts: LineFacts,
    *,
    sshd: SshdFacts,
    is_root: bool,
    now: datetime,
    local_tz: tzinfo,
    parse_expiry: ExpiryParser,
) -> str | None:
    """Why sshd would skip or refuse this line regardless of file modes, or None."""
    if facts.options_error:
        return f"bad key options: {facts.options_error}"
    if facts.has_principals and not facts.cert_authority:
        return "principals= without cert-authority"
    if facts.expiry_time is not None:
        try:
            expires = parse_expiry(facts.expiry_time, local_tz)
        except ValueError:
            return "bad key options: invalid expiry-time"
        if expires <= now:
            return "expired (expiry-time)"
    if facts.certificate_valid_before is not None and facts.certificate_valid_before <= now:
        return "certificate expired"
    if not sshd.pubkey_authentication:
        return "PubkeyAuthentication no"
    if is_root:
        if sshd.permit_root_login == "no":
            return "PermitRootLogin no"
        if sshd.permit_root_login == "forced-commands-only" and not facts.has_command:
            return "PermitRootLogin forced-commands-only without command="
    return None


class ExpiryParser(Protocol):
    def __call__(self, value: str, local_tz: tzinfo, /) -> datetime: ...


# --- risk -------------------------------------------------------------------------------------

# Weights of the published risk model; the score is their sum, capped at 100.
RISK_WEIGHTS: dict[str, int] = {
    "key_age_gt_365d": 20,
    "algorithm_dsa": 40,
    "rsa_lt_2048": 40,
    "no_passphrase": 25,
    "root_key": 25,
    "orphaned": 30,
    "shared_key": 20,
    "never_rotated": 10,
    # The KRL revokes it, yet it is still in an authorized keys file: sshd refuses it today, but
    # it grants access again the day the KRL stops naming it (a rebuilt host, a lost file).
    "revoked_key_present": 30,
    # The file holding the key was read only up to discovery.max_file_bytes: sshd reads the
    # rest, so another key of this account may be hidden there, unseen.
    "file_partly_read": 20,
}
POLICY_WEIGHT = 15


@dataclass(frozen=True)
class Policy:
    version: int
    min_rsa_bits: int
    allowed_types: frozenset[str]
    max_key_age_days: int
    require_from_for_root: bool
    ephemeral_max_ttl_s: int


class RiskInputs(NamedTuple):
    """What the risk of one key depends on. A NamedTuple, not a dataclass: discovery builds one
    per key (100,000s) and memoises risk_of on it."""

    kind: str
    base_type: str
    bits: int
    age: timedelta | None
    encrypted: bool | None
    grants_root: bool
    orphaned: bool
    shared: bool
    managed: bool
    has_from: bool
    revoked: bool = False
    partly_read: bool = False


def risk_of(inputs: RiskInputs, policy: Policy | None) -> Risk:
    factors: list[str] = []
    too_old = inputs.age is not None and inputs.age > timedelta(days=365)
    if too_old:
        factors.append("key_age_gt_365d")
    if inputs.base_type == "ssh-dss":
        factors.append("algorithm_dsa")
    if inputs.base_type == "ssh-rsa" and inputs.bits < 2048:
        factors.append("rsa_lt_2048")
    if inputs.kind == "identity_key" and inputs.encrypted is False:
        factors.append("no_passphrase")
    if inputs.grants_root and inputs.kind in ("authorized_key", "authorized_principal_ca"):
        factors.append("root_key")
    if inputs.orphaned:
        factors.append("orphaned")
    if inputs.shared:
        factors.append("shared_key")
    if too_old and not inputs.managed:
        factors.append("never_rotated")
    if inputs.revoked and inputs.kind in ("authorized_key", "authorized_principal_ca"):
        factors.append("revoked_key_present")
    if inputs.partly_read:
        factors.append("file_partly_read")
    score = sum(RISK_WEIGHTS[f] for f in factors)
    if policy is not None:
        for violation in policy_violations(inputs, policy):
            factors.append(f"policy:{violation}")
            score += POLICY_WEIGHT
    return Risk(min(score, 100), tuple(factors))


def policy_violations(inputs: RiskInputs, policy: Policy) -> list[str]:
    """Rule names of `policy` that this key breaks (reported as `policy:<rule>`)."""
    if inputs.kind in ("host_key", "trusted_user_ca"):
        rules_apply_to_type = inputs.kind == "trusted_user_ca"
    else:
        rules_apply_to_type = True
    out: list[str] = []
    if rules_apply_to_type and policy.allowed_types and inputs.base_type not in policy.allowed_types:
        out.append("allowed_types")
    if inputs.base_type == "ssh-rsa" and inputs.bits < policy.min_rsa_bits:
        out.append("min_rsa_bits")
    if inputs.age is not None and inputs.age > timedelta(days=policy.max_key_age_days):
        out.append("max_key_age_days")
    if policy.require_from_for_root and inputs.grants_root and not inputs.has_from:
        out.append("require_from_for_root")
    return out
