"""Validate instruction bodies before anything is opened. Pure.

Keys and options go through the discovery parser (one grammar for reading and writing). A
key must be one line (no CR, LF or NUL anywhere), a plain key (no options smuggled in the key
text, no certificate-authority line), allowed by the policy; options must parse as sshd would
and must not carry a second key. User names are checked for shape here and for existence by
the caller-supplied lookup, so `../root` or `root/../x` never reach a path.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any

from agent.instructions.verify import Instruction, Rejected
from agent.inventory.evaluate import Policy
from agent.inventory.model import parse_rfc3339
from agent.ssh.authorized_keys import (
    KeyOptions,
    OptionError,
    expiry_time_utc,
    parse_authorized_keys,
    parse_authorized_line,
    parse_options,
)
from agent.ssh.keys import PublicKey, key_text

MAX_KEY_TEXT = 16 * 1024
MAX_OPTIONS_TEXT = 4 * 1024
MAX_COMMENT = 256
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")
# POSIX portable user names (plus the `$` of machine accounts); no `/`, no leading `-` or `.`.
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\$?$")
_COMMENT_OK = re.compile(r"^[\x20-\x7e]*$")
EPHEMERAL_TAG = "sshklm-ephemeral"


@dataclass(frozen=True)
class NewKey:
    key: PublicKey
    text: str  # "type base64 comment" as it will be written
    options: KeyOptions | None
    options_text: str | None

    def line(self) -> str:
        return f"{self.options_text} {self.text}" if self.options_text else self.text


@dataclass(frozen=True)
class Rotation:
    rotation_id: str
    user: str
    action: str
    old_fingerprint: str | None
    new: NewKey | None
    options_given: bool


@dataclass(frozen=True)
class Ephemeral:
    grant_id: str
    user: str
    new: NewKey
    expires_at: datetime


@dataclass(frozen=True)
class Revoke:
    grant_id: str


@dataclass(frozen=True)
class Scan:
    scan_id: str


Body = Rotation | Ephemeral | Revoke | Scan


def _field(body: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise Rejected(f"missing {name}")
        return None
    if not isinstance(value, str):
        raise Rejected(f"{name} must be a string")
    if any(ch in value for ch in "\r\n\x00"):
        raise Rejected(f"{name} contains a line break or NUL")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from JSON "\ud800" escapes
        raise Rejected(f"{name} is not valid UTF-8") from None
    return value


def _identifier(body: dict[str, Any], name: str) -> str:
    value = _field(body, name)
    assert value is not None
    if not _ID.match(value):
        raise Rejected(f"malformed {name}")
    return value


def _user(body: dict[str, Any], user_exists: Callable[[str], bool]) -> str:
    name = _field(body, "user")
    assert name is not None
    if not _USER.match(name) or ".." in name:
        raise Rejected("malformed user name")
    if not user_exists(name):
        raise Rejected("no such user", "NOT_FOUND")
    return name


def _fingerprint(body: dict[str, Any], name: str) -> str:
    value = _field(body, name)
    if value is None or not _FINGERPRINT.match(value):
        raise Rejected(f"malformed {name}")
    return value


def parse_new_key(
    key_field: str, options_field: str | None, policy: Policy | None, *, comment: str | None = None
) -> NewKey:
    """One key (and optional options) as sshd would read the line we are about to write."""
    if len(key_field) > MAX_KEY_TEXT:
        raise Rejected("key too long")
    if options_field is not None and len(options_field) > MAX_OPTIONS_TEXT:
        raise Rejected("options too long")
    keyline = parse_authorized_line(key_field.strip().encode("utf-8"), 1)
    if keyline.kind != "key" or keyline.key is None:
        raise Rejected("key does not parse")
    if keyline.options_text:
        raise Rejected("key text carries options; use the options field")
    key = keyline.key
    if key.certificate is not None:
        raise Rejected("certificates cannot be installed as authorized keys")
    text_comment = comment if comment is not None else keyline.comment
    if len(text_comment) > MAX_COMMENT or not _COMMENT_OK.match(text_comment):
        raise Rejected("comment has characters other than printable ASCII")
    text = key_text(key) + (f" {text_comment}" if text_comment else "")
    options: KeyOptions | None = None
    if options_field:
        try:
            options = parse_options(options_field)
        except OptionError as exc:
            raise Rejected(f"bad options: {exc}") from None
        if options.cert_authority:
            raise Rejected("cert-authority cannot be installed by an instruction")
        # Re-read the whole line: the options must end exactly where we think (no second key).
        combined = parse_authorized_line(f"{options_field} {text}".encode(), 1)
        if (
            combined.key is None
            or combined.key.fingerprint != key.fingerprint
            or combined.options_text != options_field
        ):
            raise Rejected("options do not form one line with the key")
    if policy is not None:
        _check_policy(key, policy)
    return NewKey(key=key, text=text, options=options, options_text=options_field or None)


def check_honoured(new: NewKey, now: datetime, local_tz: tzinfo) -> None:
    """Options sshd would not honour make a line that grants nothing: refuse them rather than
    write it (`principals=` needs `cert-authority`, which is refused; an `expiry-time` passed)."""
    options = new.options
    if options is None:
        return
    if options.principals is not None:
        raise Rejected("principals= without cert-authority: sshd would not honour the line")
    if options.expiry_time is not None:
        try:
            expired = expiry_time_utc(options.expiry_time, local_tz) <= now
        except OptionError:
            expired = True
        if expired:
            raise Rejected("expiry-time has passed: sshd would not honour the line")


def _check_policy(key: PublicKey, policy: Policy) -> None:
    if policy.allowed_types and key.base_type not in policy.allowed_types:
        raise Rejected("key type not allowed by policy")
    if key.base_type == "ssh-rsa" and key.bits < policy.min_rsa_bits:
        raise Rejected("RSA key shorter than policy min_rsa_bits")
    if key.base_type == "ssh-dss":
        raise Rejected("DSA keys are not installed")


def validate(
    instruction: Instruction,
    *,
    user_exists: Callable[[str], bool],
    policy: Policy | None,
    now: datetime,
    max_ttl_s: int,
    local_tz: tzinfo = UTC,
) -> Body:
    """`local_tz`: the zone sshd reads an `expiry-time` without "Z" in."""
    body = instruction.body
    try:
        if instruction.kind == "rotation":
            rotation = _rotation(body, user_exists, policy)
            if rotation.new is not None:
                check_honoured(rotation.new, now, local_tz)
            return rotation
        if instruction.kind == "ephemeral":
            return _ephemeral(body, user_exists, policy, now, max_ttl_s)
        if instruction.kind == "revoke_ephemeral":
            return Revoke(_identifier(body, "grant_id"))
        if instruction.kind == "scan":
            return Scan(_identifier(body, "scan_id"))
    except Rejected as exc:
        raise Rejected(exc.reason, exc.code, instruction.jti) from None
    raise Rejected("unknown instruction kind", jti=instruction.jti)


def _rotation(body: dict[str, Any], user_exists: Callable[[str], bool], policy: Policy | None) -> Rotation:
    rotation_id = _identifier(body, "rotation_id")
    action = _field(body, "action")
    if action not in ("replace", "add", "remove"):
        raise Rejected("action must be replace, add or remove")
    user = _user(body, user_exists)
    old = _fingerprint(body, "old_fingerprint") if action in ("replace", "remove") else None
    options_field = _field(body, "options", required=False)
    new: NewKey | None = None
    if action in ("replace", "add"):
        key_field = _field(body, "new_key")
        assert key_field is not None
        new = parse_new_key(key_field, options_field, policy)
        if old is not None and new.key.fingerprint == old:
            raise Rejected("new key equals the old key")
    return Rotation(rotation_id, user, action, old, new, options_given=options_field is not None)


def _ephemeral(
    body: dict[str, Any],
    user_exists: Callable[[str], bool],
    policy: Policy | None,
    now: datetime,
    max_ttl_s: int,
) -> Ephemeral:
    grant_id = _identifier(body, "grant_id")
    user = _user(body, user_exists)
    expires_text = _field(body, "expires_at")
    assert expires_text is not None
    try:
        expires_at = parse_rfc3339(expires_text)
    except (ValueError, OverflowError):
        raise Rejected("malformed expires_at") from None
    # Compared as seconds: now + timedelta(max_ttl_s) overflows for a policy's absurd TTL.
    if (expires_at - now).total_seconds() > max_ttl_s:
        raise Rejected("grant lasts longer than ephemeral_max_ttl_s")
    key_field = _field(body, "public_key")
    assert key_field is not None
    comment = f"{EPHEMERAL_TAG}:{grant_id}"
    expiry = expires_at.strftime("%Y%m%d%H%M%SZ")
    new = parse_new_key(key_field, f'expiry-time="{expiry}"', policy, comment=comment)
    return Ephemeral(grant_id, user, new, expires_at)


def check_root_from(body: Body, target_uid: int | None, policy: Policy | None) -> None:
    """require_from_for_root: a key installed for uid 0 must carry from= (given, or kept from
    the old line: see `check_kept_root_from`). `target_uid`: the uid of the body's user."""
    if policy is None or not policy.require_from_for_root or target_uid != 0:
        return
    if isinstance(body, Ephemeral):
        new: NewKey | None = body.new
    elif isinstance(body, Rotation) and (body.action == "add" or body.options_given):
        new = body.new
    else:
        return
    if new is not None and (new.options is None or new.options.from_ is None):
        raise Rejected("policy require_from_for_root: a key for root needs from=")


def check_kept_root_from(new_data: bytes, fingerprint: str, target_uid: int, policy: Policy | None) -> None:
    """require_from_for_root for a replacement that keeps the old line's options: only the
    planned file (`new_data`) shows whether those carry from= (checked before anything is written)."""
    if policy is None or not policy.require_from_for_root or target_uid != 0:
        return
    for ln in parse_authorized_keys(new_data):
        is_new = ln.kind == "key" and ln.key is not None and ln.key.fingerprint == fingerprint
        if is_new and (ln.options is None or ln.options.from_ is None):
            raise Rejected("policy require_from_for_root: the old line's kept options have no from=")
