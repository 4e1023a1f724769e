"""The sync protocol's signed messages, as both sides build them (docs/sync-protocol.md).

This module owns the protocol version and the exact bytes the county's time signature
covers. It never opens a connection, never reads a clock (time is an argument) and
never touches a file: terminal/sync.py and county/app.py do those.
"""

from __future__ import annotations

import json
from typing import Any

import cbor2

PROTOCOL_VERSION = 1
TIME_DOMAIN = "canteen-county/time/v1"


def time_message(terminal_id: str, server_ms: int, acked_seq: int, nonce: bytes) -> bytes:
    """The bytes the county's time signature covers (canonical CBOR)."""
    return cbor2.dumps([TIME_DOMAIN, terminal_id, server_ms, acked_seq, nonce], canonical=True)


# --- the terminal's status, optional in an upload (docs/sync-protocol.md) ---------------

STATUS_MAX_BYTES = 2048  # of the status object as canonical JSON
SOFTWARE_MAX_CHARS = 64
STATUS_LISTS = ("issuers", "revocations", "roster")
_INT64_MAX = 2**63 - 1


class StatusInvalid(ValueError):
    """An upload's ``status`` object is not what the protocol allows; one line."""


def _count(doc: dict[str, Any], name: str, where: str = "status") -> int | None:
    value = doc.get(name)
    if value is None:
        return None
    if type(value) is not int or not 0 <= value <= _INT64_MAX:
        raise StatusInvalid(f"{where}.{name} must be a whole number from 0 up, or null")
    return value


def parse_status(doc: Any) -> dict[str, Any]:
    """The checked ``status`` of an upload: only the known fields, each of its type.

    ``software`` (text, at most 64 printable characters), ``last_seq`` (the newest
    entry of the ledger when the sync read it), ``update_set`` (the update set in
    force), ``lists`` (for issuers, revocations and roster: ``version`` and
    ``issued_at``, Unix seconds) and ``clock_trusted`` (a boolean). Every field may be
    absent or null; unknown fields are dropped (a newer terminal), and the whole
    object may take at most STATUS_MAX_BYTES of canonical JSON."""
    if not isinstance(doc, dict):
        raise StatusInvalid(f"status must be a JSON object, not {type(doc).__name__}")
    size = len(json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False))
    if size > STATUS_MAX_BYTES:
        raise StatusInvalid(f"status is larger than {STATUS_MAX_BYTES} bytes of JSON")
    out: dict[str, Any] = {}
    software = doc.get("software")
    if software is not None:
        if (
            not isinstance(software, str)
            or not 0 < len(software) <= SOFTWARE_MAX_CHARS
            or not software.isprintable()
        ):
            raise StatusInvalid(
                f"status.software must be 1 to {SOFTWARE_MAX_CHARS} printable characters"
            )
        out["software"] = software
    for name in ("last_seq", "update_set"):
        value = _count(doc, name)
        if value is not None:
            out[name] = value
    trusted = doc.get("clock_trusted")
    if trusted is not None:
        if not isinstance(trusted, bool):
            raise StatusInvalid("status.clock_trusted must be true, false or null")
        out["clock_trusted"] = trusted
    lists = doc.get("lists")
    if lists is not None:
        if not isinstance(lists, dict):
            raise StatusInvalid("status.lists must be an object")
        kept: dict[str, dict[str, int]] = {}
        for name, info in lists.items():
            if name not in STATUS_LISTS:
                continue
            if not isinstance(info, dict):
                raise StatusInvalid(f"status.lists.{name} must be an object")
            one = {k: _count(info, k, f"status.lists.{name}") for k in ("version", "issued_at")}
            kept[name] = {k: v for k, v in one.items() if v is not None}
        out["lists"] = kept
    return out
