"""The county's certificate authority, server certificate and time-signing key.

This module owns the county's key material in its data directory: making the
CA (an ECDSA P-256 key and a self-signed certificate), the HTTPS server
certificate it signs (SAN 127.0.0.1 and localhost, plus names the operator
adds), terminal client certificates issued from a CSR, the Ed25519 key that
signs the server's time, and the CA fingerprint that a provisioning code
carries. It never talks to the network and never decides whether a terminal
may have a certificate: the store checks the one-time code first.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
SERVER_CERT = "server.pem"
SERVER_KEY = "server-key.pem"
TIME_KEY = "time-key.pem"

# Characters of the CA fingerprint a provisioning code carries: 32 base32
# characters are 160 bits, far beyond any second-preimage search.
CODE_FINGERPRINT_CHARS = 32

CA_DAYS = 3650
SERVER_DAYS = 825
TERMINAL_DAYS = 1825


class CAError(Exception):
    """The county's key material is missing, unreadable or refuses a request."""


@dataclass(frozen=True)
class CAPaths:
    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / CA_CERT

    @property
    def ca_key(self) -> Path:
        return self.root / CA_KEY

    @property
    def server_cert(self) -> Path:
        return self.root / SERVER_CERT

    @property
    def server_key(self) -> Path:
        return self.root / SERVER_KEY

    @property
    def time_key(self) -> Path:
        return self.root / TIME_KEY


def ca_fingerprint(cert: x509.Certificate) -> str:
    """Lower-case base32 (no padding) of SHA-256 over the certificate's DER."""
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()
    return base64.b32encode(digest).decode("ascii").rstrip("=").lower()


def cert_sha256(der: bytes) -> str:
    """Hex SHA-256 of a DER certificate: how the store names a terminal's certificate."""
    return hashlib.sha256(der).hexdigest()


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _pem_key(key: ec.EllipticCurvePrivateKey | Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def init_ca(root: Path, hosts: tuple[str, ...] = ()) -> CAPaths:
    """Make the CA, the server certificate and the time key; refuse to overwrite a CA."""
    paths = CAPaths(root)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    if paths.ca_key.exists():
        raise CAError(
            f"{paths.ca_key} already exists: this county already has a CA; every provisioned "
            "terminal pins it, so it is never replaced by 'ca init'"
        )
    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "canteen county CA")])
    now = _now()
    ca = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(paths.ca_key, _pem_key(ca_key))
    paths.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    issue_server_cert(paths, hosts)
    _write_private(paths.time_key, _pem_key(Ed25519PrivateKey.generate()))
    return paths


def load_ca(paths: CAPaths) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    except FileNotFoundError:
        raise CAError(
            f"no county CA in {paths.root}: run 'canteen-county ca init --data {paths.root}'"
        ) from None
    except ValueError as exc:
        raise CAError(f"the county CA in {paths.root} is unreadable: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CAError(f"{paths.ca_key} is not an ECDSA key")
    return cert, key


def load_ca_cert(paths: CAPaths) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    except FileNotFoundError:
        raise CAError(
            f"no county CA in {paths.root}: run 'canteen-county ca init --data {paths.root}'"
        ) from None


def load_time_key(paths: CAPaths) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(paths.time_key.read_bytes(), password=None)
    except FileNotFoundError:
        raise CAError(
            f"no time key in {paths.root}: run 'canteen-county ca init --data {paths.root}'"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CAError(f"{paths.time_key} is not an Ed25519 key")
    return key


def _aki(ca: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def issue_server_cert(paths: CAPaths, hosts: tuple[str, ...] = ()) -> None:
    """(Re)issue the HTTPS certificate for 127.0.0.1, localhost and ``hosts``."""
    ca, ca_key = load_ca(paths)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in ("127.0.0.1", "localhost", *hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "canteen county server")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(_aki(ca), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(paths.server_key, _pem_key(key))
    paths.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def issue_terminal_cert(paths: CAPaths, csr_pem: bytes, terminal_id: str) -> x509.Certificate:
    """A client certificate for ``terminal_id`` over the CSR's key (its subject is ignored)."""
    ca, ca_key = load_ca(paths)
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise CAError(f"the certificate request is not a PEM CSR: {exc}") from None
    if not csr.is_signature_valid:
        raise CAError("the certificate request's signature does not verify")
    public = csr.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise CAError("the certificate request must carry an ECDSA (P-256) key")
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, terminal_id)]))
        .issuer_name(ca.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=TERMINAL_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(_aki(ca), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
