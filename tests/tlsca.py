"""A throwaway certificate authority for TLS tests on loopback (nothing here is fit for production).

    tls = write_loopback_tls(tmp_path / "tls")
    with ControlPlane.start(tls=tls.server_context()) as cp:  # cp.url is https://127.0.0.1:PORT
        ApiClient(cp.url, ca_file=str(tls.ca_file))

Keys are ECDSA P-256 (every OpenSSL build verifies them) and live only in the files written here.
The extensions are the ones OpenSSL's strict verification (VERIFY_X509_STRICT, on by default in
Python 3.13's ssl.create_default_context) asks for, so the certificates keep verifying there too.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Both CAs share this subject on purpose: the negative test then proves the client checks the
# signature, not merely that some trusted CA has the issuer's name.
CA_NAME = "sshklm test CA"
LOOPBACK_IP = ipaddress.IPv4Address("127.0.0.1")
VALID_BEFORE_NOW = dt.timedelta(hours=1)  # tolerate a little clock skew between signing and checking
VALID_AFTER_NOW = dt.timedelta(days=1)


@dataclass(frozen=True)
class LoopbackTls:
    """PEM files of a test CA and of a 127.0.0.1/localhost server certificate it signed."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


@dataclass(frozen=True)
class _Authority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity() -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.UTC)
    return now - VALID_BEFORE_NOW, now + VALID_AFTER_NOW


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _new_authority() -> _Authority:
    key = _new_key()
    not_before, not_after = _validity()
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(CA_NAME))
        .issuer_name(_name(CA_NAME))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _Authority(key, cert)


def _server_certificate(authority: _Authority, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    not_before, not_after = _validity()
    return (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(authority.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,  # ECDHE key exchange: the ECDSA key only signs
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(LOOPBACK_IP), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()), critical=False
        )
        .sign(authority.key, hashes.SHA256())
    )


def _write_pem(path: Path, data: bytes, mode: int = 0o644) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return path


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def write_loopback_tls(directory: Path) -> LoopbackTls:
    """A fresh CA and a server certificate for 127.0.0.1 and localhost, as PEM files in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    authority = _new_authority()
    server_key = _new_key()
    key_pem = server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return LoopbackTls(
        ca_file=_write_pem(directory / "ca.pem", _cert_pem(authority.cert)),
        cert_file=_write_pem(directory / "server.pem", _cert_pem(_server_certificate(authority, server_key))),
        key_file=_write_pem(directory / "server.key", key_pem, mode=0o600),
    )


def write_unrelated_ca(directory: Path) -> Path:
    """The PEM of another CA (same name, different key) that signed nothing the server presents."""
    directory.mkdir(parents=True, exist_ok=True)
    return _write_pem(directory / "unrelated-ca.pem", _cert_pem(_new_authority().cert))
