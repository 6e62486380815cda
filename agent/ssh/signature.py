"""Certificate CA signatures, verified as OpenSSH 9.2's sshkey_verify (alg=NULL) verifies them.

Pure: the signed bytes, the signature blob and the CA's parsed public fields in, a verdict out.
`cryptography` is imported only when a signature is checked: plain keys (the scan's hot path)
never need it.

Verdicts are remembered (issue 11): a user's authorized_keys is parsed on every rescan and every
rewrite, and a certificate signed by a 16,384-bit RSA CA (OpenSSH's own limit, SSHBUF_MAX_BIGNUM:
sshd accepts it, so discovery must) costs milliseconds of RSA per parse, whether or not the
signature is any good. The memo maps a SHA-256 digest of (the CA's public fields, the signature,
the signed bytes) to the verdict, valid and invalid alike; it holds at most MEMO_ENTRIES digests
(least recently used out, ~1 MiB), shared by the threads of the process under one lock. A line
parsed again costs a hash; only new bytes cost a verification. (The function stays pure: the memo
returns what the verification would.)
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Final

from agent.ssh.keytypes import (
    CANONICAL,
    DSA,
    ECDSA,
    ECDSA_NAMES,
    ECDSA_SK,
    ED25519,
    ED25519_SK,
    P256,
    P384,
    P521,
    RSA,
    KeyFields,
)
from agent.ssh.wire import WireError, bignum, cstring, string, uint

__all__ = ["verify_signature"]

_RSA_SIG_HASHES: Final = {"ssh-rsa": "sha1", "rsa-sha2-256": "sha256", "rsa-sha2-512": "sha512"}
_EC_HASHES: Final = {P256: "sha256", P384: "sha384", P521: "sha512"}


MEMO_ENTRIES: Final = 8192

_memo: OrderedDict[bytes, bool] = OrderedDict()
_memo_lock = threading.Lock()


def verify_signature(ca: KeyFields, signature: bytes, data: bytes) -> bool:
    """Verify a certificate's CA signature exactly as far as OpenSSH's per-type verify functions parse it.

    Supported: ssh-ed25519, ecdsa-sha2-*, ssh-rsa/rsa-sha2-256/rsa-sha2-512, ssh-dss and the security-key
    types sk-ssh-ed25519@openssh.com and sk-ecdsa-sha2-nistp256@openssh.com. A webauthn-sk signature
    (only produced by browsers, never by ssh-keygen) is treated as invalid. Remembered: see above.
    """
    key = _memo_key(ca, signature, data)
    with _memo_lock:
        known = _memo.get(key)
        if known is not None:
            _memo.move_to_end(key)
            return known
    try:
        verdict = _verify(ca, signature, data)
    except WireError:  # a malformed signature blob
        verdict = False
    except ValueError:  # cryptography refusing degenerate key numbers
        verdict = False
    _remember(key, verdict)
    return verdict


def _memo_key(ca: KeyFields, signature: bytes, data: bytes) -> bytes:
    """A digest of everything the verdict depends on; each part length-prefixed (no ambiguity)."""
    h = hashlib.sha256()
    parts = [
        f"{ca.family}:{ca.curve}".encode(),
        *(n.to_bytes((n.bit_length() + 8) // 8, "big", signed=True) for n in ca.ints),
        ca.raw,
        ca.application,
        signature,
        data,
    ]
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()


def _remember(key: bytes, verdict: bool) -> None:
    with _memo_lock:
        _memo[key] = verdict
        _memo.move_to_end(key)
        while len(_memo) > MEMO_ENTRIES:
            _memo.popitem(last=False)


def _verify(ca: KeyFields, signature: bytes, data: bytes) -> bool:
    # Imported here: plain keys (the hot path) never need `cryptography`.
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    hash_by_name: dict[str, hashes.HashAlgorithm] = {
        "sha1": hashes.SHA1(),  # noqa: S303 - ssh-rsa/ssh-dss certificates are SHA-1 by definition
        "sha256": hashes.SHA256(),
        "sha384": hashes.SHA384(),
        "sha512": hashes.SHA512(),
    }
    sig_type_raw, pos = cstring(signature, 0)
    sig_type = sig_type_raw.decode("latin-1")
    family = ca.family
    try:
        if family == RSA:
            hash_name = _RSA_SIG_HASHES.get(sig_type)
            if hash_name is None:
                return False
            sig, pos = string(signature, pos)
            if pos != len(signature):
                return False
            e, n = ca.ints
            modlen = (n.bit_length() + 7) // 8
            if len(sig) > modlen:
                return False
            rsa.RSAPublicNumbers(e, n).public_key().verify(
                sig.rjust(modlen, b"\0"), data, padding.PKCS1v15(), hash_by_name[hash_name]
            )
            return True
        if family in (ED25519, ED25519_SK):
            expected = "ssh-ed25519" if family == ED25519 else "sk-ssh-ed25519@openssh.com"
            if sig_type != expected:
                return False
            sig, pos = string(signature, pos)
            message = data
            if family == ED25519_SK:
                message, pos = _sk_message(ca, signature, pos, data)
            if pos != len(signature) or len(sig) != 64:
                return False
            ed25519.Ed25519PublicKey.from_public_bytes(ca.raw).verify(sig, message)
            return True
        if family in (ECDSA, ECDSA_SK):
            assert ca.curve is not None
            if sig_type != (ECDSA_NAMES[ca.curve] if family == ECDSA else CANONICAL[ECDSA_SK]):
                return False
            inner, pos = string(signature, pos)
            r, ipos = bignum(inner, 0)
            s, ipos = bignum(inner, ipos)
            if ipos != len(inner):
                return False
            message = data
            if family == ECDSA_SK:
                message, pos = _sk_message(ca, signature, pos, data)
            if pos != len(signature):
                return False
            curve: ec.EllipticCurve = {P256: ec.SECP256R1(), P384: ec.SECP384R1(), P521: ec.SECP521R1()}[
                ca.curve
            ]
            x, y = ca.ints
            ec.EllipticCurvePublicNumbers(x, y, curve).public_key().verify(
                encode_dss_signature(r, s), message, ec.ECDSA(hash_by_name[_EC_HASHES[ca.curve]])
            )
            return True
        if family == DSA:
            if sig_type != "ssh-dss":
                return False
            sig, pos = string(signature, pos)
            if pos != len(signature) or len(sig) != 40:
                return False
            p, q, g, y = ca.ints
            key = dsa.DSAPublicNumbers(y, dsa.DSAParameterNumbers(p, q, g)).public_key()
            der = encode_dss_signature(int.from_bytes(sig[:20], "big"), int.from_bytes(sig[20:], "big"))
            key.verify(der, data, hash_by_name["sha1"])
            return True
    except InvalidSignature:
        return False
    return False


def _sk_message(ca: KeyFields, signature: bytes, pos: int, data: bytes) -> tuple[bytes, int]:
    """FIDO signatures cover sha256(application) || flags || counter || sha256(data)."""
    flags, pos = uint(signature, pos, 1)
    counter, pos = uint(signature, pos, 4)
    message = (
        hashlib.sha256(ca.application).digest()
        + bytes([flags])
        + counter.to_bytes(4, "big")
        + hashlib.sha256(data).digest()
    )
    return message, pos
