"""Append-only, hash-chained SQLite ledger: every decision the terminal makes.

This module owns the ledger file: its schema and numbered migrations, appending
entries (committed and fsynced before ``append`` returns), the hash chain,
checkpoints signed with the terminal's own Ed25519 key, the read queries the
policy needs, marking entries acknowledged by the county server, and offline
verification, export and statistics. It never edits or deletes an entry, never
reads a clock (times are arguments) and imports no device or network library.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Entry kinds.
SALE = "sale"  # an accepted or refused presentation / swipe (verdict says which)
REVERSAL = "reversal"  # staff undid an accepted sale; ref_seq names it
TOKEN_CHECK = "token_check"  # verify-token --ledger: token checks only, no meal policy
CLOCK_FAULT = "clock_fault"  # wall clock behind the trusted-time floor
CONFIG_APPLIED = "config_applied"  # settings / lists version now in force
TIME_SIGNAL = "time_signal"  # signed time received (raises the floor)
GENESIS = "genesis"  # seq 1: terminal id and checkpoint public key

ACCEPT = "accept"
REJECT = "reject"


@dataclass(frozen=True)
class EntryDraft:
    """What the decision worker asks the ledger to record. Hashed, never edited."""

    kind: str
    verdict: str | None = None  # ACCEPT / REJECT for decisions, None otherwise
    reason: str | None = None  # reason code for a refusal (docs/reasons.md)
    method: str | None = None  # "qr" or "card"
    cadre: str | None = None  # "iss/sub" for QR, roster cadre id "card/<cadre>" for cards
    credential: str | None = None  # "qr/<iss>/<cti hex>" or "card/<uid hex>"
    ctr: int | None = None  # presentation counter (QR only)
    unit: str | None = None
    day: str | None = None  # local service day, "YYYY-MM-DD"
    meal: str | None = None  # meal window name, e.g. "lunch"
    amount_fen: int = 0
    ref_seq: int | None = None  # the entry a reversal reverses
    detail: dict[str, Any] = field(default_factory=dict)  # JSON-able extras


@dataclass(frozen=True)
class LedgerEntry(EntryDraft):
    """A committed entry."""

    seq: int = 0
    entry_id: str = ""
    at_ms: int = 0  # trusted time, Unix milliseconds UTC
    prev_hash: bytes = b""
    hash: bytes = b""
    acked_at_ms: int | None = None
