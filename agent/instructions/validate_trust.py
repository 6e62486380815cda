"""Bodies of the revocation and CA-trust instructions (agent-api.md section 6.2). Pure.

`revoke_keys` / `unrevoke_keys`: `{"revocation_id", "keys": [...], "fingerprints": [...],
"certificates": [{"ca_key", "serials": [...], "key_ids": [...]}]}`, each list optional, at least one
entry in all. Keys and CA keys go through the discovery parser (one grammar): one plain public key
each, no options, no certificate. Fingerprints are `SHA256:<43 base64 characters>`. Serials are
integers 1 .. 2^64-1 (sshd never revokes serial 0: it is the default of a CA that sets none); key
ids are what a KRL spec line can carry unchanged (printable ASCII, no '#', no leading or trailing
blank). The policy does not apply: revoking a weak key is always allowed.

`trust_ca`: `{"ca_id", "public_key", "principals": {"account": ["principal", ...]}}`: the CA key
passes the policy like any key the agent installs; accounts must exist; principals are printable
ASCII without blanks, '#', ',' or quotes (`agent.ssh.principals`). `untrust_ca`: `{"ca_id"}`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from agent.instructions.validate import _FINGERPRINT, _check_policy, _field, _identifier, _user
from agent.instructions.verify import Instruction, Rejected
from agent.inventory.evaluate import Policy
from agent.ssh.authorized_keys import parse_authorized_line
from agent.ssh.keys import PublicKey, key_text
from agent.ssh.krl import U64_MAX, RevocationEntry, key_entry, valid_key_id
from agent.ssh.principals import MAX_PRINCIPAL, valid_principal

REVOCATION_KINDS: Final = ("revoke_keys", "unrevoke_keys")
CA_KINDS: Final = ("trust_ca", "untrust_ca")
TRUST_KINDS: Final = REVOCATION_KINDS + CA_KINDS

MAX_ENTRIES: Final = 10_000  # per instruction (the token's size bounds it too)
MAX_ACCOUNTS: Final = 1_000
MAX_PRINCIPALS_PER_ACCOUNT: Final = 256
MAX_KEY_TEXT: Final = 16 * 1024


@dataclass(frozen=True)
class Revocation:
    revocation_id: str
    action: Literal["revoke", "unrevoke"]
    entries: frozenset[RevocationEntry]
    # The SHA256 fingerprints the instruction names (its keys and fingerprints), in its order.
    fingerprints: tuple[str, ...]
    # Serial and key-id entries name a CA: its key text -> fingerprint (to check the KRL built).
    ca_fingerprints: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class TrustCa:
    ca_id: str
    public_key: str  # "type base64", canonical
    fingerprint: str
    principals: tuple[tuple[str, tuple[str, ...]], ...]  # (account, principals), sorted


@dataclass(frozen=True)
class UntrustCa:
    ca_id: str


TrustBody = Revocation | TrustCa | UntrustCa


def validate_trust(
    instruction: Instruction, *, user_exists: Callable[[str], bool], policy: Policy | None
) -> TrustBody:
    """The body of a revocation or CA-trust instruction, or Rejected (VALIDATION_ERROR / NOT_FOUND)."""
    body = instruction.body
    try:
        if instruction.kind in REVOCATION_KINDS:
            return _revocation(body, "revoke" if instruction.kind == "revoke_keys" else "unrevoke")
        if instruction.kind == "trust_ca":
            return _trust_ca(body, user_exists, policy)
        if instruction.kind == "untrust_ca":
            return UntrustCa(_identifier(body, "ca_id"))
    except Rejected as exc:
        raise Rejected(exc.reason, exc.code, instruction.jti) from None
    raise Rejected("unknown instruction kind", jti=instruction.jti)


def plain_key(text: Any, what: str) -> PublicKey:
    """One plain public key ("type base64 [comment]"), as sshd would read it on a line of its own."""
    if not isinstance(text, str) or not text.strip():
        raise Rejected(f"{what} must be a public key")
    if len(text) > MAX_KEY_TEXT or any(ch in text for ch in "\r\n\x00"):
        raise Rejected(f"{what}: not one line of at most {MAX_KEY_TEXT} characters")
    line = parse_authorized_line(text.strip().encode("utf-8", "surrogateescape"), 1)
    if line.kind != "key" or line.key is None:
        raise Rejected(f"{what} does not parse")
    if line.options_text:
        raise Rejected(f"{what} carries options")
    if line.key.certificate is not None:
        raise Rejected(f"{what} is a certificate; revoke it by serial or key id under its CA")
    return line.key


def _list(body: dict[str, Any], name: str) -> list[Any]:
    value = body.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise Rejected(f"{name} must be a list")
    if len(value) > MAX_ENTRIES:
        raise Rejected(f"{name}: more than {MAX_ENTRIES} entries")
    return value


def _revocation(body: dict[str, Any], action: Literal["revoke", "unrevoke"]) -> Revocation:
    revocation_id = _identifier(body, "revocation_id")
    entries: list[RevocationEntry] = []
    fingerprints: list[str] = []
    for index, text in enumerate(_list(body, "keys")):
        key = plain_key(text, f"keys[{index}]")
        entries.append(key_entry(key))
        fingerprints.append(key.fingerprint)
    for index, value in enumerate(_list(body, "fingerprints")):
        if not isinstance(value, str) or not _FINGERPRINT.match(value):
            raise Rejected(f"fingerprints[{index}] is not a SHA256 fingerprint")
        entries.append(RevocationEntry("hash", value))
        fingerprints.append(value)
    cas: dict[str, str] = {}
    for index, cert in enumerate(_list(body, "certificates")):
        where = f"certificates[{index}]"
        if not isinstance(cert, dict):
            raise Rejected(f"{where} must be an object")
        ca = plain_key(cert.get("ca_key"), f"{where}.ca_key")
        ca_text = key_text(ca)
        cas[ca_text] = ca.fingerprint
        serials = _list(cert, "serials")
        key_ids = _list(cert, "key_ids")
        if not serials and not key_ids:
            raise Rejected(f"{where} names no serial and no key id")
        for serial in serials:
            if not isinstance(serial, int) or isinstance(serial, bool) or not 1 <= serial <= U64_MAX:
                raise Rejected(f"{where}.serials: each must be an integer from 1 to 2^64-1")
            entries.append(RevocationEntry("serial", str(serial), ca_text))
        for key_id in key_ids:
            if not isinstance(key_id, str) or not valid_key_id(key_id):
                raise Rejected(
                    f"{where}.key_ids: printable ASCII without '#' or surrounding blanks, at most 256"
                )
            entries.append(RevocationEntry("key_id", key_id, ca_text))
    if not entries:
        raise Rejected("nothing to revoke: keys, fingerprints and certificates are all empty")
    if len(entries) > MAX_ENTRIES:
        raise Rejected(f"more than {MAX_ENTRIES} entries")
    return Revocation(
        revocation_id,
        action,
        frozenset(entries),
        tuple(dict.fromkeys(fingerprints)),
        tuple(sorted(cas.items())),
    )


def _trust_ca(body: dict[str, Any], user_exists: Callable[[str], bool], policy: Policy | None) -> TrustCa:
    ca_id = _identifier(body, "ca_id")
    key_field = _field(body, "public_key")
    key = plain_key(key_field, "public_key")
    if policy is not None:
        _check_policy(key, policy)
    raw = body.get("principals")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise Rejected("principals must be an object of account -> list of principals")
    if len(raw) > MAX_ACCOUNTS:
        raise Rejected(f"principals: more than {MAX_ACCOUNTS} accounts")
    principals: list[tuple[str, tuple[str, ...]]] = []
    for account, names in raw.items():
        user = _user({"user": account}, user_exists)
        if not isinstance(names, list) or len(names) > MAX_PRINCIPALS_PER_ACCOUNT:
            raise Rejected(f"principals.{user}: a list of at most {MAX_PRINCIPALS_PER_ACCOUNT} names")
        for name in names:
            if not isinstance(name, str) or not valid_principal(name):
                raise Rejected(
                    f"principals.{user}: each principal is 1-{MAX_PRINCIPAL} printable ASCII characters "
                    "without blanks, '#', ',' or quotes"
                )
        principals.append((user, tuple(sorted(set(names)))))
    return TrustCa(ca_id, key_text(key), key.fingerprint, tuple(sorted(principals)))
