"""agent.ssh.keys / authorized_keys against the real `ssh-keygen -l` (OpenSSH 9.2) as the oracle.

Every test writes a file of lines, runs `ssh-keygen -l -E sha256|md5 -f FILE` and checks that the lines
we accept are exactly the lines ssh-keygen prints (bits, fingerprint, comment, type, in order) and that
every line ssh-keygen skips is one we refuse.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from agent.ssh.authorized_keys import AuthorizedLine, parse_authorized_keys
from agent.ssh.keys import parse_public_key_text
from tests.sshwire import b64, mpint, s

KEYGEN = "/usr/bin/ssh-keygen"
pytestmark = pytest.mark.skipif(not os.access(KEYGEN, os.X_OK), reason="needs /usr/bin/ssh-keygen (OpenSSH)")


# --- wire helpers -----------------------------------------------------------------------------------


def blob_of(line: str) -> bytes:
    return base64.b64decode(line.split()[1])


def keygen(*args: str, cwd: Path) -> None:
    subprocess.run([KEYGEN, "-q", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


# --- the oracle ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Printed:
    bits: int
    fingerprint: str
    comment: str
    type: str


def keygen_list(path: Path, digest: str) -> list[Printed]:
    proc = subprocess.run(
        [KEYGEN, "-l", "-E", digest, "-f", str(path)], capture_output=True, text=True, timeout=60
    )
    out = []
    for line in proc.stdout.splitlines():
        bits, fp, rest = line.split(" ", 2)
        comment, _, type_ = rest.rpartition(" (")
        out.append(Printed(int(bits), fp, comment, type_.rstrip(")")))
    return out


def keygen_comment(line: AuthorizedLine) -> str:
    """ssh-keygen prints the comment, else the skipped options/hostname string, else "no comment"."""
    if line.comment and not line.comment.startswith("#"):
        return line.comment
    return line.options_text or "no comment"


def assert_agrees(tmp_path: Path, lines: list[str]) -> list[AuthorizedLine]:
    path = tmp_path / "keys"
    data = "".join(line + "\n" for line in lines).encode()
    path.write_bytes(data)
    ours = [line for line in parse_authorized_keys(data) if line.kind == "key"]
    for digest in ("sha256", "md5"):
        expected = keygen_list(path, digest)
        got = []
        for line in ours:
            assert line.key is not None
            fp = line.key.fingerprint if digest == "sha256" else line.key.fingerprint_md5
            got.append(Printed(line.key.bits, fp, keygen_comment(line), line.key.keygen_type))
        assert got == expected
    return ours


def assert_all_refused(tmp_path: Path, lines: list[str]) -> None:
    path = tmp_path / "bad"
    data = "".join(line + "\n" for line in lines).encode()
    path.write_bytes(data)
    assert keygen_list(path, "sha256") == [], "the oracle accepts a line the test calls malformed"
    parsed = parse_authorized_keys(data)
    assert [line.kind for line in parsed] == ["invalid"] * len(lines)
    for line in parsed:
        assert line.error and line.error.isascii() and len(line.error) < 60


# --- generated material (module scope: RSA 4096 is generated once) -------------------------------------


@dataclass(frozen=True)
class Material:
    dir: Path
    plain: dict[str, str]  # name -> public key line
    certs: dict[str, str]


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    d = tmp_path_factory.mktemp("oracle")
    specs = {
        "rsa1024": ("-t", "rsa", "-b", "1024"),
        "rsa2048": ("-t", "rsa", "-b", "2048"),
        "rsa3072": ("-t", "rsa", "-b", "3072"),
        "rsa4096": ("-t", "rsa", "-b", "4096"),
        "dsa": ("-t", "dsa"),
        "ecdsa256": ("-t", "ecdsa", "-b", "256"),
        "ecdsa384": ("-t", "ecdsa", "-b", "384"),
        "ecdsa521": ("-t", "ecdsa", "-b", "521"),
        "ed25519": ("-t", "ed25519"),
    }
    plain: dict[str, str] = {}
    for name, args in specs.items():
        keygen(*args, "-N", "", "-C", f"{name}@oracle", "-f", name, cwd=d)
        plain[name] = (d / f"{name}.pub").read_text().strip()
    certs: dict[str, str] = {}
    signings = [
        ("ed25519", "ed25519", ("-I", "user-id", "-n", "alice,bob", "-V", "20200101:20400101")),
        ("ecdsa256", "rsa2048", ("-h", "-I", "host-id", "-n", "web.example")),
        ("rsa3072", "ecdsa384", ("-I", "rsa-user", "-z", "42", "-O", "no-pty")),
        ("ecdsa521", "dsa", ("-h", "-I", "dsa-signed")),
        ("dsa", "ecdsa521", ("-I", "dsa-key", "-t", "rsa-sha2-256")),
        ("ed25519", "rsa1024", ("-I", "sha1-sig", "-t", "ssh-rsa")),
    ]
    for index, (subject, ca, args) in enumerate(signings):
        target = d / f"cert{index}"
        shutil.copy(d / f"{subject}.pub", target.with_suffix(".pub"))
        if "-t" in args and ca != "rsa1024" and ca != "rsa2048":
            args = tuple(a for a in args if a not in ("-t", "rsa-sha2-256"))  # -t only for RSA CAs
        keygen("-s", ca, *args, str(target.with_suffix(".pub")), cwd=d)
        certs[f"{subject}-by-{ca}"] = (d / f"cert{index}-cert.pub").read_text().strip()
    return Material(d, plain, certs)


def test_every_generated_type_matches(tmp_path: Path, material: Material) -> None:
    ours = assert_agrees(tmp_path, list(material.plain.values()))
    assert {line.key.keygen_type for line in ours if line.key} == {"RSA", "DSA", "ECDSA", "ED25519"}
    assert sorted(line.key.bits for line in ours if line.key) == [
        256,
        256,
        384,
        521,
        1024,
        1024,
        2048,
        3072,
        4096,
    ]


def test_certificates_match_and_expose_fields(tmp_path: Path, material: Material) -> None:
    ours = assert_agrees(tmp_path, list(material.certs.values()))
    assert all(line.key and line.key.certificate for line in ours)
    first = ours[0].key
    assert first is not None and first.certificate is not None
    cert = first.certificate
    assert (cert.cert_type, cert.key_id, cert.principals) == ("user", "user-id", ("alice", "bob"))
    assert cert.valid_after is not None and cert.valid_after.year == 2020
    assert cert.valid_before is not None and cert.valid_before.year == 2040
    ca_key, _ = parse_public_key_text(material.plain["ed25519"])
    assert cert.ca_fingerprint == ca_key.fingerprint
    host = ours[1].key
    assert host is not None and host.certificate is not None
    assert host.certificate.cert_type == "host" and host.certificate.valid_before is None
    assert ours[2].key is not None and ours[2].key.certificate is not None
    assert ours[2].key.certificate.serial == 42
    # a certificate's fingerprint is its key's
    subject, _ = parse_public_key_text(material.plain["ed25519"])
    assert first.fingerprint == subject.fingerprint


def test_rsa_aliases_and_noncanonical_mpints_match(tmp_path: Path, material: Material) -> None:
    rsa = material.plain["rsa2048"]
    blob = blob_of(rsa)
    _, e_and_n = blob[:11], blob[11:]
    e_len = struct.unpack(">I", e_and_n[:4])[0]
    e = int.from_bytes(e_and_n[4 : 4 + e_len], "big")
    n = int.from_bytes(e_and_n[8 + e_len :], "big")
    padded = s("ssh-rsa") + mpint(e, pad=2) + mpint(n, pad=3)
    cert = material.certs["rsa3072-by-ecdsa384"]
    lines = [
        "rsa-sha2-256 " + rsa.split()[1] + " alias256",
        "rsa-sha2-512 " + rsa.split()[1] + " alias512",
        "ssh-rsa " + b64(padded) + " padded",
        "rsa-sha2-256-cert-v01@openssh.com " + cert.split()[1] + " certalias",
        "ssh-rsa " + b64(s("RSA") + blob[11:]) + " shortname-in-blob",
        "ssh-ed25519 " + b64(s("ssh-ed25519\0") + blob_of(material.plain["ed25519"])[15:]) + " nul-end",
        "ssh-ed25519 " + b64(s("Ed25519") + blob_of(material.plain["ed25519"])[15:]) + " mixed-case",
        "ssh-rsa " + b64(s("ssh-rsa") + mpint(0) + mpint((1 << 2047) | 1)) + " exponent-zero",
        "ssh-dss "
        + b64(s("ssh-dss") + mpint((1 << 511) | 1) + mpint((1 << 159) | 1) + mpint(2) + mpint(3))
        + " dsa-512",
        "ssh-ed25519\t" + material.plain["ed25519"].split()[1] + "\ttab-separated",
        "ssh-ed25519 "
        + material.plain["ed25519"].split()[1][:20]
        + "\x0b"
        + material.plain["ed25519"].split()[1][20:]
        + " vertical-tab-inside-base64",
    ]
    ours = assert_agrees(tmp_path, lines)
    # OpenSSH quirks both sides agree on: type short names and a final NUL inside the blob
    assert [line.number for line in ours] == list(range(1, 12))
    canonical, _ = parse_public_key_text(rsa)
    assert ours[2].key is not None and ours[2].key.fingerprint == canonical.fingerprint


def test_sk_keys_built_by_hand_match(tmp_path: Path) -> None:
    ed = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    sk_ed = s("sk-ssh-ed25519@openssh.com") + s(ed) + s("ssh:")
    sk_ec = s("sk-ecdsa-sha2-nistp256@openssh.com") + s("nistp256") + s(point) + s("ssh:app")
    lines = [
        "sk-ssh-ed25519@openssh.com " + b64(sk_ed) + " fido-ed",
        "sk-ecdsa-sha2-nistp256@openssh.com " + b64(sk_ec) + " fido-ec",
        "webauthn-sk-ecdsa-sha2-nistp256@openssh.com " + b64(sk_ec) + " webauthn-label",
    ]
    ours = assert_agrees(tmp_path, lines)
    assert [line.key.keygen_type for line in ours if line.key] == ["ED25519-SK", "ECDSA-SK", "ECDSA-SK"]


def _sign_cert(
    body_type: str,
    key_fields: bytes,
    ca_blob: bytes,
    sign: Callable[[bytes], bytes],
    *,
    cert_type: int = 1,
    trailing: bytes = b"",
) -> bytes:
    tbs = (
        s(body_type)
        + s(os.urandom(16))
        + key_fields
        + struct.pack(">Q", 7)
        + struct.pack(">I", cert_type)
        + s("hand-made")
        + s(s("alice"))
        + struct.pack(">Q", 0)
        + struct.pack(">Q", 2**64 - 1)
        + s(b"")
        + s(s("permit-pty") + s(b""))
        + s(b"")
        + s(ca_blob)
    )
    return tbs + s(sign(tbs)) + trailing


def test_hand_made_certificates_incl_sk_ca(tmp_path: Path) -> None:
    ca = ed25519.Ed25519PrivateKey.generate()
    ca_blob = s("ssh-ed25519") + s(ca.public_key().public_bytes_raw())

    def ed_sign(data: bytes) -> bytes:
        return s("ssh-ed25519") + s(ca.sign(data))

    # a security-key CA (sk-ssh-ed25519): signature over sha256(app) || flags || counter || sha256(data)
    app = b"ssh:"
    sk_ca_blob = s("sk-ssh-ed25519@openssh.com") + s(ca.public_key().public_bytes_raw()) + s(app)

    def sk_sign(data: bytes) -> bytes:
        msg = hashlib.sha256(app).digest() + b"\x01" + struct.pack(">I", 9) + hashlib.sha256(data).digest()
        return s("sk-ssh-ed25519@openssh.com") + s(ca.sign(msg)) + b"\x01" + struct.pack(">I", 9)

    ec_key = ec.generate_private_key(ec.SECP384R1())
    point = ec_key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    ec_ca_blob = s("ecdsa-sha2-nistp384") + s("nistp384") + s(point)

    def ec_sign(data: bytes) -> bytes:
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        r, s_ = decode_dss_signature(ec_key.sign(data, ec.ECDSA(hashes.SHA384())))
        return s("ecdsa-sha2-nistp384") + s(mpint(r) + mpint(s_))

    subject = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    name = "ssh-ed25519-cert-v01@openssh.com"
    good = [
        _sign_cert(name, s(subject), ca_blob, ed_sign),
        _sign_cert(name, s(subject), sk_ca_blob, sk_sign, cert_type=2),
        _sign_cert(name, s(subject), ec_ca_blob, ec_sign),
    ]
    ours = assert_agrees(tmp_path, [f"{name} {b64(c)} good{i}" for i, c in enumerate(good)])
    assert len(ours) == 3
    tampered = bytearray(good[0])
    tampered[-5] ^= 1
    bad = [
        bytes(tampered),  # signature does not verify
        _sign_cert(name, s(subject), ca_blob, ed_sign, cert_type=3),  # unknown certificate type
        _sign_cert(name, s(subject), ca_blob, ed_sign, trailing=b"\0"),  # trailing bytes
        _sign_cert(name, s(subject), good[0], ed_sign),  # CA is itself a certificate
        _sign_cert(name, s(subject[:31]), ca_blob, ed_sign),  # short ed25519 key
    ]
    assert_all_refused(tmp_path, [f"{name} {b64(c)} bad" for c in bad])


def test_malformed_variants_are_refused_by_both(tmp_path: Path, material: Material) -> None:
    ed = material.plain["ed25519"]
    ed_blob = blob_of(ed)
    ec256 = blob_of(material.plain["ecdsa256"])
    rsa_blob = blob_of(material.plain["rsa2048"])
    token = ed.split()[1]
    y_flipped = bytearray(ec256)
    y_flipped[-1] ^= 1
    compressed = s("ecdsa-sha2-nistp256") + s("nistp256") + s(b"\x02" + ec256[-64:-32])
    p384_named = s("ecdsa-sha2-nistp256") + s("nistp384") + ec256[-69:]
    rsa1023 = s("ssh-rsa") + mpint(65537) + mpint((1 << 1022) | 1)
    rsa16385 = s("ssh-rsa") + mpint(65537) + mpint((1 << 16384) | 1)
    lines = [
        "ssh-ed25519 " + token[:-1],  # length not a multiple of 4
        "ssh-ed25519 " + token[:10] + "!" + token[11:],  # invalid character
        "ssh-ed25519 " + token[:-2] + chr(ord(token[-2]) + 1) + "=",  # non-zero pad bits
        "ssh-rsa " + token,  # type mismatch
        "ssh-ed25519 " + b64(ed_blob[:-4]),  # truncated
        "ssh-ed25519 " + b64(ed_blob + b"\0"),  # trailing bytes
        "ecdsa-sha2-nistp384 " + b64(ec256),  # label names another curve
        "ecdsa-sha2-nistp256 " + b64(p384_named),  # curve string mismatch
        "ecdsa-sha2-nistp256 " + b64(bytes(y_flipped)),  # point not on the curve
        "ecdsa-sha2-nistp256 " + b64(compressed),  # compressed point
        "ssh-rsa " + b64(rsa1023),  # RSA 1023 bits
        "ssh-rsa " + b64(rsa16385),  # RSA 16385 bits
        "ssh-foo " + token,  # unknown type
        "ssh-ed25519 " + b64(s("ssh-ed25519") + s(ed_blob[-31:])),  # 31-byte key
        "ssh-rsa " + b64(rsa_blob[:11] + s(b"\x80\x01") + rsa_blob[11 + 4 + 3 :]),  # negative e
        "ssh-ed25519",  # no key data
        'from="unterminated ssh-ed25519 ' + token,
    ]
    assert_all_refused(tmp_path, lines)


def test_authorized_keys_layout_matches(tmp_path: Path, material: Material) -> None:
    ed = material.plain["ed25519"]
    rsa = material.plain["rsa3072"]
    lines = [
        "# a comment line",
        "",
        "   " + ed,
        'from="10.0.0.0/8",no-pty ' + rsa,
        'restrict,command="echo \\"hi there\\"" ' + ed.rsplit(" ", 1)[0] + " quoted",
        "no-pty " + ed.rsplit(" ", 1)[0],
        "\t" + ed.rsplit(" ", 1)[0] + " \t  spaced comment",
        ed.rsplit(" ", 1)[0] + " x" * 100_000,  # a 200,000-character line
        "bogus-option " + ed.rsplit(" ", 1)[0] + " bad-option-still-a-key",
    ]
    ours = assert_agrees(tmp_path, lines)
    assert len(ours) == 7
    assert ours[1].options is not None and ours[1].options.from_ == "10.0.0.0/8"
    assert ours[2].options is not None and ours[2].options.command == 'echo "hi there"'
    assert ours[-1].options_error == "unknown key option"


# --- base64 as b64_pton reads it (agent.ssh.wire.b64decode, the one decoder) ----------------------


def _padded_rsa_blob(pad: int) -> bytes:
    """An RSA blob whose base64 ends in `pad` '=' characters (the modulus is not prime: ssh-keygen
    does not care, it parses and fingerprints)."""
    for n_bytes in range(256, 262):
        blob = s("ssh-rsa") + mpint(65537) + mpint((1 << (8 * n_bytes - 2)) | 0xABCDEF | 1)
        if (3 - len(blob) % 3) % 3 == pad:
            return blob
    raise AssertionError("no modulus size gives that padding")


def _bump_last_char(token: str) -> str:
    """Same length and padding, but non-zero pad bits: the last data character plus one."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    data = token.rstrip("=")
    bumped = alphabet[alphabet.index(data[-1]) + 1]
    return data[:-1] + bumped + token[len(data) :]


def test_base64_whitespace_is_skipped_like_b64_pton(tmp_path: Path) -> None:
    lines = []
    for pad in (1, 2):
        token = b64(_padded_rsa_blob(pad))
        lines += [
            f"ssh-rsa {token[:20]}\v{token[20:]} vt inside",
            f"ssh-rsa {token[:20]}\f{token[20:]} ff inside",
            f"ssh-rsa {token[:20]}\r{token[20:]} cr inside",
            f"ssh-rsa {token[:-pad]}\v{token[-pad:]} vt before the padding",
            f"ssh-rsa {token}\v trailing vt",
        ]
    lines.append(f"ssh-rsa {token[:-1]}\v= vt between the pads")
    ours = assert_agrees(tmp_path, lines)
    assert len(ours) == len(lines)


def test_base64_padding_rules_match(tmp_path: Path) -> None:
    bad = []
    for pad in (1, 2):
        token = b64(_padded_rsa_blob(pad))
        bad += [
            f"ssh-rsa {token.rstrip('=')} padding missing",
            f"ssh-rsa {_bump_last_char(token)} non-zero pad bits",
            f"ssh-rsa {token}AAAA data after the padding",
            f"ssh-rsa {token}= one pad too many",
        ]
    assert_all_refused(tmp_path, bad)


def _identity_variants(tmp_path: Path) -> dict[str, bytes]:
    """An openssh-key-v1 file whose base64 ends in padding, and variants of its body."""
    for length in range(1, 30):
        path = tmp_path / f"id{length}"
        keygen("-t", "ed25519", "-N", "", "-C", "c" * length, "-f", str(path), cwd=tmp_path)
        data = path.read_bytes()
        lines = data.split(b"\n")
        if lines[-3].endswith(b"="):
            break
    else:
        raise AssertionError("no comment length gave a padded body")
    body = lines[1:-2]

    def variant(new_body: list[bytes]) -> bytes:
        return b"\n".join([lines[0], *new_body, *lines[-2:]])

    last = body[-1].decode()
    return {
        "as written": data,
        "space inside a line": variant([body[0][:10] + b" " + body[0][10:], *body[1:]]),
        "tab inside a line": variant([body[0][:10] + b"\t" + body[0][10:], *body[1:]]),
        "vt inside a line": variant([body[0][:10] + b"\v" + body[0][10:], *body[1:]]),
        "trailing blanks": variant([line + b"  " for line in body]),
        "blank line inside": variant([body[0], b"", *body[1:]]),
        "space before the padding": variant([*body[:-1], last[:-1].encode() + b" ="]),
        "padding missing": variant([*body[:-1], last.rstrip("=").encode()]),
        "non-zero pad bits": variant([*body[:-1], _bump_last_char(last).encode()]),
        "data after the padding": variant([*body[:-1], last.encode() + b"AAAA"]),
        "an RFC 1421 header": variant([b"Comment: x", *body]),
    }


def test_identity_file_base64_matches_ssh_keygen(tmp_path: Path) -> None:
    """ssh-keygen -l on a private key file without its .pub reads the public half from the
    openssh-key-v1 body (private2_uudecode + b64_pton): we accept and refuse the same bodies."""
    from agent.ssh.keys import parse_public_blob
    from agent.ssh.privkey import InvalidPrivateKey, parse_private_key_file

    accepted, refused = [], []
    for name, data in _identity_variants(tmp_path).items():
        path = tmp_path / "variant"
        path.write_bytes(data)
        path.chmod(0o600)
        printed = keygen_list(path, "sha256")
        try:
            parsed = parse_private_key_file(data)
        except InvalidPrivateKey:
            assert printed == [], f"{name}: ssh-keygen reads it, we refuse it"
            refused.append(name)
            continue
        assert parsed.public_blob is not None
        assert [p.fingerprint for p in printed] == [parse_public_blob(parsed.public_blob).fingerprint], name
        accepted.append(name)
    assert sorted(accepted) == sorted(
        [
            "as written",
            "space inside a line",
            "tab inside a line",
            "vt inside a line",
            "trailing blanks",
            "blank line inside",
            "space before the padding",
        ]
    )
    assert sorted(refused) == sorted(
        ["padding missing", "non-zero pad bits", "data after the padding", "an RFC 1421 header"]
    )
