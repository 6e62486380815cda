"""`applied` means the effect is in place (issue 11): after an `add`, `replace` or ephemeral grant
reports `applied`, the user's files hold the key with exactly the options the instruction asked
for, in a line sshd honours, and no other permanent line of that key that sshd honours with other
options; otherwise the result is `failed` and says what differs.

"Already in place" (no write) = such a line exists and nothing contradicts it. A line sshd does not
honour never stands for the key: an expired `expiry-time`, a `cert-authority` line, a certificate,
bad options, `principals=` without `cert-authority`. An ephemeral grant's line never stands for a
permanent key. `fingerprints_after` lists the keys sshd honours after the instruction.

Over the in-memory host files (tests/unit/applier_fakes.py); the same over a real sshd:
tests/integration/test_e2e_sshd.py::test_add_with_options_restricts_a_key_already_present."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent.ssh.authorized_keys import parse_authorized_keys
from tests.integration.apply_support import public_line
from tests.unit.applier_fakes import ALICE, World, make_world

AK = "/home/alice/.ssh/authorized_keys"
AK2 = "/home/alice/.ssh/authorized_keys2"
FROM = 'restrict,from="10.0.0.0/8"'
PAST = 'expiry-time="20200101Z"'  # the fake clock says 2026-03-01
FUTURE = 'expiry-time="20300101Z"'


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path / "state")


def put(world: World, path: str, text: str) -> None:
    world.files.put(path, text.encode(), uid=ALICE.uid, gid=ALICE.gid)


def rotation(action: str, **fields: object) -> dict[str, object]:
    return {"rotation_id": "rot_1", "user": "alice", "action": action, **fields}


def lines_of(world: World, fingerprint: str) -> list[tuple[str, str | None]]:
    """(path, options as written) of every line of that key, in sshd's reading order."""
    out = []
    for path in (AK, AK2):
        text = world.files.text(path)
        for ln in parse_authorized_keys((text or "").encode()):
            if ln.kind == "key" and ln.key is not None and ln.key.fingerprint == fingerprint:
                out.append((path, ln.options_text))
    return out


def certificate_of(tmp: Path, public_key_line: str) -> str:
    """A user certificate of that key (signed by a throwaway CA) as one authorized_keys line."""
    (tmp / "ca").unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "ca")], check=True)
    (tmp / "k.pub").write_text(public_key_line + "\n")
    subprocess.run(
        ["ssh-keygen", "-q", "-s", str(tmp / "ca"), "-I", "id", "-n", "alice", str(tmp / "k.pub")], check=True
    )
    return (tmp / "k-cert.pub").read_text().strip()


# -- add ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "existing",
    [
        "{key}",  # present without options
        "{past} {key}",  # present only as an expired line
        "cert-authority {key}",  # present only as a CA line
        'principals="x" {key}',  # present only where sshd refuses it (principals without cert-authority)
        'from="10.0.0.1",bogus-option {key}',  # present only with options sshd refuses
        "{future} {bare} sshklm-ephemeral:eph_1",  # present only as an ephemeral grant's line
        'from="192.0.2.1" {key}',  # present with other options
    ],
)
def test_add_with_options_puts_exactly_those_options_in_effect(world: World, existing: str) -> None:
    key, fp = public_line("k")
    bystander, by_fp = public_line("b")
    bare = " ".join(key.split()[:2])
    put(
        world,
        AK,
        f"# mine\n{bystander}\n" + existing.format(key=key, bare=bare, past=PAST, future=FUTURE) + "\n",
    )
    result = world.apply("rotation", rotation("add", new_key=key, options=FROM))
    assert (result["status"], result["error"]) == ("applied", None), result
    honoured = [(p, o) for p, o in lines_of(world, fp) if o == FROM]
    assert honoured == [(AK, FROM)]
    # No other permanent line of the key that sshd honours with other options is left.
    for _path, options in lines_of(world, fp):
        assert (
            options in (FROM, None)
            or "expiry-time" in options
            or "cert-authority" in options
            or ("principals" in options or "bogus" in options)
        )
    assert world.files.text(AK).startswith(f"# mine\n{bystander}\n")  # type: ignore[union-attr]
    assert fp in result["fingerprints_after"] and by_fp in result["fingerprints_after"]
    assert world.files.writes == [AK]


def test_add_with_options_rewrites_the_unrestricted_line_in_place(world: World) -> None:
    key, fp = public_line("k")
    other, _ = public_line("o")
    put(world, AK, f"{key}\n{other}\n")
    result = world.apply("rotation", rotation("add", new_key=key, options=FROM))
    assert result["status"] == "applied"
    assert world.files.text(AK) == f"{FROM} {key}\n{other}\n"


def test_add_without_options_lifts_options_it_did_not_ask_for(world: World) -> None:
    key, fp = public_line("k")
    put(world, AK, f'from="10.0.0.1" {key}\n')
    result = world.apply("rotation", rotation("add", new_key=key))
    assert result["status"] == "applied"
    assert lines_of(world, fp) == [(AK, None)]


def test_add_of_a_key_present_only_as_a_certificate_appends_the_key(world: World, tmp_path: Path) -> None:
    key, fp = public_line("k")
    put(world, AK, certificate_of(tmp_path, key) + "\n")
    result = world.apply("rotation", rotation("add", new_key=key))
    assert result["status"] == "applied"
    text = world.files.text(AK)
    assert text is not None and text.endswith(f"\n{key}\n")


def test_add_removes_a_contradicting_line_in_another_file(world: World) -> None:
    """sshd reads authorized_keys then authorized_keys2 and takes the first line that lets the
    connection in: an unrestricted line in the second file would undo the restriction."""
    key, fp = public_line("k")
    put(world, AK, "# one\n")
    put(world, AK2, f"# two\n{key}\n")
    result = world.apply("rotation", rotation("add", new_key=key, options=FROM))
    assert result["status"] == "applied"
    assert lines_of(world, fp) == [(AK2, FROM)]  # rewritten where it was
    assert world.files.text(AK) == "# one\n"


def test_add_already_in_place_with_the_same_options_in_another_spelling(world: World) -> None:
    key, fp = public_line("k")
    put(world, AK, f'from="10.0.0.0/8",RESTRICT {key}\n')
    result = world.apply("rotation", rotation("add", new_key=key, options=FROM))
    assert result["status"] == "applied"
    assert world.files.writes == []


def test_add_with_options_sshd_would_not_honour_is_rejected(world: World) -> None:
    key, _ = public_line("k")
    put(world, AK, "# keys\n")
    for options in (PAST, 'principals="alice"'):
        result = world.apply("rotation", rotation("add", new_key=key, options=options))
        assert result["status"] == "rejected", options
        assert result["error"]["code"] == "VALIDATION_ERROR"  # type: ignore[index]
    assert world.files.writes == []


# -- replace ------------------------------------------------------------------------------------


def test_replace_with_options_sets_them_when_the_new_key_is_already_there(world: World) -> None:
    old, old_fp = public_line("o")
    new, new_fp = public_line("n")
    put(world, AK, f"{new}\n{old}\n")
    result = world.apply("rotation", rotation("replace", old_fingerprint=old_fp, new_key=new, options=FROM))
    assert result["status"] == "applied"
    assert lines_of(world, old_fp) == []
    assert lines_of(world, new_fp) == [(AK, FROM)]


def test_replace_with_options_after_the_old_key_left(world: World) -> None:
    """The old key is gone already (a re-sent replace, or removed by hand) and the new key is
    there without the options asked for: set them, do not call that `applied` as it stands."""
    _, old_fp = public_line("o")
    new, new_fp = public_line("n")
    put(world, AK, f"{new}\n")
    result = world.apply("rotation", rotation("replace", old_fingerprint=old_fp, new_key=new, options=FROM))
    assert result["status"] == "applied"
    assert lines_of(world, new_fp) == [(AK, FROM)]


def test_replace_keeping_options_of_an_old_key_sshd_does_not_honour_fails(world: World) -> None:
    old, old_fp = public_line("o")
    new, _ = public_line("n")
    before = f"{PAST} {old}\ncert-authority {old}\n"
    put(world, AK, before)
    result = world.apply("rotation", rotation("replace", old_fingerprint=old_fp, new_key=new))
    assert result["status"] == "failed"
    assert result["error"]["code"] == "KEY_NOT_IN_EFFECT"  # type: ignore[index]
    assert world.files.text(AK) == before and world.files.writes == []


def test_replace_keeping_options_of_a_dead_old_key_when_the_new_key_is_in_effect(world: World) -> None:
    """Nothing to keep, but nothing missing either: the dead old lines go, the new line stays."""
    old, old_fp = public_line("o")
    new, new_fp = public_line("n")
    put(world, AK, f'{PAST} {old}\nfrom="10.0.0.1" {new}\n')
    result = world.apply("rotation", rotation("replace", old_fingerprint=old_fp, new_key=new))
    assert result["status"] == "applied"
    assert lines_of(world, old_fp) == [] and lines_of(world, new_fp) == [(AK, 'from="10.0.0.1"')]


def test_replace_keeps_the_honoured_old_line_options_not_an_expired_one(world: World) -> None:
    old, old_fp = public_line("o")
    new, new_fp = public_line("n")
    put(world, AK, f"{PAST} {old}\n")
    put(world, AK2, f'from="10.0.0.1" {old}\n')
    result = world.apply("rotation", rotation("replace", old_fingerprint=old_fp, new_key=new))
    assert result["status"] == "applied"
    assert lines_of(world, old_fp) == []
    assert lines_of(world, new_fp) == [(AK2, 'from="10.0.0.1"')]


def test_replace_drops_a_contradicting_line_of_the_new_key(world: World) -> None:
    old, old_fp = public_line("o")
    new, new_fp = public_line("n")
    put(world, AK, f'from="10.0.0.1" {old}\n')
    put(world, AK2, f"{new}\n")  # the new key, unrestricted, in the second file
    result = world.apply("rotation", rotation("replace", old_fingerprint=old_fp, new_key=new))
    assert result["status"] == "applied"
    assert lines_of(world, new_fp) == [(AK, 'from="10.0.0.1"')]


# -- ephemeral grants ---------------------------------------------------------------------------


def test_a_grant_whose_line_has_another_expiry_is_rewritten(world: World) -> None:
    key, fp = public_line()
    put(world, AK, f'expiry-time="20260301120500Z" {key} sshklm-ephemeral:eph_1\n')
    result = world.apply(
        "ephemeral",
        {"grant_id": "eph_1", "user": "alice", "public_key": key, "expires_at": "2026-03-01T13:00:00Z"},
    )
    assert result["status"] == "applied"
    assert lines_of(world, fp) == [(AK, 'expiry-time="20260301130000Z"')]


# -- fingerprints_after -------------------------------------------------------------------------


def test_fingerprints_after_lists_only_keys_sshd_honours(world: World) -> None:
    expired, expired_fp = public_line("x")
    ca, ca_fp = public_line("c")
    new, new_fp = public_line("n")
    put(world, AK, f"{PAST} {expired}\ncert-authority {ca}\n")
    result = world.apply("rotation", rotation("add", new_key=new))
    assert result["status"] == "applied"
    assert new_fp in result["fingerprints_after"]
    assert ca_fp in result["fingerprints_after"]  # a CA line sshd honours (for certificates)
    assert expired_fp not in result["fingerprints_after"]
