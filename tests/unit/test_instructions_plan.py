"""plan_key_change (add, replace) and plan_remove: pure edits that keep every other line byte for
byte. `add` and `replace` below are single-file shorthands for plan_key_change."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.instructions.plan import (
    EditPlan,
    KeyChange,
    PlanError,
    honours_at,
    plan_key_change,
    plan_remove,
    same_options,
)
from agent.instructions.validate import EPHEMERAL_TAG
from agent.ssh.authorized_keys import (
    DEFAULT_OPTIONS,
    parse_authorized_keys,
    parse_authorized_line,
    split_lines,
)

HONOURS = honours_at(datetime(2026, 3, 1, tzinfo=UTC), UTC)
PATH = "/home/u/.ssh/authorized_keys"


def plan_add(data: bytes, new_line: str, new_fingerprint: str, *, tag: str | None = None) -> EditPlan:
    ln = parse_authorized_line(new_line.encode(), 1)
    assert ln.key is not None and ln.options is not None
    key_text = new_line[len(ln.options_text) :].strip() if ln.options_text else new_line
    change = KeyChange(new_fingerprint, key_text, ln.options_text, ln.options, tag=tag, target=PATH)
    return plan_key_change([(PATH, data)], change, HONOURS)[0]


def plan_replace(
    data: bytes, old_fingerprint: str, key_text: str, new_fingerprint: str, options: str | None = None
) -> EditPlan:
    """Without `options`: the old line's are kept; `options=""` clears them."""
    parsed = parse_authorized_line(f"{options} {key_text}".encode(), 1).options if options else None
    change = KeyChange(
        new_fingerprint,
        key_text,
        options or None,
        parsed or DEFAULT_OPTIONS,
        keep_old_options=options is None,
        old_fingerprint=old_fingerprint,
    )
    return plan_key_change([(PATH, data)], change, HONOURS)[0]


def _key() -> tuple[str, str]:
    pub = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    fp = "SHA256:" + base64.b64encode(
        hashlib.sha256(base64.b64decode(pub.split()[1])).digest()
    ).decode().rstrip("=")
    return pub.decode(), fp


KEYS = [_key() for _ in range(4)]
(A, A_FP), (B, B_FP), (C, C_FP), (NEW, NEW_FP) = KEYS


def _fps(data: bytes) -> list[str]:
    return [ln.key.fingerprint for ln in parse_authorized_keys(data) if ln.kind == "key" and ln.key]


def test_replace_keeps_position_options_and_crlf() -> None:
    data = f'# top\r\n{A} a\r\n\r\nfrom="10.0.0.1",no-pty {B} b\r\nbroken line\r\n{C} c'.encode()
    plan = plan_replace(data, B_FP, NEW + " new", NEW_FP)
    expected = f'# top\r\n{A} a\r\n\r\nfrom="10.0.0.1",no-pty {NEW} new\r\nbroken line\r\n{C} c'.encode()
    assert plan.new_data == expected
    assert (plan.added, plan.removed) == (1, 1)
    assert set(plan.fingerprints_after) == {A_FP, NEW_FP, C_FP}


def test_replace_with_given_or_cleared_options() -> None:
    data = f'from="10.0.0.1" {B}\n'.encode()
    given_opts = plan_replace(data, B_FP, NEW, NEW_FP, options="no-pty")
    assert given_opts.new_data == f"no-pty {NEW}\n".encode()
    cleared = plan_replace(data, B_FP, NEW, NEW_FP, options="")
    assert cleared.new_data == f"{NEW}\n".encode()


def test_replace_drops_duplicates_and_is_idempotent() -> None:
    data = f"{B} one\n{A}\n{B} two\n".encode()
    plan = plan_replace(data, B_FP, NEW, NEW_FP)
    assert plan.new_data == f"{NEW}\n{A}\n".encode()
    assert plan.removed == 2
    again = plan_replace(plan.new_data, B_FP, NEW, NEW_FP)
    assert again.already_applied
    with pytest.raises(PlanError):
        plan_replace(f"{A}\n".encode(), B_FP, NEW, NEW_FP)


def test_replace_when_new_key_is_already_there_only_removes_old() -> None:
    data = f"{NEW}\n{B}\n".encode()
    plan = plan_replace(data, B_FP, NEW, NEW_FP)
    assert plan.new_data == f"{NEW}\n".encode()
    assert plan.added == 0


def test_add() -> None:
    assert plan_add(b"", NEW, NEW_FP).new_data == f"{NEW}\n".encode()
    assert plan_add(f"{A}".encode(), NEW, NEW_FP).new_data == f"{A}\n{NEW}\n".encode()  # no final newline
    assert plan_add(f"{A}\r\n".encode(), NEW, NEW_FP).new_data == f"{A}\r\n{NEW}\r\n".encode()
    assert plan_add(f"{A}\n{NEW} other comment\n".encode(), NEW, NEW_FP).already_applied


def test_ephemeral_lines_are_told_apart() -> None:
    tag = f"{EPHEMERAL_TAG}:eph_1"
    permanent = f"{NEW} laptop\n".encode()
    # A permanent line of the same key does not make the grant's own line present...
    plan = plan_add(permanent, f'expiry-time="20300101000000Z" {NEW} {tag}', NEW_FP, tag=tag)
    assert plan.new_data is not None and plan.added == 1
    # ...and removing the grant never takes the permanent line with it.
    removed = plan_remove(plan.new_data, NEW_FP, tag=tag)
    assert removed.new_data == permanent
    # A rotation `add` is not satisfied by an ephemeral line (the sweep will remove it).
    ephemeral_only = f'expiry-time="20300101000000Z" {NEW} {tag}\n'.encode()
    assert plan_add(ephemeral_only, NEW, NEW_FP).added == 1


def test_remove_never_touches_lines_it_cannot_identify() -> None:
    data = f"{A}\nssh-ed25519 AAAAbroken {B}\n# {B}\n{B}\n".encode()
    plan = plan_remove(data, B_FP)
    assert plan.new_data == f"{A}\nssh-ed25519 AAAAbroken {B}\n# {B}\n".encode()
    assert plan_remove(plan.new_data, B_FP).already_applied


# -- properties ----------------------------------------------------------------------------------

_other_lines = st.sampled_from(
    [
        b"# comment",
        b"",
        b"   ",
        b"garbage !!",
        b"ssh-ed25519 AAAA",
        b"\xff\xfe binary",
        b'from="x ' + A.encode(),
        A.encode() + b" a",
        C.encode() + b" c",
        b"no-pty " + C.encode(),
        b"\tindented " + A.encode(),
    ]
)
_line = st.one_of(_other_lines, st.just(B.encode() + b" old"), st.just(b'command="x" ' + B.encode()))
_ending = st.sampled_from([b"\n", b"\r\n"])


@st.composite
def files(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(st.tuples(_line, _ending), max_size=12))
    data = b"".join(text + end for text, end in lines)
    if data and draw(st.booleans()):
        data = data.rstrip(b"\r\n")  # no final newline
    return data


def _non_b(data: bytes) -> list[bytes]:
    return [
        ln.raw
        for ln in parse_authorized_keys(data)
        if not (ln.key is not None and ln.key.fingerprint == B_FP)
    ]


@settings(max_examples=300, deadline=None)
@given(data=files())
def test_remove_keeps_every_other_line(data: bytes) -> None:
    plan = plan_remove(data, B_FP)
    out = data if plan.new_data is None else plan.new_data
    assert split_lines(out) == _non_b(data)
    assert B_FP not in _fps(out)


@settings(max_examples=300, deadline=None)
@given(data=files())
def test_replace_keeps_every_other_line(data: bytes) -> None:
    try:
        plan = plan_replace(data, B_FP, NEW, NEW_FP)
    except PlanError:
        assert B_FP not in _fps(data)
        return
    assert plan.new_data is not None
    out_lines = split_lines(plan.new_data)
    new_index = [i for i, raw in enumerate(out_lines) if NEW.encode() in raw]
    assert len(new_index) == 1
    assert out_lines[: new_index[0]] + out_lines[new_index[0] + 1 :] == _non_b(data)
    assert B_FP not in _fps(plan.new_data) and NEW_FP in _fps(plan.new_data)


@settings(max_examples=300, deadline=None)
@given(data=files())
def test_add_keeps_every_line(data: bytes) -> None:
    plan = plan_add(data, NEW, NEW_FP)
    assert plan.new_data is not None
    old = split_lines(data)
    new = split_lines(plan.new_data)
    assert len(new) == len(old) + 1
    for before, after in zip(old, new, strict=False):
        assert after == before or (after.rstrip(b"\r\n") == before and not before.endswith(b"\n"))
    assert new[-1].rstrip(b"\r\n") == NEW.encode()
    assert plan_add(plan.new_data, NEW, NEW_FP).already_applied


# -- plan_key_change: whatever the files hold, the plan puts the change in effect -------------------

_K_FORMS = [
    NEW,  # plain
    f"no-pty {NEW}",
    f'from="10.0.0.0/8",restrict {NEW}',
    f'RESTRICT,from="10.0.0.0/8" {NEW}',
    f'expiry-time="20200101Z" {NEW}',  # expired (HONOURS is at 2026-03-01)
    f'expiry-time="20300101Z" {NEW}',
    f"cert-authority {NEW}",
    f'principals="x" {NEW}',
    f"bogus-option {NEW}",
    f'expiry-time="20300101Z" {NEW.split()[0]} {NEW.split()[1]} {EPHEMERAL_TAG}:eph_1',
]
_OLD_FORMS = [B, f'from="10.0.0.1" {B}', f'expiry-time="20200101Z" {B}', f"cert-authority {B}"]
_OTHERS = [A, f"# {NEW}", "garbage", "", f"no-pty {C}"]


@st.composite
def _key_files(draw: st.DrawFn) -> list[tuple[str, bytes]]:
    lines = st.sampled_from(_K_FORMS + _OLD_FORMS + _OTHERS)
    return [
        (f"/home/u/.ssh/f{i}", "".join(line + "\n" for line in draw(st.lists(lines, max_size=6))).encode())
        for i in range(draw(st.integers(min_value=1, max_value=2)))
    ]


_OPTIONS = [None, "no-pty", 'from="10.0.0.0/8",restrict', 'expiry-time="20300101Z"']


@settings(max_examples=400, deadline=None)
@given(
    files=_key_files(),
    options=st.sampled_from(_OPTIONS),
    action=st.sampled_from(["add", "replace", "replace-keep"]),
)
def test_a_key_change_is_in_effect_after_its_plan_and_touches_nothing_else(
    files: list[tuple[str, bytes]], options: str | None, action: str
) -> None:
    from agent.instructions.plan import unmet

    parsed = parse_authorized_line(f"{options} {NEW}".encode(), 1).options if options else None
    change = KeyChange(
        NEW_FP,
        NEW,
        None if action == "replace-keep" else options,
        parsed if parsed and action != "replace-keep" else DEFAULT_OPTIONS,
        keep_old_options=action == "replace-keep",
        old_fingerprint=None if action == "add" else B_FP,
        target=files[0][0],
    )
    try:
        plans = plan_key_change(files, change, HONOURS)
    except PlanError as exc:
        assert exc.code in ("KEY_NOT_FOUND", "KEY_NOT_IN_EFFECT")
        return
    after = [
        (p, d if plan.new_data is None else plan.new_data) for (p, d), plan in zip(files, plans, strict=True)
    ]
    assert unmet(after, change, HONOURS) == []  # planning again changes nothing
    honoured_new = [
        ln
        for _, data in after
        for ln in parse_authorized_keys(data)
        if ln.key is not None
        and ln.key.fingerprint == NEW_FP
        and HONOURS(ln)
        and ln.options is not None
        and not ln.options.cert_authority
        and EPHEMERAL_TAG not in ln.comment
    ]
    assert honoured_new  # the key is in effect
    if action != "replace-keep":  # every permanent line of it that sshd honours has the options asked
        wanted = parsed or DEFAULT_OPTIONS
        assert all(same_options(ln.options, wanted) for ln in honoured_new if ln.options is not None)
    for (_, before), (_, data) in zip(files, after, strict=True):

        def others(raw: bytes) -> list[bytes]:
            return [
                ln.raw
                for ln in parse_authorized_keys(raw)
                if ln.key is None or ln.key.fingerprint not in (NEW_FP, B_FP)
            ]

        assert others(data) == others(before)  # every other line, byte for byte, in order
        if action != "add":
            assert B_FP not in _fps(data)
