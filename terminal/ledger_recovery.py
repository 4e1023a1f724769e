"""The recovery export: a terminal's ledger as a file the county can verify and take.

This module owns ``export_recovery``, what ``canteen-terminal ledger export --format
recovery`` writes when a terminal is dead and its SD card is read on another machine
(docs/technicians.md, "Replacing a dead terminal"). The format is protocol/recovery.py:
a header with the terminal's id, its ledger public key and the ledger's signed
checkpoints, then every entry as a sync would send it. The ledger key (the state
directory's ``terminal-key.pem``) signs one more checkpoint over the last entry, as a
sync signs the last entry of a batch: the county takes no entry that no signature of
the key it pinned covers. It opens the ledger read-only and never writes to it.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import TextIO

from protocol.chain import HASHED_COLUMNS, checkpoint_message
from protocol.recovery import entry_line, header_line
from terminal.ledger_audit import _open_read_only
from terminal.ledger_key import load_or_create_signing_key, public_bytes
from terminal.ledger_schema import LedgerError

_ROWS = (
    "SELECT "
    + ", ".join(HASHED_COLUMNS)
    + ", prev_hash, hash FROM entries WHERE seq >= ? AND seq <= ? ORDER BY seq"
)


def export_recovery(
    ledger_path: str | os.PathLike[str],
    out: TextIO,
    key_path: str | os.PathLike[str] | None = None,
    from_seq: int | None = None,
) -> tuple[int, int]:
    """Write the recovery file of the ledger at ``ledger_path`` to ``out``; return
    (entries written, last seq). ``key_path`` is the terminal's key (default: the
    ``terminal-key.pem`` beside the ledger); ``from_seq`` the first entry to write
    (default: the first the ledger holds)."""
    key_file = (
        Path(key_path) if key_path is not None else Path(ledger_path).with_name("terminal-key.pem")
    )
    if not key_file.is_file():
        raise LedgerError(
            f"no terminal key at {key_file}: the county takes only entries the terminal's key "
            "signed; name the key file of the old state directory with --key"
        )
    key = load_or_create_signing_key(key_file)
    conn = _open_read_only(ledger_path)
    try:
        meta = conn.execute("SELECT terminal_id, public_key FROM meta").fetchone()
        if meta is None:
            raise LedgerError(f"{ledger_path}: the ledger has no terminal identity")
        terminal_id, public_key = str(meta[0]), bytes(meta[1])
        if public_bytes(key) != public_key:
            raise LedgerError(
                f"{key_file} is not the key of this ledger (terminal {terminal_id}): "
                "use the key file from the same state directory"
            )
        low, high = conn.execute("SELECT min(seq), max(seq) FROM entries").fetchone()
        if low is None:
            raise LedgerError(f"{ledger_path}: the ledger has no entries")
        first = int(low) if from_seq is None else from_seq
        last = int(high)
        if not int(low) <= first <= last:
            raise LedgerError(f"--from {first}: the ledger holds entries {low}..{last}")
        cps = [
            [int(s), bytes(h).hex(), int(at), bytes(sig).hex()]
            for s, h, at, sig in conn.execute(
                "SELECT seq, hash, at_ms, signature FROM checkpoints"
                " WHERE seq BETWEEN ? AND ? ORDER BY seq",
                (first, last),
            )
        ]
        if not cps or cps[-1][0] != last:
            at_ms, digest = conn.execute(
                "SELECT at_ms, hash FROM entries WHERE seq = ?", (last,)
            ).fetchone()
            signature = key.sign(checkpoint_message(terminal_id, last, bytes(digest)))
            cps.append([last, bytes(digest).hex(), int(at_ms), signature.hex()])
        count = last - first + 1
        out.write(header_line(terminal_id, public_key, first, last, count, cps))
        cursor = conn.execute(_ROWS, (first, last))
        cursor.arraysize = 1024
        written = 0
        for row in cursor:
            out.write(entry_line([*row[:16], bytes(row[16]).hex(), bytes(row[17]).hex()]))
            written += 1
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"cannot read the ledger {ledger_path}: {exc}") from exc
    finally:
        conn.close()
    return written, last
