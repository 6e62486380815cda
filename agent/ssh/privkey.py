"""Identity (private) key files: the public part and whether a passphrase protects it.

Pure: bytes in, values out. The private material is never kept, returned, logged or
put in an exception: every error is an `InvalidPrivateKey` with a fixed reason, raised
`from None` so no underlying exception (which could carry data) is chained.

Formats:
  "openssh"  openssh-key-v1 (ssh-keygen's default): the public key is stored in the clear,
             so it is known even when the file is encrypted.
  "pem-rsa" / "pem-dsa" / "pem-ec"  traditional OpenSSL PEM ("-m PEM").
  "pkcs8"    PKCS#8 PEM ("-m PKCS8"); "ENCRYPTED PRIVATE KEY" is PKCS#8 with a passphrase.
  "putty"    PuTTY .ppk v2/v3: the public key is in the clear as well.
Encrypted PEM/PKCS#8 files reveal no public key without the passphrase: public_blob is None.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass

from agent.ssh.wire import WireError, b64decode, cstring, put_mpint, put_string, string, uint

OPENSSH_BEGIN = b"-----BEGIN OPENSSH PRIVATE KEY-----"
OPENSSH_END = b"-----END OPENSSH PRIVATE KEY-----"
OPENSSH_MAGIC = b"openssh-key-v1\x00"

_PEM_LABELS = {
    b"RSA PRIVATE KEY": "pem-rsa",
    b"DSA PRIVATE KEY": "pem-dsa",
    b"EC PRIVATE KEY": "pem-ec",
    b"PRIVATE KEY": "pkcs8",
    b"ENCRYPTED PRIVATE KEY": "pkcs8",
}
_BEGIN_RE = re.compile(rb"-----BEGIN ((?:OPENSSH |RSA |DSA |EC |ENCRYPTED )?PRIVATE KEY)-----")
_PUTTY_RE = re.compile(rb"PuTTY-User-Key-File-[23]: ")
# OpenSSH supports these for openssh-key-v1 (cipher.c); anything else is not an SSH key file.
_KDFS = frozenset({b"none", b"bcrypt"})


class InvalidPrivateKey(ValueError):
    """The file is not a usable private key. The message is a fixed reason, never file content."""


@dataclass(frozen=True)
class IdentityKeyFile:
    public_blob: bytes | None  # SSH wire-format public key; None when it cannot be known
    encrypted: bool
    format: str


def looks_like_private_key(head: bytes) -> bool:
    """Whether the first bytes of a file are a private key header (cheap pre-filter)."""
    start = head.lstrip(b"\xef\xbb\xbf").lstrip()
    return _BEGIN_RE.match(start) is not None or _PUTTY_RE.match(start) is not None


def parse_private_key_file(data: bytes) -> IdentityKeyFile:
    start = data.lstrip(b"\xef\xbb\xbf").lstrip()
    if _PUTTY_RE.match(start):
        return _parse_putty(start)
    match = _BEGIN_RE.match(start)
    if match is None:
        raise InvalidPrivateKey("not a private key file")
    label = match.group(1)
    if label == b"OPENSSH PRIVATE KEY":
        return _parse_openssh(start)
    return _parse_pem(start, label)


# --------------------------------------------------------------------------- openssh-key-v1


def _armored_body(data: bytes, begin: bytes, end: bytes) -> tuple[list[bytes], list[bytes]]:
    """(header lines, other lines) between the BEGIN and END markers, each stripped of blanks.

    The framing is more forgiving than OpenSSH's (a leading BOM or blank, CRLF line ends): a
    private key on disk is worth reporting even when ssh would stumble over its framing.
    """
    lines = [line.strip() for line in data.splitlines()]
    if not lines or lines[0] != begin:
        raise InvalidPrivateKey("missing begin marker")
    try:
        end_index = lines.index(end, 1)
    except ValueError:
        raise InvalidPrivateKey("missing end marker") from None
    body = [line for line in lines[1:end_index] if line]
    headers = [line for line in body if b":" in line]
    return headers, [line for line in body if b":" not in line]


def _parse_openssh(data: bytes) -> IdentityKeyFile:
    headers, body = _armored_body(data, OPENSSH_BEGIN, OPENSSH_END)
    try:
        # private2_uudecode: every byte between the markers is base64 text (no RFC 1421 headers).
        if headers:
            raise WireError("header in openssh-key-v1 body")
        raw = b64decode(b"".join(body))
    except WireError:
        raise InvalidPrivateKey("invalid base64 in private key") from None
    if not raw.startswith(OPENSSH_MAGIC):
        raise InvalidPrivateKey("bad openssh-key-v1 magic")
    try:
        pos = len(OPENSSH_MAGIC)
        cipher, pos = cstring(raw, pos)
        kdf, pos = cstring(raw, pos)
        _kdf_options, pos = string(raw, pos)  # salt, rounds
        count, pos = uint(raw, pos, 4)
        if count != 1:
            # OpenSSH itself only reads files holding exactly one key.
            raise InvalidPrivateKey("unsupported number of keys in private key file")
        public_blob, pos = string(raw, pos)
        _private, pos = string(raw, pos)  # the (possibly encrypted) private section: never kept
        if pos != len(raw):
            raise WireError("trailing bytes")
        cstring(public_blob, 0)  # the public key must at least name its type
    except WireError:
        raise InvalidPrivateKey("malformed openssh-key-v1 structure") from None
    if kdf not in _KDFS:
        raise InvalidPrivateKey("unsupported key derivation function")
    if (cipher == b"none") != (kdf == b"none"):
        raise InvalidPrivateKey("inconsistent cipher and key derivation function")
    return IdentityKeyFile(public_blob=public_blob, encrypted=cipher != b"none", format="openssh")


# --------------------------------------------------------------------------- PEM / PKCS#8


def _parse_pem(data: bytes, label: bytes) -> IdentityKeyFile:
    fmt = _PEM_LABELS[label]
    headers, _ = _armored_body(data, b"-----BEGIN " + label + b"-----", b"-----END " + label + b"-----")
    proc_type = [h for h in headers if h.lower().startswith(b"proc-type:")]
    if label == b"ENCRYPTED PRIVATE KEY" or any(b"ENCRYPTED" in h.upper() for h in proc_type):
        return IdentityKeyFile(public_blob=None, encrypted=True, format=fmt)
    return IdentityKeyFile(public_blob=_pem_public_blob(data), encrypted=False, format=fmt)


def _pem_public_blob(data: bytes) -> bytes:
    # Imported here: only PEM files need `cryptography`, and the import is not free.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import dsa

    try:
        key = serialization.load_pem_private_key(data, password=None, unsafe_skip_rsa_key_validation=True)
    except TypeError:
        raise InvalidPrivateKey("private key is encrypted") from None
    except (ValueError, binascii.Error):
        raise InvalidPrivateKey("malformed PEM private key") from None
    except Exception:  # cryptography's unsupported-algorithm and backend errors
        raise InvalidPrivateKey("unsupported PEM private key") from None
    public = key.public_key()
    if isinstance(public, dsa.DSAPublicKey):
        # Encoded by hand: cryptography's SSH DSA serialisation emits a deprecation warning.
        numbers = public.public_numbers()
        params = numbers.parameter_numbers
        return (
            put_string(b"ssh-dss")
            + put_mpint(params.p)
            + put_mpint(params.q)
            + put_mpint(params.g)
            + put_mpint(numbers.y)
        )
    try:
        text = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    except Exception:  # e.g. an EC curve SSH has no name for
        raise InvalidPrivateKey("key type not usable with SSH") from None
    parts = text.split(b" ")
    try:
        return b64decode(parts[1])
    except (IndexError, WireError):
        raise InvalidPrivateKey("key type not usable with SSH") from None


# --------------------------------------------------------------------------- PuTTY


def _parse_putty(data: bytes) -> IdentityKeyFile:
    lines = data.splitlines()
    fields: dict[bytes, bytes] = {}
    public_lines: list[bytes] = []
    index = 0
    while index < len(lines):
        name, sep, value = lines[index].partition(b": ")
        index += 1
        if not sep:
            raise InvalidPrivateKey("malformed PuTTY key file")
        fields[name.lower()] = value.strip()
        if name.lower() == b"public-lines":
            try:
                count = int(value.strip())
            except ValueError:
                raise InvalidPrivateKey("malformed PuTTY key file") from None
            if count < 0 or index + count > len(lines):
                raise InvalidPrivateKey("malformed PuTTY key file")
            public_lines = [line.strip() for line in lines[index : index + count]]
            break
    if b"encryption" not in fields or not public_lines:
        raise InvalidPrivateKey("malformed PuTTY key file")
    try:
        blob = b64decode(b"".join(public_lines))
        cstring(blob, 0)
    except WireError:
        raise InvalidPrivateKey("invalid public key in PuTTY key file") from None
    return IdentityKeyFile(public_blob=blob, encrypted=fields[b"encryption"] != b"none", format="putty")
