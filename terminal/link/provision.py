"""Joining the county: provisioning, the identity files it pins, the county's signed time.

This module owns the terminal's side of provisioning in docs/sync-protocol.md:
``provision`` pins the county CA from the one-time code's fingerprint, trades a
CSR for a client certificate and stores the CA, the certificate, the TLS key and
the county's time key in the state directory (``county.json`` last: its presence
means every other file is in place); ``load_identity`` reads them back as a
``CountyIdentity``; ``check_signed_time`` verifies a county time signature (the
provisioning answer and every sync answer carry one). It talks to the county only
through terminal/link/transport.py and never touches the ledger.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import NameOID

from protocol.wire import time_message
from terminal.durable import fsync_dir, write_atomic
from terminal.link.transport import (
    Link,
    NotProvisioned,
    ProtocolError,
    ServerCertificateRefused,
    ServerRefused,
    problem_text,
)

# Files in the terminal's state directory (terminal/state.py owns the rest).
IDENTITY_FILE = "county.json"
CA_FILE = "county-ca.pem"
CERT_FILE = "sync-cert.pem"
TLS_KEY_FILE = "sync-key.pem"


@dataclass(frozen=True)
class CountyIdentity:
    """The terminal's county identity, pinned in its state directory at provisioning."""

    root: Path
    server: str
    terminal_id: str
    canteen: str
    time_key: bytes  # the county's Ed25519 time-signing public key (raw)
    ca_fingerprint: str
    provisioned_server_ms: int  # county time at provisioning: a lower bound for cert checks

    @property
    def ca_file(self) -> Path:
        return self.root / CA_FILE

    @property
    def cert_file(self) -> Path:
        return self.root / CERT_FILE

    @property
    def key_file(self) -> Path:
        return self.root / TLS_KEY_FILE


def load_identity(state_dir: str | Path) -> CountyIdentity:
    root = Path(state_dir)
    try:
        doc = json.loads((root / IDENTITY_FILE).read_text(encoding="utf-8"))
        identity = CountyIdentity(
            root=root,
            server=str(doc["server"]),
            terminal_id=str(doc["terminal_id"]),
            canteen=str(doc["canteen"]),
            time_key=bytes.fromhex(doc["time_key"]),
            ca_fingerprint=str(doc["ca_fingerprint"]),
            provisioned_server_ms=int(doc["provisioned_server_ms"]),
        )
    except FileNotFoundError:
        raise NotProvisioned(
            f"{root}: this terminal is not provisioned: run 'canteen-terminal provision "
            f"--state {root} --server URL --code CODE' with a code from county IT"
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise NotProvisioned(
            f"{root / IDENTITY_FILE} is damaged ({exc}): provision the terminal again"
        ) from None
    for path in (identity.ca_file, identity.cert_file, identity.key_file):
        if not path.is_file():
            raise NotProvisioned(f"{path} is missing: provision the terminal again")
    return identity


def ca_fingerprint(cert: x509.Certificate) -> str:
    """Lower-case base32 of SHA-256 over the CA's DER (a provisioning code carries a prefix)."""
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()
    return base64.b32encode(digest).decode("ascii").rstrip("=").lower()


def parse_code(code: str) -> tuple[str, str]:
    """(secret hex, CA fingerprint prefix) of a provisioning code ``SECRET-FINGERPRINT``."""
    secret, sep, fingerprint = code.strip().lower().partition("-")
    if not sep or len(fingerprint) < 26 or not secret:
        raise ServerRefused(
            "the provisioning code is malformed: copy the whole last line of "
            "'canteen-county terminal add' (two parts joined by '-')"
        )
    try:
        bytes.fromhex(secret)
    except ValueError:
        raise ServerRefused(
            "the provisioning code is malformed: its first part is not hex"
        ) from None
    return secret, fingerprint


def provision(
    state_dir: str | Path,
    server: str,
    code: str,
    ledger_public_key: bytes,
    *,
    timeout_s: float = 30.0,
) -> CountyIdentity:
    """Pin the county CA from the code, trade a CSR for a client certificate, store it all.

    The code carries a fingerprint of the county CA, so the first connection
    can be unauthenticated: the CA downloaded over it is kept only if its
    fingerprint matches, and the provisioning request itself is then sent over
    TLS verified against that CA.
    """
    root = Path(state_dir)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    if urlsplit(server).scheme != "https":
        raise ServerRefused(f"server {server!r}: must be an https:// address")
    secret, fingerprint = parse_code(code)
    deadline = time.monotonic() + timeout_s
    base = server.rstrip("/")

    # Not checked yet: the CA that comes back is kept only if the code's fingerprint matches.
    with Link(None, connect_timeout_s=timeout_s, read_timeout_s=timeout_s) as link:
        pem = link.get_bytes(base + "/v1/ca.pem", deadline)
    try:
        ca = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise ServerCertificateRefused("the server did not send a county CA certificate") from None
    if not ca_fingerprint(ca).startswith(fingerprint):
        raise ServerCertificateRefused(
            "the server's county CA does not match the provisioning code: this is not "
            "your county's server (or the code is mistyped); nothing was stored"
        )

    tls_key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "canteen terminal")]))
        .sign(tls_key, hashes.SHA256())
    )
    nonce = secrets.token_bytes(16)
    body = {
        "code": secret,
        "csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
        "ledger_key": ledger_public_key.hex(),
        "nonce": nonce.hex(),
    }
    with Link(ca, connect_timeout_s=timeout_s, read_timeout_s=timeout_s) as link:
        status, answer = link.post_json(
            base + "/v1/provision", json.dumps(body, separators=(",", ":")).encode(), deadline
        )
    if status != 200:
        raise ServerRefused(f"provisioning refused: {problem_text(answer, status)}")
    try:
        cert = x509.load_pem_x509_certificate(str(answer["certificate"]).encode())
        time_key = bytes.fromhex(answer["time_key"])
        terminal_id = str(answer["terminal_id"])
        canteen = str(answer["canteen"])
        signed = answer["time"]
        server_ms = check_signed_time(signed, terminal_id, 0, nonce, time_key)
    except (KeyError, ValueError, TypeError) as exc:
        raise ProtocolError(f"the provisioning answer is malformed: {exc}") from None
    if cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != tls_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise ProtocolError("the server sent a certificate for another key")

    write_atomic(
        root / TLS_KEY_FILE,
        tls_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        0o600,
    )
    write_atomic(root / CERT_FILE, cert.public_bytes(serialization.Encoding.PEM))
    write_atomic(root / CA_FILE, ca.public_bytes(serialization.Encoding.PEM))
    doc = {
        "server": base,
        "terminal_id": terminal_id,
        "canteen": canteen,
        "time_key": time_key.hex(),
        "ca_fingerprint": ca_fingerprint(ca),
        "provisioned_server_ms": server_ms,
    }
    # The identity file last: its presence means every other file is in place.
    write_atomic(root / IDENTITY_FILE, (json.dumps(doc, indent=2) + "\n").encode())
    fsync_dir(root)
    return load_identity(root)


def check_signed_time(
    signed: Any, terminal_id: str, acked: int | None, nonce: bytes, time_key: bytes
) -> int:
    """The county's server_ms from a signed time, or ProtocolError."""
    if not isinstance(signed, dict):
        raise ProtocolError("the answer has no signed time")
    server_ms = signed.get("server_ms")
    signed_acked = signed.get("acked_seq")
    if type(server_ms) is not int or type(signed_acked) is not int:
        raise ProtocolError("the signed time is malformed")
    if signed.get("terminal") != terminal_id or signed.get("nonce") != nonce.hex():
        raise ProtocolError("the signed time is for another terminal or request (a replay?)")
    if acked is not None and signed_acked != acked:
        raise ProtocolError("the signed time covers another acknowledged mark")
    try:
        Ed25519PublicKey.from_public_bytes(time_key).verify(
            bytes.fromhex(str(signed.get("signature"))),
            time_message(terminal_id, server_ms, signed_acked, nonce),
        )
    except (InvalidSignature, ValueError):
        raise ProtocolError(
            "the county's time signature does not verify with the pinned time key"
        ) from None
    return server_ms
