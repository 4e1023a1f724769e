"""The ledger's hash chain format, as the terminal writes it and the county checks it.

This module owns the entry kinds and verdicts, what an entry holds (``EntryDraft``,
``LedgerEntry``), the domain prefixes, the hashed columns and their order, the one
JSON spelling of an entry's detail, the entry hash and the bytes a checkpoint
signature covers (docs/ledger.md). It never opens a database and never reads a
clock: terminal/ledger.py and county/store.py do those.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cbor2

# Entry kinds.
SALE = "sale"  # an accepted or refused presentation / swipe (verdict says which)
REVERSAL = "reversal"  # staff undid an accepted sale; ref_seq names it
TOKEN_CHECK = "token_check"  # verify-token --ledger: token checks only, no meal policy
CLOCK_FAULT = "clock_fault"  # wall clock behind the trusted-time floor
CONFIG_APPLIED = "config_applied"  # settings / lists version now in force
TIME_SIGNAL = "time_signal"  # signed time received (raises the floor)
GENESIS = "genesis"  # seq 1: terminal id and checkpoint public key
PRUNED = "pruned"  # acknowledged entries up to a signed checkpoint were removed (retention)

# Verdicts of a decision entry.
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


# Domain prefixes keep a ledger hash or signature from ever being valid as
# anything else this project hashes or signs (tokens, updates, sync batches).
ENTRY_DOMAIN = b"canteen-terminal/ledger-entry/v1\x00"
CHECKPOINT_DOMAIN = "canteen-terminal/ledger-checkpoint/v1"
GENESIS_PREV_HASH = bytes(32)

# Hashed columns, in the order they are encoded. Changing this order or the
# encoding breaks every existing ledger: add a new schema version instead.
HASHED_COLUMNS = (
    "seq",
    "entry_id",
    "at_ms",
    "kind",
    "verdict",
    "reason",
    "method",
    "cadre",
    "credential",
    "ctr",
    "unit",
    "day",
    "meal",
    "amount_fen",
    "ref_seq",
    "detail",
)


def canonical_json(value: dict[str, Any]) -> str:
    """The one JSON spelling of ``detail`` that is stored and hashed."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def entry_hash(prev_hash: bytes, hashed_fields: Sequence[Any]) -> bytes:
    """SHA-256 of the domain, the previous hash and the canonical CBOR array of fields."""
    encoded = cbor2.dumps(tuple(hashed_fields), canonical=True)
    return hashlib.sha256(ENTRY_DOMAIN + prev_hash + encoded).digest()


def checkpoint_message(terminal_id: str, seq: int, chain_hash: bytes) -> bytes:
    """The bytes a checkpoint signature covers."""
    return cbor2.dumps([CHECKPOINT_DOMAIN, terminal_id, seq, chain_hash], canonical=True)
