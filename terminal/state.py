"""The terminal's state directory: where its ledger, trust store and key live.

This module owns the layout of the state directory and opening what is in it,
so every command and the daemon find the same files in the same places:

    DIR/ledger.sqlite        the hash-chained ledger (terminal/ledger.py)
    DIR/trust.sqlite         issuer keys, revocations, card roster (terminal/trust.py)
    DIR/terminal-key.pem     the terminal's Ed25519 key that signs ledger checkpoints
    DIR/county.json          the county identity from provisioning (terminal/sync.py)
    DIR/ledger-verified.json the last checkpoint a start verified (docs/ledger.md)
    DIR/county-acked.json    the hash of the highest entry the county acknowledged
    DIR/state.lock           held (flock) by the one process that writes here

It also owns the one-writer rule (``lock``), the identity a provisioned
directory gives every command (``identity``), and the ledger check a daemon
runs before it appends (``check_ledger``). It never decides a verdict and never
reads a clock: the caller passes the time that a new ledger's first entry carries.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from terminal import config
from terminal.durable import write_atomic
from terminal.ledger import (
    ChainMark,
    Ledger,
    LedgerError,
    StartCheck,
    check_at_start,
    load_or_create_signing_key,
)
from terminal.trust import TrustStore

LEDGER_FILE = "ledger.sqlite"
TRUST_FILE = "trust.sqlite"
KEY_FILE = "terminal-key.pem"
IDENTITY_FILE = "county.json"  # written by terminal/sync.py at provisioning
VERIFIED_FILE = "ledger-verified.json"
ACKED_FILE = "county-acked.json"
LOCK_FILE = "state.lock"


class StateError(Exception):
    """The state directory cannot be used; the message says which path and why."""


class StateInUse(StateError):
    """Another process holds the state directory's lock (the daemon, or a command)."""

    def __init__(self, root: Path, holder: dict[str, Any], instead: str | None = None) -> None:
        self.root = root
        self.holder = holder
        self.pid = holder.get("pid")
        self.daemon = holder.get("program") == DAEMON
        what = "the terminal daemon" if self.daemon else f"'{holder.get('program', 'a command')}'"
        pid = f" (pid {self.pid})" if self.pid else ""
        text = f"{what} is running on {root}{pid}"
        if instead is not None:
            first = (
                "stop it first (systemctl stop canteen-terminal)"
                if self.daemon
                else "wait until it has finished"
            )
            text += f": {first}, or {instead}"
        super().__init__(text)


DAEMON = "canteen-terminal run"


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

    @property
    def identity(self) -> Path:
        return self.root / IDENTITY_FILE

    @property
    def verified(self) -> Path:
        return self.root / VERIFIED_FILE

    @property
    def acked(self) -> Path:
        return self.root / ACKED_FILE

    @property
    def lock(self) -> Path:
        return self.root / LOCK_FILE


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


# ---- one writer per state directory ----


class StateLock:
    """An exclusive flock on DIR/state.lock, held until ``release`` or the process ends.

    flock, not a pid file: the kernel drops it when its holder dies, even by
    SIGKILL, so a crash never leaves a directory locked. The file itself stays;
    it names the holder (pid and program) for the message others get.
    """

    def __init__(self, root: Path, fd: int) -> None:
        self.root = root
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def lock(root: str | Path, program: str, instead: str | None = None) -> StateLock:
    """Take the state directory for ``program``, or raise StateInUse naming who holds it.

    ``instead`` is what a command's user can do rather than wait (said after
    "stop it first, or"): the one line a technician gets names both.
    """
    paths = prepare(root)
    try:
        fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StateError(f"{paths.lock}: cannot open the lock file: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StateInUse(paths.root, _holder(paths.lock), instead) from None
    except OSError as exc:
        os.close(fd)
        raise StateError(f"{paths.lock}: cannot lock: {exc.strerror}") from None
    # Who holds it, for whoever is refused; not durable on purpose (it only
    # matters while this process lives).
    note = json.dumps({"pid": os.getpid(), "program": program}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, note, 0)
    return StateLock(paths.root, fd)


def _holder(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        doc = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(doc, dict):
            return doc
    return {}


# ---- who this terminal is ----


@dataclass(frozen=True)
class Identity:
    """What provisioning pinned: the ids the county knows this terminal and canteen by."""

    terminal_id: str
    canteen_id: str


def identity(root: str | Path) -> Identity | None:
    """The provisioned identity of a state directory; None when it is not provisioned."""
    path = StatePaths(Path(root)).identity
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return Identity(str(doc["terminal_id"]), str(doc["canteen"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StateError(f"{path} is damaged ({exc}): provision the terminal again") from None


# ---- the ledger check at start, and the county's acknowledged hash ----


def _read_mark(path: Path) -> ChainMark | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return ChainMark(int(doc["seq"]), bytes.fromhex(doc["hash"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # Written whole by write_atomic, so a power cut cannot damage it: someone did.
        raise StateError(f"{path} is damaged ({exc})") from None


def _write_mark(path: Path, mark: ChainMark) -> None:
    doc = {"seq": mark.seq, "hash": mark.hash.hex()}
    write_atomic(path, (json.dumps(doc) + "\n").encode(), 0o600)


def check_ledger(root: str | Path) -> StartCheck:
    """Check the ledger before a daemon appends to it; remember how far it verified.

    Read-only on the ledger: a broken file stays exactly as found, for county IT.
    A new state directory (no ledger yet) passes.
    """
    paths = StatePaths(Path(root))
    if not paths.ledger.exists():
        if paths.acked.exists() or paths.verified.exists():
            # A new ledger here would start a second history under the same terminal.
            return StartCheck(
                False,
                f"the ledger {paths.ledger} is gone, but this terminal has had one: "
                "restore it from backup or call county IT",
                1,
                0,
                None,
            )
        return StartCheck(True, None, None, 0, None)
    if not paths.key.exists():
        return StartCheck(
            False,
            f"the terminal key {paths.key} is missing: the ledger cannot be checked",
            None,
            0,
            None,
        )
    try:
        key = load_or_create_signing_key(paths.key)
        acked = _read_mark(paths.acked)
        verified = _read_mark(paths.verified)
    except (LedgerError, StateError) as exc:
        return StartCheck(False, str(exc), None, 0, None)
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    result = check_at_start(paths.ledger, public, verified, acked)
    if result.ok and result.verified_to is not None and result.verified_to != verified:
        try:
            _write_mark(paths.verified, result.verified_to)
        except OSError as exc:
            # Only the next start's speed depends on it.
            raise StateError(f"{paths.verified}: cannot write: {exc.strerror}") from None
    return result


def record_acked(root: str | Path, book: Ledger) -> ChainMark | None:
    """Keep the hash of the highest entry the county acknowledged, outside the ledger.

    Called by the ledger's writer after it marks entries acknowledged. It only
    moves forward; a rewrite of the ledger does not rewrite this file.
    """
    paths = StatePaths(Path(root))
    newest = book.last_acked()
    if newest is None:
        return None
    kept = _read_mark(paths.acked)
    if kept is not None and kept.seq >= newest.seq:
        return kept
    try:
        _write_mark(paths.acked, newest)
    except OSError as exc:
        raise StateError(f"{paths.acked}: cannot write: {exc.strerror}") from None
    return newest


# The ids of terminal/defaults.toml: no settings file named a terminal, nothing to correct.
_EMBEDDED_IDS = ("demo-terminal", "demo-canteen")


def with_identity(settings: config.Settings) -> config.Settings:
    """The settings with the terminal and canteen ids of a provisioned state directory.

    What the county registered is what the ledger, sync and updates must use;
    the settings' ids only name an unprovisioned terminal (a demo, a bench).
    """
    ident = identity(settings.state_dir)
    if ident is None:
        return settings
    named = (settings.terminal_id, settings.canteen_id)
    if named != (ident.terminal_id, ident.canteen_id) and named != _EMBEDDED_IDS:
        # Not an error (the county's registration is right), but a technician reading the
        # settings file should learn it names another terminal.
        logging.getLogger("canteen.state").warning(
            "the settings name terminal %s at canteen %s, but %s is provisioned as %s at %s: "
            "using the county's; correct [terminal] id and [canteen] id",
            settings.terminal_id,
            settings.canteen_id,
            settings.state_dir,
            ident.terminal_id,
            ident.canteen_id,
        )
    return dataclasses.replace(settings, terminal_id=ident.terminal_id, canteen_id=ident.canteen_id)
