"""The terminal's own signing key file: the Ed25519 key its ledger checkpoints are signed with.

This module owns ``terminal-key.pem``: reading it (PEM, or 32 raw bytes), creating
it once (mode 0600, written whole or not at all) and the raw public key bytes the
ledger and the county pin. It never signs anything itself, never replaces an
existing key (a new key cannot sign an existing ledger) and never opens the ledger.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from terminal.durable import write_atomic
from terminal.ledger_schema import LedgerError


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    """The 32 raw bytes of ``key``'s public half, as the ledger's meta row holds them."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_or_create_signing_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Load the terminal's Ed25519 key (PEM or 32 raw bytes), creating it (0600) if absent."""
    file = Path(path)
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        return _create_signing_key(file)
    except OSError as exc:
        raise LedgerError(f"cannot read the terminal key {file}: {exc}") from exc
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise LedgerError(f"terminal key {file} is not a readable PEM key: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise LedgerError(f"terminal key {file} is not an Ed25519 key")
        return key
    if len(data) == 32:
        return Ed25519PrivateKey.from_private_bytes(data)
    raise LedgerError(
        f"terminal key {file} is neither PEM nor 32 raw bytes; restore it from backup — "
        "a new key cannot sign this terminal's existing ledger"
    )


def _create_signing_key(file: Path) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        # Beside the target, then renamed: a crash leaves no half-written key.
        write_atomic(file, pem, 0o600)
    except OSError as exc:
        raise LedgerError(f"cannot create the terminal key {file}: {exc}") from exc
    return key
