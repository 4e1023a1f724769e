"""The ledger recovery file: a dead terminal's ledger, carried from its SD card to the county.

This module owns the file's format, which the terminal writes
(``canteen-terminal ledger export --format recovery``) and the county reads
(``canteen-county terminal recover``, county/replacement.py). It is JSON lines, UTF-8:

- line 1, the header: ``{"format": "canteen-ledger-recovery", "version": 1,
  "terminal_id": ..., "public_key": HEX, "first_seq": N, "last_seq": M,
  "entries": COUNT, "checkpoints": [[seq, hash hex, at_ms, signature hex], ...]}``.
  The checkpoints are the ledger key's signatures over entries of the file, the last
  one over its last entry (the export signs it, as a sync signs a batch's last entry);
- then one line per entry, in sequence order: the wire row of docs/sync-protocol.md
  (the 16 hashed fields in ledger order, then prev_hash and hash in hex).

It only builds and splits lines; it never checks a hash or a signature (the county
does, against the key it pinned for the terminal) and does no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

FORMAT = "canteen-ledger-recovery"
VERSION = 1
# A header line holds one checkpoint per 64 entries or so: a few MB at the most.
MAX_HEADER_BYTES = 32 * 1024 * 1024


class RecoveryFormatError(ValueError):
    """The file is not a ledger recovery file of this version; the text says why."""


@dataclass(frozen=True)
class Header:
    terminal_id: str
    public_key: bytes
    first_seq: int
    last_seq: int
    entries: int
    checkpoints: tuple[tuple[int, str, int, str], ...]  # as on the wire: hex text


def header_line(
    terminal_id: str,
    public_key: bytes,
    first_seq: int,
    last_seq: int,
    count: int,
    checkpoints: list[list[Any]],
) -> str:
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "terminal_id": terminal_id,
        "public_key": public_key.hex(),
        "first_seq": first_seq,
        "last_seq": last_seq,
        "entries": count,
        "checkpoints": checkpoints,
    }
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n"


def entry_line(row: list[Any]) -> str:
    """One wire row as one line: ensure_ascii keeps U+2028 and friends escaped, so a
    reader splitting on any line break still sees one line per entry."""
    return json.dumps(row, separators=(",", ":")) + "\n"


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _count(doc: dict[str, Any], name: str) -> int:
    value = doc.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise RecoveryFormatError(f"the recovery file's header has no {name}")
    return value


def parse_header(line: str) -> Header:
    """The header of a recovery file, checked for shape; RecoveryFormatError says why not."""
    try:
        doc = json.loads(line)
    except (ValueError, RecursionError):
        raise RecoveryFormatError(
            "not a ledger recovery file: the first line is not JSON "
            "(make it with 'canteen-terminal ledger export --format recovery')"
        ) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise RecoveryFormatError(
            "not a ledger recovery file (make it with "
            "'canteen-terminal ledger export --format recovery')"
        )
    if doc.get("version") != VERSION:
        raise RecoveryFormatError(
            f"recovery file version {doc.get('version')!r}: this county reads version {VERSION}"
        )
    tid, key = doc.get("terminal_id"), doc.get("public_key")
    first, last, count = _count(doc, "first_seq"), _count(doc, "last_seq"), _count(doc, "entries")
    cps = doc.get("checkpoints")
    if not isinstance(tid, str) or not tid or not isinstance(key, str):
        raise RecoveryFormatError("the recovery file's header names no terminal or key")
    try:
        raw_key = bytes.fromhex(key)
    except ValueError:
        raise RecoveryFormatError("the recovery file's public key is not hex") from None
    if not isinstance(cps, list):
        raise RecoveryFormatError("the recovery file's header has no checkpoints")
    checkpoints: list[tuple[int, str, int, str]] = []
    for item in cps:
        if (
            not isinstance(item, list)
            or len(item) != 4
            or not _int(item[0])
            or not isinstance(item[1], str)
            or not isinstance(item[2], int)
            or not isinstance(item[3], str)
        ):
            raise RecoveryFormatError(
                "a checkpoint in the recovery file's header is not [seq, hash, at_ms, signature]"
            )
        checkpoints.append((item[0], item[1], item[2], item[3]))
    return Header(tid, raw_key, first, last, count, tuple(checkpoints))
