"""The terminal's state directory: where its ledger, trust store and key live.

This module owns the layout of the state directory and opening what is in it,
so every command and the daemon find the same files in the same places:

    DIR/ledger.sqlite        the hash-chained ledger (terminal/ledger.py)
    DIR/trust.sqlite         issuer keys, revocations, card roster (terminal/trust.py)
    DIR/terminal-key.pem     the terminal's Ed25519 key that signs ledger checkpoints

It never decides anything and never reads a clock: the caller passes the time
that a new ledger's first entry carries.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from terminal.ledger import Ledger, load_or_create_signing_key
from terminal.trust import TrustStore

LEDGER_FILE = "ledger.sqlite"
TRUST_FILE = "trust.sqlite"
KEY_FILE = "terminal-key.pem"


class StateError(Exception):
    """The state directory cannot be used; the message says which path and why."""


@dataclass(frozen=True)
class StatePaths:
    root: Path

    @property
    def ledger(self) -> Path:
        return self.root / LEDGER_FILE

    @property
    def trust(self) -> Path:
        return self.root / TRUST_FILE

    @property
    def key(self) -> Path:
        return self.root / KEY_FILE


def prepare(root: str | Path) -> StatePaths:
    """Create the state directory (mode 0700) if it is missing."""
    paths = StatePaths(Path(root))
    try:
        paths.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StateError(
            f"{paths.root}: cannot create the state directory: {exc.strerror}"
        ) from None
    if not os.access(paths.root, os.W_OK):
        raise StateError(f"{paths.root}: the state directory is not writable by this user")
    return paths


def open_ledger(path: Path, key_path: Path, terminal_id: str, now_ms: int) -> Ledger:
    key = load_or_create_signing_key(key_path)
    return Ledger.open(path, terminal_id=terminal_id, signing_key=key, now_ms=now_ms)


def open_state(root: str | Path, terminal_id: str, now_ms: int) -> tuple[Ledger, TrustStore]:
    paths = prepare(root)
    ledger = open_ledger(paths.ledger, paths.key, terminal_id, now_ms)
    return ledger, TrustStore(paths.trust)
