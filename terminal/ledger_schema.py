"""The ledger file's schema: its tables, numbered migrations and column lists.

This module owns the SQL that creates and upgrades ``ledger.sqlite`` (tables,
partial indexes, append-only triggers), the ``migrations`` table that records
which migrations a file has, the column lists the writer and the audit read and
write, and ``LedgerError``, the one error every ledger module raises. It never
appends an entry, never checks the chain and never reads a clock (times are
arguments). sqlite-utils creates the ``migrations`` table only; the other tables
are plain SQL because sqlite-utils cannot say what they need (docs/ledger.md).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from protocol.chain import HASHED_COLUMNS
from terminal.durable import write_transaction


class LedgerError(Exception):
    """The ledger cannot do what was asked; the message says what happened and what to do."""


# Every column of an entry, in table order: the hashed ones, then the chain and the ack.
ALL_COLUMNS = (*HASHED_COLUMNS, "prev_hash", "hash", "acked_at_ms")
SELECT_ENTRIES = "SELECT " + ", ".join(ALL_COLUMNS) + " FROM entries"
INSERT_ENTRY = (
    "INSERT INTO entries ("
    + ", ".join(ALL_COLUMNS[:-1])
    + ") VALUES ("
    + ", ".join("?" * (len(ALL_COLUMNS) - 1))
    + ")"
)
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

# Each migration is a list of single statements (trigger bodies contain ';',
# so statements are kept apart instead of split from a script). A migration and
# its row in `migrations` commit together, so a crash leaves either both or neither.
MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (
        1,
        "entries, checkpoints and meta tables",
        (
            """CREATE TABLE entries (
                seq INTEGER PRIMARY KEY CHECK (seq >= 1),
                entry_id TEXT NOT NULL UNIQUE,
                at_ms INTEGER NOT NULL,
                kind TEXT NOT NULL,
                verdict TEXT,
                reason TEXT,
                method TEXT,
                cadre TEXT,
                credential TEXT,
                ctr INTEGER,
                unit TEXT,
                day TEXT,
                meal TEXT,
                amount_fen INTEGER NOT NULL,
                ref_seq INTEGER,
                detail TEXT NOT NULL,
                prev_hash BLOB NOT NULL CHECK (length(prev_hash) = 32),
                hash BLOB NOT NULL CHECK (length(hash) = 32),
                acked_at_ms INTEGER
            ) STRICT""",
            """CREATE TABLE checkpoints (
                seq INTEGER PRIMARY KEY,
                hash BLOB NOT NULL,
                at_ms INTEGER NOT NULL,
                signature BLOB NOT NULL
            ) STRICT""",
            """CREATE TABLE meta (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                terminal_id TEXT NOT NULL,
                public_key BLOB NOT NULL,
                schema INTEGER NOT NULL
            ) STRICT""",
        ),
    ),
    (
        2,
        "indexes for the policy queries and sync",
        (
            # Partial indexes: their WHERE must be repeated verbatim in the
            # queries below, or SQLite will not use them.
            "CREATE INDEX entries_ctr ON entries (credential, ctr)"
            " WHERE verdict = 'accept' AND kind IN ('sale', 'token_check')",
            "CREATE INDEX entries_sales ON entries (cadre, day, meal, amount_fen)"
            " WHERE kind = 'sale' AND verdict = 'accept'",
            "CREATE INDEX entries_reversals ON entries (ref_seq) WHERE kind = 'reversal'",
            "CREATE INDEX entries_unacked ON entries (seq) WHERE acked_at_ms IS NULL",
            "CREATE INDEX entries_acked ON entries (acked_at_ms) WHERE acked_at_ms IS NOT NULL",
            "CREATE INDEX entries_at ON entries (at_ms)",
        ),
    ),
    (
        3,
        "append-only triggers",
        (
            # Defence in depth: anyone with the file can drop these, which is
            # why verify_file re-checks the whole chain and the signatures.
            """CREATE TRIGGER entries_no_delete BEFORE DELETE ON entries
            BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only: DELETE refused'); END""",
            """CREATE TRIGGER entries_only_ack BEFORE UPDATE ON entries
            WHEN NOT (OLD.acked_at_ms IS NULL AND NEW.acked_at_ms IS NOT NULL
                AND NEW.seq IS OLD.seq AND NEW.entry_id IS OLD.entry_id
                AND NEW.at_ms IS OLD.at_ms AND NEW.kind IS OLD.kind
                AND NEW.verdict IS OLD.verdict AND NEW.reason IS OLD.reason
                AND NEW.method IS OLD.method AND NEW.cadre IS OLD.cadre
                AND NEW.credential IS OLD.credential AND NEW.ctr IS OLD.ctr
                AND NEW.unit IS OLD.unit AND NEW.day IS OLD.day AND NEW.meal IS OLD.meal
                AND NEW.amount_fen IS OLD.amount_fen AND NEW.ref_seq IS OLD.ref_seq
                AND NEW.detail IS OLD.detail AND NEW.prev_hash IS OLD.prev_hash
                AND NEW.hash IS OLD.hash)
            BEGIN SELECT RAISE(ABORT,
                'ledger entries are append-only: only setting acked_at_ms once is allowed'); END""",
            """CREATE TRIGGER entries_append_only BEFORE INSERT ON entries
            WHEN NEW.seq IS NOT (SELECT coalesce(max(seq), 0) + 1 FROM entries)
                OR NEW.prev_hash IS NOT coalesce(
                    (SELECT hash FROM entries WHERE seq = NEW.seq - 1), zeroblob(32))
                OR NEW.acked_at_ms IS NOT NULL
            BEGIN SELECT RAISE(ABORT,
                'ledger insert refused: seq must be last+1 and prev_hash the last hash'); END""",
            """CREATE TRIGGER checkpoints_no_delete BEFORE DELETE ON checkpoints
            BEGIN SELECT RAISE(ABORT, 'ledger checkpoints are append-only: DELETE refused'); END""",
            """CREATE TRIGGER checkpoints_no_update BEFORE UPDATE ON checkpoints
            BEGIN SELECT RAISE(ABORT, 'ledger checkpoints are append-only: UPDATE refused'); END""",
            """CREATE TRIGGER checkpoints_match BEFORE INSERT ON checkpoints
            WHEN NEW.hash IS NOT (SELECT hash FROM entries WHERE seq = NEW.seq)
            BEGIN SELECT RAISE(ABORT,
                'ledger checkpoint refused: hash does not match the entry'); END""",
            """CREATE TRIGGER meta_no_delete BEFORE DELETE ON meta
            BEGIN SELECT RAISE(ABORT, 'ledger meta is fixed: DELETE refused'); END""",
            """CREATE TRIGGER meta_fixed_identity BEFORE UPDATE ON meta
            WHEN NEW.terminal_id IS NOT OLD.terminal_id OR NEW.public_key IS NOT OLD.public_key
                OR NEW.id IS NOT OLD.id
            BEGIN SELECT RAISE(ABORT,
                'ledger meta is fixed: terminal id and key cannot change'); END""",
        ),
    ),
)
MIGRATIONS = (
    *MIGRATIONS,
    (
        4,
        "retention: prune acknowledged entries up to a signed checkpoint",
        (
            # The prune point: the chain now starts after up_to_seq, anchored at
            # up_to_hash, which the checkpoint kept at up_to_seq signs.
            """CREATE TABLE pruned (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                up_to_seq INTEGER NOT NULL,
                up_to_hash BLOB NOT NULL CHECK (length(up_to_hash) = 32),
                at_ms INTEGER NOT NULL
            ) STRICT""",
            # The replay memory of pruned entries: the highest accepted counter per credential.
            """CREATE TABLE pruned_ctr (
                credential TEXT PRIMARY KEY,
                ctr INTEGER NOT NULL
            ) STRICT, WITHOUT ROWID""",
            "DROP TRIGGER entries_no_delete",
            """CREATE TRIGGER entries_no_delete BEFORE DELETE ON entries
            WHEN NOT (OLD.acked_at_ms IS NOT NULL
                AND OLD.seq <= coalesce((SELECT up_to_seq FROM pruned), 0))
            BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only: DELETE refused'); END""",
            "DROP TRIGGER checkpoints_no_delete",
            """CREATE TRIGGER checkpoints_no_delete BEFORE DELETE ON checkpoints
            WHEN NOT (OLD.seq < coalesce((SELECT up_to_seq FROM pruned), 0))
            BEGIN SELECT RAISE(ABORT, 'ledger checkpoints are append-only: DELETE refused'); END""",
            """CREATE TRIGGER pruned_forward BEFORE UPDATE ON pruned
            WHEN NEW.up_to_seq <= OLD.up_to_seq
            BEGIN SELECT RAISE(ABORT, 'ledger prune point can only move forward'); END""",
            """CREATE TRIGGER pruned_no_delete BEFORE DELETE ON pruned
            BEGIN SELECT RAISE(ABORT, 'ledger prune point cannot be removed'); END""",
        ),
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]


def sqlite_utils_database(conn: sqlite3.Connection) -> Any:
    """A sqlite-utils ``Database`` over ``conn`` that changes nothing about the connection.

    No plugins and no ``recursive_triggers`` pragma: the connection behaves as the
    ledger set it up. Its write methods are never used inside a ledger transaction
    (they commit the connection's open transaction when they end).
    """
    from sqlite_utils import Database

    return Database(conn, recursive_triggers=False, execute_plugins=False)


def apply_migrations(conn: sqlite3.Connection, now_ms: int) -> list[int]:
    """Apply missing migrations in order; return the numbers applied now.

    Each migration commits in one transaction with its row in ``migrations``, so a
    crash leaves both or neither.
    """
    known = {number for number, _, _ in MIGRATIONS}
    try:
        recorded = {row[0] for row in conn.execute("SELECT number FROM migrations")}
    except sqlite3.OperationalError:  # no migrations table yet: a new file
        recorded = set()
    if recorded == known:
        # The usual restart: nothing to do, and no need to import sqlite-utils,
        # which takes longer to import (~0.15 s) than opening the ledger.
        return []
    sqlite_utils_database(conn).table("migrations").create(
        {"number": int, "name": str, "applied_at": int},
        pk="number",
        not_null={"name", "applied_at"},
        strict=True,
        if_not_exists=True,
    )
    applied_now: list[int] = []
    for number, name, statements in MIGRATIONS:
        # Re-read inside the write transaction: another process may have
        # applied this migration since we looked.
        with write_transaction(conn):
            done = {row[0] for row in conn.execute("SELECT number FROM migrations")}
            unknown = done - known
            if unknown:
                raise LedgerError(
                    f"ledger schema has migration {max(unknown)} that this software does not "
                    "know: the file was written by a newer version; update the terminal software"
                )
            if number not in done:
                for statement in statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO migrations (number, name, applied_at) VALUES (?, ?, ?)",
                    (number, name, now_ms),
                )
                applied_now.append(number)
    return applied_now
