"""Append-only, hash-chained SQLite ledger: every decision the terminal makes.

This module owns the ledger file: its schema and numbered migrations, appending
entries (committed and fsynced before ``append`` returns), the hash chain,
checkpoints signed with the terminal's own Ed25519 key, the read queries the
policy needs, marking entries acknowledged by the county server, and offline
verification, export and statistics. It never edits or deletes an entry, never
reads a clock (times are arguments) and imports no device or network library.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

# Entry kinds and verdicts are protocol/chain.py's (the county reads them too).
from protocol.chain import ACCEPT as ACCEPT
from protocol.chain import CLOCK_FAULT as CLOCK_FAULT
from protocol.chain import CONFIG_APPLIED as CONFIG_APPLIED
from protocol.chain import GENESIS as GENESIS
from protocol.chain import PRUNED as PRUNED
from protocol.chain import REJECT as REJECT
from protocol.chain import REVERSAL as REVERSAL
from protocol.chain import SALE as SALE
from protocol.chain import TIME_SIGNAL as TIME_SIGNAL
from protocol.chain import TOKEN_CHECK as TOKEN_CHECK
from terminal.durable import write_atomic


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


class LedgerError(Exception):
    """The ledger cannot do what was asked; the message says what happened and what to do."""


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of ``verify_file``: ``ok`` only when every check passed."""

    ok: bool
    entries: int  # rows read from the entries table
    checkpoints: int  # rows in the checkpoints table
    first_bad_seq: int | None  # the first entry that is missing, altered or out of place
    problem: str | None  # one line for a person; None when ok


# --- formats -----------------------------------------------------------------

# The chain format is protocol/chain.py's (the county checks it too).
from protocol.chain import (  # noqa: E402, F401
    CHECKPOINT_DOMAIN,
    ENTRY_DOMAIN,
    GENESIS_PREV_HASH,
    HASHED_COLUMNS,
    canonical_json,
    checkpoint_message,
    entry_hash,
)

ALL_COLUMNS = (*HASHED_COLUMNS, "prev_hash", "hash", "acked_at_ms")
_SELECT_ALL = "SELECT " + ", ".join(ALL_COLUMNS) + " FROM entries"
_INSERT = (
    "INSERT INTO entries ("
    + ", ".join(ALL_COLUMNS[:-1])
    + ") VALUES ("
    + ", ".join("?" * (len(ALL_COLUMNS) - 1))
    + ")"
)
_INT64_MAX = 2**63 - 1
_INT64_MIN = -(2**63)


# --- schema ------------------------------------------------------------------

# Each migration is a list of single statements (trigger bodies contain ';',
# so statements are kept apart instead of split from a script). A migration and
# its row in `migrations` commit together, so a crash leaves either both or neither.
_MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
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
_MIGRATIONS = (
    *_MIGRATIONS,
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
SCHEMA_VERSION = _MIGRATIONS[-1][0]


def _apply_migrations(conn: sqlite3.Connection, now_ms: int) -> list[int]:
    """Apply missing migrations in order; return the numbers applied now."""
    known = {number for number, _, _ in _MIGRATIONS}
    try:
        recorded = {row[0] for row in conn.execute("SELECT number FROM migrations")}
    except sqlite3.OperationalError:  # no migrations table yet: a new file
        recorded = set()
    if recorded == known:
        # The usual restart: nothing to do, and no need to import sqlite-utils,
        # which takes longer to import (~0.15 s) than opening the ledger.
        return []
    from sqlite_utils import Database

    db = Database(conn)
    db.table("migrations").create(
        {"number": int, "name": str, "applied_at": int},
        pk="number",
        not_null={"name", "applied_at"},
        strict=True,
        if_not_exists=True,
    )
    applied_now: list[int] = []
    for number, name, statements in _MIGRATIONS:
        # Re-read inside the write transaction: another process may have
        # applied this migration since we looked.
        conn.execute("BEGIN IMMEDIATE")
        try:
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
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return applied_now


# --- the writer ----------------------------------------------------------------


def _check_text(name: str, value: object, *, required: bool = False) -> None:
    if value is None and not required:
        return
    if not isinstance(value, str) or (required and not value):
        raise LedgerError(f"ledger entry refused: {name} must be a {'non-empty ' * required}text")
    try:
        value.encode("utf-8")
    except UnicodeError as exc:
        raise LedgerError(f"ledger entry refused: {name} is not valid text ({exc})") from exc


def _check_int(name: str, value: object, *, required: bool = False) -> None:
    if value is None and not required:
        return
    # bool is an int in Python but would hash as CBOR true and read back as 1.
    if type(value) is not int or not _INT64_MIN <= value <= _INT64_MAX:
        raise LedgerError(f"ledger entry refused: {name} must be a 64-bit integer, got {value!r}")


def _draft_columns(draft: EntryDraft) -> tuple[Any, ...]:
    """Validate a draft and return its columns kind..detail in HASHED_COLUMNS order."""
    _check_text("kind", draft.kind, required=True)
    if draft.verdict not in (None, ACCEPT, REJECT):
        raise LedgerError(
            f"ledger entry refused: verdict must be accept, reject or none, got {draft.verdict!r}"
        )
    for name in ("reason", "method", "cadre", "credential", "unit", "day", "meal"):
        _check_text(name, getattr(draft, name))
    for name in ("ctr", "ref_seq"):
        _check_int(name, getattr(draft, name))
    _check_int("amount_fen", draft.amount_fen, required=True)
    if not isinstance(draft.detail, dict):
        raise LedgerError("ledger entry refused: detail must be a dict")
    try:
        detail = canonical_json(draft.detail)
        detail.encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise LedgerError(f"ledger entry refused: detail is not plain JSON ({exc})") from exc
    return (
        draft.kind,
        draft.verdict,
        draft.reason,
        draft.method,
        draft.cadre,
        draft.credential,
        draft.ctr,
        draft.unit,
        draft.day,
        draft.meal,
        draft.amount_fen,
        draft.ref_seq,
        detail,
    )


def _row_to_entry(row: Sequence[Any]) -> LedgerEntry:
    return LedgerEntry(
        seq=row[0],
        entry_id=row[1],
        at_ms=row[2],
        kind=row[3],
        verdict=row[4],
        reason=row[5],
        method=row[6],
        cadre=row[7],
        credential=row[8],
        ctr=row[9],
        unit=row[10],
        day=row[11],
        meal=row[12],
        amount_fen=row[13],
        ref_seq=row[14],
        detail=json.loads(row[15]),
        prev_hash=row[16],
        hash=row[17],
        acked_at_ms=row[18],
    )


def _public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _write_failed(exc: BaseException) -> LedgerError:
    return LedgerError(
        f"ledger write failed: {exc}; nothing was recorded. Check free space on the "
        "storage card and run 'canteen-terminal ledger verify'; call county IT if it persists"
    )


class Ledger:
    """The open ledger file. One decision worker owns it; it is not thread-safe."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        terminal_id: str,
        signing_key: Ed25519PrivateKey,
        checkpoint_every: int,
    ) -> None:
        # Use Ledger.open(): this only stores what open() has checked.
        self._conn: sqlite3.Connection | None = conn
        self.path = path
        self.terminal_id = terminal_id
        self._key = signing_key
        self._checkpoint_every = checkpoint_every
        # unsynced() runs on every decision and its fen sum walks every unacknowledged
        # sale, so the answer is kept and updated by our own appends. PRAGMA data_version
        # changes when another connection commits, which drops the kept answer.
        self._unsynced: tuple[int, int] | None = None
        self._data_version = -1
        self._grouped = False  # inside group(): appends are savepoints of one transaction

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        terminal_id: str,
        signing_key: Ed25519PrivateKey,
        now_ms: int,
        checkpoint_every: int = 64,
    ) -> Ledger:
        """Create or open the ledger at ``path``; the file must belong to this terminal and key."""
        _check_text("terminal_id", terminal_id, required=True)
        _check_int("now_ms", now_ms, required=True)
        if type(checkpoint_every) is not int or checkpoint_every < 1:
            raise LedgerError("checkpoint_every must be a positive integer")
        file = Path(path)
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves so a
            # transaction spans exactly one entry (and its checkpoint).
            conn = sqlite3.connect(file, isolation_level=None, timeout=10.0)
        except sqlite3.Error as exc:
            raise LedgerError(
                f"cannot open the ledger at {file}: {exc}; check the path and its permissions"
            ) from exc
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise LedgerError(f"ledger at {file} cannot use WAL journaling (got {mode})")
            conn.execute("PRAGMA synchronous=FULL")
            _apply_migrations(conn, now_ms)
            public = _public_bytes(signing_key)
            cls._ensure_identity(conn, file, terminal_id, public, now_ms)
        except LedgerError:
            conn.close()
            raise
        except sqlite3.Error as exc:
            conn.close()
            raise LedgerError(
                f"cannot open the ledger at {file}: {exc}; run 'canteen-terminal ledger verify' "
                "on it and call county IT"
            ) from exc
        return cls(conn, file, terminal_id, signing_key, checkpoint_every)

    @staticmethod
    def _ensure_identity(
        conn: sqlite3.Connection, file: Path, terminal_id: str, public: bytes, now_ms: int
    ) -> None:
        """Write meta and genesis on a new file, or check them on an existing one."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            meta = conn.execute("SELECT terminal_id, public_key FROM meta").fetchone()
            if meta is None:
                if conn.execute("SELECT 1 FROM entries LIMIT 1").fetchone() is not None:
                    raise LedgerError(
                        f"ledger at {file} has entries but no meta row: it was tampered with; "
                        "keep the file for county IT and do not use it"
                    )
                conn.execute(
                    "INSERT INTO meta (id, terminal_id, public_key, schema) VALUES (1, ?, ?, ?)",
                    (terminal_id, public, SCHEMA_VERSION),
                )
                detail = canonical_json({"terminal_id": terminal_id, "public_key": public.hex()})
                fields = (
                    1,
                    uuid.uuid4().hex,
                    now_ms,
                    GENESIS,
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    0,
                    None,
                    detail,
                )
                digest = entry_hash(GENESIS_PREV_HASH, fields)
                conn.execute(_INSERT, (*fields, GENESIS_PREV_HASH, digest))
            else:
                if meta[0] != terminal_id:
                    raise LedgerError(
                        f"ledger at {file} belongs to terminal {meta[0]!r}, not {terminal_id!r}: "
                        "check terminal_id in the settings or the ledger path"
                    )
                if meta[1] != public:
                    raise LedgerError(
                        f"ledger at {file} was signed with a different terminal key: check the "
                        "key path in the settings; never replace the key of a terminal in use"
                    )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # -- writing ---------------------------------------------------------------

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LedgerError("the ledger is closed")
        return self._conn

    def append(self, draft: EntryDraft, at_ms: int) -> LedgerEntry:
        """Record one entry; it is committed and on disk when this returns.

        Inside ``group()`` it is a savepoint of the group's transaction instead,
        durable when the group commits: a failed append then leaves the group's
        other entries as they were.
        """
        conn = self._db
        if draft.kind == GENESIS:
            raise LedgerError("ledger entry refused: only the ledger itself writes genesis")
        columns = _draft_columns(draft)
        _check_int("at_ms", at_ms, required=True)
        grouped = self._grouped
        if grouped and not conn.in_transaction:
            # SQLite rolled the group back (disk full, I/O error): nothing of it remains.
            raise LedgerError(
                "ledger write failed: the group's transaction was rolled back; "
                "nothing of it was recorded"
            )
        try:
            conn.execute("SAVEPOINT entry" if grouped else "BEGIN IMMEDIATE")
            try:
                if draft.kind == REVERSAL:
                    self._check_reversal(conn, draft)
                last_seq, last_hash = conn.execute(
                    "SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1"
                ).fetchone()
                seq = last_seq + 1
                fields = (seq, uuid.uuid4().hex, at_ms, *columns)
                digest = entry_hash(last_hash, fields)
                conn.execute(_INSERT, (*fields, last_hash, digest))
                if seq % self._checkpoint_every == 0:
                    self._insert_checkpoint(conn, seq, digest, at_ms)
                conn.execute("RELEASE entry" if grouped else "COMMIT")
                self._count_appended(draft)
            except BaseException:
                # SQLite rolls some failures (disk full) back by itself.
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        if grouped:
                            conn.execute("ROLLBACK TO entry")
                            conn.execute("RELEASE entry")
                        else:
                            conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise _write_failed(exc) from exc
        return LedgerEntry(
            kind=draft.kind,
            verdict=draft.verdict,
            reason=draft.reason,
            method=draft.method,
            cadre=draft.cadre,
            credential=draft.credential,
            ctr=draft.ctr,
            unit=draft.unit,
            day=draft.day,
            meal=draft.meal,
            amount_fen=draft.amount_fen,
            ref_seq=draft.ref_seq,
            detail=json.loads(columns[-1]),
            seq=seq,
            entry_id=fields[1],
            at_ms=at_ms,
            prev_hash=last_hash,
            hash=digest,
        )

    @contextlib.contextmanager
    def group(self) -> Iterator[None]:
        """Several appends, one commit and one fsync (group commit).

        A decision worker with codes waiting decides them all, then makes them
        durable together; nothing appended in the block is durable, nor may be
        shown to anyone, before the block ends without an exception. An
        exception rolls the whole group back. Groups do not nest.
        """
        conn = self._db
        if self._grouped:
            raise LedgerError("ledger groups do not nest")
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _write_failed(exc) from exc
        self._grouped = True
        try:
            yield
        except BaseException:
            self._grouped = False
            self._unsynced = None
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        self._grouped = False
        try:
            if not conn.in_transaction:
                raise sqlite3.OperationalError("the transaction was rolled back by SQLite")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._unsynced = None
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise _write_failed(exc) from exc

    def prune(self, older_than_ms: int, at_ms: int) -> int:
        """Remove acknowledged entries older than ``older_than_ms``; return how many.

        Only up to a signed checkpoint, only entries the county server has
        acknowledged (it holds them), and never the newest entry. A PRUNED entry
        naming the prune point is appended first, so the chain itself says what
        was removed; the highest accepted counter of every pruned credential is
        kept, so replay memory survives. Retention never loses an unsent entry.
        """
        conn = self._db
        if self._grouped:
            raise LedgerError("ledger prune inside a group is not allowed")
        first_unacked = conn.execute(
            "SELECT min(seq) FROM entries WHERE acked_at_ms IS NULL"
        ).fetchone()[0]
        limit = first_unacked if first_unacked is not None else self.last_seq()
        row = conn.execute(
            "SELECT max(c.seq) FROM checkpoints AS c JOIN entries AS e ON e.seq = c.seq"
            " WHERE c.seq < ? AND e.at_ms < ?",
            (limit, older_than_ms),
        ).fetchone()
        point: int | None = row[0]
        done = conn.execute("SELECT up_to_seq FROM pruned").fetchone()
        if point is None or (done is not None and point <= done[0]):
            return 0
        point_hash = conn.execute("SELECT hash FROM entries WHERE seq = ?", (point,)).fetchone()[0]
        self.append(
            EntryDraft(kind=PRUNED, detail={"up_to_seq": point, "up_to_hash": point_hash.hex()}),
            at_ms,
        )
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "INSERT INTO pruned_ctr (credential, ctr)"
                    " SELECT credential, max(ctr) FROM entries WHERE seq <= ? AND ctr IS NOT NULL"
                    " AND credential IS NOT NULL"
                    " AND verdict = 'accept' AND kind IN ('sale', 'token_check')"
                    " GROUP BY credential"
                    " ON CONFLICT (credential) DO UPDATE SET ctr = max(ctr, excluded.ctr)",
                    (point,),
                )
                conn.execute(
                    "INSERT INTO pruned (id, up_to_seq, up_to_hash, at_ms) VALUES (1, ?, ?, ?)"
                    " ON CONFLICT (id) DO UPDATE SET up_to_seq = excluded.up_to_seq,"
                    " up_to_hash = excluded.up_to_hash, at_ms = excluded.at_ms",
                    (point, point_hash, at_ms),
                )
                removed = conn.execute("DELETE FROM entries WHERE seq <= ?", (point,)).rowcount
                conn.execute("DELETE FROM checkpoints WHERE seq < ?", (point,))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise _write_failed(exc) from exc
        self._unsynced = None
        return int(removed)

    def _count_appended(self, draft: EntryDraft) -> None:
        if self._unsynced is None:
            return
        if draft.kind == REVERSAL:
            self._unsynced = None  # whether the reversed sale was acknowledged decides; recount
            return
        count, fen = self._unsynced
        if draft.kind == SALE and draft.verdict == ACCEPT:
            fen += draft.amount_fen
        self._unsynced = (count + 1, fen)

    @staticmethod
    def _check_reversal(conn: sqlite3.Connection, draft: EntryDraft) -> None:
        if draft.ref_seq is None:
            raise LedgerError("reversal refused: it must name the sale it reverses (ref_seq)")
        if draft.verdict == REJECT:
            # A refused undo is not a reversal; record it under another kind.
            raise LedgerError("reversal refused: a reversal cannot carry verdict reject")
        target = conn.execute(
            "SELECT kind, verdict FROM entries WHERE seq = ?", (draft.ref_seq,)
        ).fetchone()
        if target is None or target[0] != SALE or target[1] != ACCEPT:
            raise LedgerError(f"reversal refused: entry {draft.ref_seq} is not an accepted sale")
        if conn.execute(
            "SELECT 1 FROM entries WHERE kind = 'reversal' AND ref_seq = ? LIMIT 1",
            (draft.ref_seq,),
        ).fetchone():
            raise LedgerError(f"reversal refused: sale {draft.ref_seq} is already reversed")

    def _insert_checkpoint(
        self, conn: sqlite3.Connection, seq: int, digest: bytes, at_ms: int
    ) -> None:
        signature = self._key.sign(checkpoint_message(self.terminal_id, seq, digest))
        conn.execute(
            "INSERT INTO checkpoints (seq, hash, at_ms, signature) VALUES (?, ?, ?, ?)",
            (seq, digest, at_ms, signature),
        )

    def mark_acked(self, up_to_seq: int, at_ms: int) -> int:
        """Mark every unacknowledged entry up to ``up_to_seq`` as acknowledged; return how many."""
        conn = self._db
        _check_int("up_to_seq", up_to_seq, required=True)
        _check_int("at_ms", at_ms, required=True)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                last = conn.execute("SELECT max(seq) FROM entries").fetchone()[0]
                if up_to_seq > last:
                    raise LedgerError(
                        f"acknowledgement refused: the server acknowledged entry {up_to_seq} "
                        f"but the ledger ends at {last}; report this to county IT"
                    )
                count = conn.execute(
                    "UPDATE entries SET acked_at_ms = ? WHERE acked_at_ms IS NULL AND seq <= ?",
                    (at_ms, up_to_seq),
                ).rowcount
                conn.execute("COMMIT")
                self._unsynced = None
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise _write_failed(exc) from exc
        return count

    def close(self, at_ms: int | None = None) -> None:
        """Sign a checkpoint over the last entry (if it has none) and close the file."""
        if self._conn is None:
            return
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                last_seq, last_hash, last_at = conn.execute(
                    "SELECT seq, hash, at_ms FROM entries ORDER BY seq DESC LIMIT 1"
                ).fetchone()
                done = conn.execute("SELECT 1 FROM checkpoints WHERE seq = ?", (last_seq,))
                if done.fetchone() is None:
                    self._insert_checkpoint(
                        conn, last_seq, last_hash, last_at if at_ms is None else at_ms
                    )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise _write_failed(exc) from exc
        finally:
            self._conn = None
            conn.close()

    def close_unsigned(self) -> None:
        """Close without a checkpoint: a ledger found damaged is left as it is."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- queries -----------------------------------------------------------------

    def last_seq(self) -> int:
        """The newest entry's sequence number (1 on a new ledger: genesis)."""
        value: int = self._db.execute("SELECT max(seq) FROM entries").fetchone()[0]
        return value

    def last_time_ms(self) -> int:
        """The newest time in the ledger: the trusted-time floor."""
        value: int = self._db.execute("SELECT max(at_ms) FROM entries").fetchone()[0]
        return value

    def last_of_kind(self, kind: str) -> tuple[LedgerEntry, int] | None:
        """The newest entry of ``kind``, and the newest time from it on; None if none.

        Reads the whole table when the kind is rare (once, at start): however many
        entries came since, the newest county time must be found.
        """
        row = self._db.execute("SELECT max(seq) FROM entries WHERE kind = ?", (kind,)).fetchone()
        if row is None or row[0] is None:
            return None
        entry = self.entry(int(row[0]))
        if entry is None:
            return None
        newest = self._db.execute(
            "SELECT max(at_ms) FROM entries WHERE seq >= ?", (entry.seq,)
        ).fetchone()[0]
        return entry, int(newest)

    def highest_ctr(self, credential: str) -> int | None:
        """Highest presentation counter accepted for ``credential`` (sales and token checks)."""
        row = self._db.execute(
            "SELECT max(m) FROM (SELECT max(ctr) AS m FROM entries WHERE credential = ?"
            " AND verdict = 'accept' AND kind IN ('sale', 'token_check')"
            " UNION ALL SELECT ctr FROM pruned_ctr WHERE credential = ?)",
            (credential, credential),
        ).fetchone()
        value: int | None = row[0]
        return value

    def served(self, cadre: str, day: str, meal: str) -> bool:
        """True when ``cadre`` has an accepted, not reversed sale in that day's meal window."""
        row = self._db.execute(
            "SELECT 1 FROM entries AS s WHERE s.cadre = ? AND s.day = ? AND s.meal = ?"
            " AND s.kind = 'sale' AND s.verdict = 'accept'"
            " AND NOT EXISTS (SELECT 1 FROM entries AS r"
            "   WHERE r.ref_seq = s.seq AND r.kind = 'reversal') LIMIT 1",
            (cadre, day, meal),
        ).fetchone()
        return row is not None

    def day_totals(self, cadre: str, day: str) -> tuple[int, int]:
        """(meals, fen) of ``cadre``'s accepted, not reversed sales on ``day``."""
        count, fen = self._db.execute(
            "SELECT count(*), coalesce(sum(s.amount_fen), 0) FROM entries AS s"
            " WHERE s.cadre = ? AND s.day = ? AND s.kind = 'sale' AND s.verdict = 'accept'"
            " AND NOT EXISTS (SELECT 1 FROM entries AS r"
            "   WHERE r.ref_seq = s.seq AND r.kind = 'reversal')",
            (cadre, day),
        ).fetchone()
        return int(count), int(fen)

    def unsynced(self) -> tuple[int, int]:
        """(entries of any kind, fen of accepted not reversed sales) not yet acknowledged."""
        conn = self._db
        version = int(conn.execute("PRAGMA data_version").fetchone()[0])
        if self._unsynced is not None and version == self._data_version:
            return self._unsynced
        self._data_version = version
        count = conn.execute("SELECT count(*) FROM entries WHERE acked_at_ms IS NULL").fetchone()
        fen = conn.execute(
            "SELECT coalesce(sum(s.amount_fen), 0) FROM entries AS s"
            " WHERE s.acked_at_ms IS NULL AND s.kind = 'sale' AND s.verdict = 'accept'"
            " AND NOT EXISTS (SELECT 1 FROM entries AS r"
            "   WHERE r.ref_seq = s.seq AND r.kind = 'reversal')"
        ).fetchone()
        self._unsynced = (int(count[0]), int(fen[0]))
        return self._unsynced

    def last_ack_ms(self) -> int | None:
        """When the county server last acknowledged entries, or None if it never has."""
        value: int | None = self._db.execute(
            "SELECT max(acked_at_ms) FROM entries WHERE acked_at_ms IS NOT NULL"
        ).fetchone()[0]
        return value

    def last_acked(self) -> ChainMark | None:
        """The highest entry the county server acknowledged, with its hash; None if none."""
        row = self._db.execute(
            "SELECT seq, hash FROM entries WHERE acked_at_ms IS NOT NULL ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        return None if row is None else ChainMark(int(row[0]), bytes(row[1]))

    def entry(self, seq: int) -> LedgerEntry | None:
        """The entry with this sequence number, if there is one."""
        row = self._db.execute(_SELECT_ALL + " WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else _row_to_entry(row)

    def entries(self, from_seq: int = 1, limit: int | None = None) -> Iterator[LedgerEntry]:
        """Entries in sequence order from ``from_seq``, at most ``limit`` of them."""
        # Pages, not one open cursor: a caller may append between items, and a
        # long-lived read statement would pin the WAL and stop checkpoints.
        remaining = limit
        next_seq = from_seq
        while remaining is None or remaining > 0:
            page = 256 if remaining is None else min(256, remaining)
            rows = self._db.execute(
                _SELECT_ALL + " WHERE seq >= ? ORDER BY seq LIMIT ?", (next_seq, page)
            ).fetchall()
            for row in rows:
                yield _row_to_entry(row)
            if len(rows) < page:
                return
            next_seq = rows[-1][0] + 1
            if remaining is not None:
                remaining -= len(rows)

    def reversal_of(self, sale_seq: int) -> int | None:
        """The seq of the reversal entry that reverses ``sale_seq``, if there is one."""
        row = self._db.execute(
            "SELECT seq FROM entries WHERE kind = 'reversal' AND ref_seq = ? LIMIT 1", (sale_seq,)
        ).fetchone()
        return None if row is None else int(row[0])

    def last_sale(self) -> LedgerEntry | None:
        """The newest accepted sale that has not been reversed (what staff may undo)."""
        row = self._db.execute(
            _SELECT_ALL + " AS s WHERE s.kind = 'sale' AND s.verdict = 'accept'"
            " AND NOT EXISTS (SELECT 1 FROM entries AS r"
            "   WHERE r.ref_seq = s.seq AND r.kind = 'reversal')"
            " ORDER BY s.seq DESC LIMIT 1"
        ).fetchone()
        return None if row is None else _row_to_entry(row)

    def applied_migrations(self) -> list[tuple[int, str, int]]:
        """(number, name, applied_at) of every migration recorded in the file."""
        rows = self._db.execute(
            "SELECT number, name, applied_at FROM migrations ORDER BY number"
        ).fetchall()
        return [(int(r[0]), str(r[1]), int(r[2])) for r in rows]


# --- the terminal's key --------------------------------------------------------------


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


# --- offline tools: read-only ------------------------------------------------------


def _open_read_only(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """Open a ledger file without writing to it."""
    file = Path(path).absolute()
    if not file.is_file():
        raise LedgerError(f"no ledger file at {file}")
    wal = file.with_name(file.name + "-wal")
    # No -wal file means no writer has the file open and everything is in the
    # main file: immutable=1 then reads without creating -wal/-shm beside it.
    # With a -wal present a writer may be live, so read through the WAL.
    query = "mode=ro" if wal.exists() else "mode=ro&immutable=1"
    try:
        conn = sqlite3.connect(f"{file.as_uri()}?{query}", uri=True, isolation_level=None)
        conn.execute("PRAGMA query_only=ON")
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot open the ledger {file} read-only: {exc}") from exc
    return conn


def verify_file(path: str | os.PathLike[str], public_key: bytes | None = None) -> VerifyReport:
    """Check SQLite integrity, the hash chain and the signed checkpoints, read-only."""
    try:
        conn = _open_read_only(path)
    except LedgerError as exc:
        return VerifyReport(False, 0, 0, None, str(exc))
    try:
        return _verify(conn, public_key)
    except sqlite3.DatabaseError as exc:
        return VerifyReport(False, 0, 0, None, f"cannot read the ledger: {exc}")
    finally:
        conn.close()


def _verify(conn: sqlite3.Connection, pinned: bytes | None) -> VerifyReport:
    # Problems are (seq or None, text); the report names the lowest seq and
    # lists file-wide problems (integrity, identity) first.
    problems: list[tuple[int | None, str]] = []
    integrity = [row[0] for row in conn.execute("PRAGMA integrity_check")]
    if integrity != ["ok"]:
        problems.append((None, "SQLite integrity check failed: " + "; ".join(integrity[:3])))

    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not {"entries", "checkpoints", "meta"} <= tables:
        return VerifyReport(False, 0, 0, None, "not a ledger file: tables are missing")
    meta = conn.execute("SELECT terminal_id, public_key FROM meta").fetchall()
    n_checkpoints = conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0]
    if len(meta) != 1:
        return VerifyReport(False, 0, n_checkpoints, 1, "the ledger has no terminal identity")
    terminal_id, meta_key = meta[0]
    key_bytes = meta_key if pinned is None else pinned
    if pinned is not None and pinned != meta_key:
        problems.append(
            (
                1,
                "the ledger names a different key than the pinned terminal key: it may have "
                "been rebuilt by someone else",
            )
        )
    try:
        verifier = Ed25519PublicKey.from_public_bytes(key_bytes)
    except ValueError:
        return VerifyReport(False, 0, n_checkpoints, 1, "the ledger's public key is not valid")

    # Checkpoints: few (one per N entries), so load them all and check
    # their signatures before the entry pass.
    checkpoint_hash: dict[int, bytes] = {}
    for cp_seq, cp_hash, signature in conn.execute(
        "SELECT seq, hash, signature FROM checkpoints ORDER BY seq"
    ):
        checkpoint_hash[cp_seq] = cp_hash
        try:
            verifier.verify(signature, checkpoint_message(terminal_id, cp_seq, cp_hash))
        except InvalidSignature:
            problems.append(
                (
                    cp_seq,
                    f"checkpoint at entry {cp_seq}: the signature is forged "
                    "or made with another key",
                )
            )
            break

    last, chain_problem = _verify_chain(conn, checkpoint_hash, terminal_id, meta_key)
    entries = conn.execute("SELECT count(*) FROM entries").fetchone()[0]
    if chain_problem is not None:
        problems.append(chain_problem)
    elif checkpoint_hash and max(checkpoint_hash) > last:
        beyond = max(checkpoint_hash)
        problems.append(
            (
                last + 1,
                f"entries from {last + 1} on were deleted: a signed checkpoint "
                f"names entry {beyond} but the ledger ends at {last}",
            )
        )
    if not problems:
        return VerifyReport(True, entries, n_checkpoints, None, None)
    located = [p for p in problems if p[0] is not None]
    first_bad = min(p[0] for p in located if p[0] is not None) if located else None
    ordered = [p for p in problems if p[0] is None] + sorted(
        located, key=lambda p: p[0] if p[0] is not None else 0
    )
    return VerifyReport(False, entries, n_checkpoints, first_bad, "; ".join(p[1] for p in ordered))


def _verify_chain(
    conn: sqlite3.Connection,
    checkpoint_hash: dict[int, bytes],
    terminal_id: str,
    meta_key: bytes,
) -> tuple[int, tuple[int, str] | None]:
    """One pass over the entries; return (entries seen, first problem or None)."""
    genesis = conn.execute("SELECT seq, kind, detail FROM entries ORDER BY seq LIMIT 1").fetchone()
    if genesis is None:
        return 0, (1, "the ledger has no entries: genesis is missing")
    expected_detail = canonical_json({"terminal_id": terminal_id, "public_key": meta_key.hex()})
    anchor = _prune_anchor(conn)
    if (
        anchor is None
        and genesis[0] == 1
        and (genesis[1] != GENESIS or genesis[2] != expected_detail)
    ):
        return 0, (1, "entry 1 is not the genesis entry for this terminal and key")
    prev = GENESIS_PREV_HASH
    expected = 1
    if anchor is not None:
        # Retention removed entries up to the anchor; a signed checkpoint vouches for it.
        point, point_hash = anchor
        if checkpoint_hash.get(point) != point_hash:
            return 0, (point, f"the prune point {point} is not covered by a signed checkpoint")
        prev, expected = point_hash, point + 1

    last, problem = _walk_chain(conn, prev, expected, checkpoint_hash)
    if problem is not None:
        return last, problem
    if anchor is not None and not _prune_recorded(conn, anchor):
        return last, (
            anchor[0] + 1,
            f"entries up to {anchor[0]} are gone but no pruned entry in the chain says so",
        )
    return last, None


def _walk_chain(
    conn: sqlite3.Connection,
    prev: bytes,
    expected: int,
    checkpoint_hash: dict[int, bytes],
    upto: int = _INT64_MAX,
) -> tuple[int, tuple[int, str] | None]:
    """Re-hash entries ``expected..upto``, linked to ``prev``; (last good seq, problem)."""
    # The hot loop: keep per-row work to slicing, one CBOR encode and one hash.
    sha256 = hashlib.sha256
    dumps = cbor2.dumps
    domain = ENTRY_DOMAIN
    good_checkpoint = expected - 1
    cursor = conn.execute(
        "SELECT " + ", ".join(HASHED_COLUMNS) + ", prev_hash, hash FROM entries"
        " WHERE seq >= ? AND seq <= ? ORDER BY seq",
        (expected, upto),
    )
    cursor.arraysize = 1024
    for row in cursor:
        seq = row[0]
        if seq != expected:
            gap = f"entry {expected} is missing" if seq > expected else f"entry {seq} is repeated"
            return expected - 1, (expected, gap + f" (found {seq} after {expected - 1})")
        stored_prev = row[16]
        fields = row[:16]
        digest = sha256(domain + stored_prev + dumps(fields, canonical=True)).digest()
        if stored_prev != prev:
            return seq - 1, _locate_broken_link(conn, seq, stored_prev, digest == row[17])
        if digest != row[17]:
            return seq - 1, (seq, f"entry {seq} was altered: its hash does not match its contents")
        signed = checkpoint_hash.get(seq)
        if signed is not None:
            if signed != digest:
                # The chain is self-consistent, so someone rebuilt it: entries
                # up to the last matching checkpoint are proven, entry seq is
                # proven changed, and the rewrite began somewhere in between.
                return seq - 1, (
                    good_checkpoint + 1,
                    f"entries {good_checkpoint + 1}..{seq} were rewritten and re-hashed: entry "
                    f"{seq} differs from what checkpoint {seq} signed",
                )
            good_checkpoint = seq
        prev = digest
        expected += 1
    return expected - 1, None


def _prune_anchor(conn: sqlite3.Connection) -> tuple[int, bytes] | None:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "pruned" not in tables:
        return None
    row = conn.execute("SELECT up_to_seq, up_to_hash FROM pruned").fetchone()
    return None if row is None else (int(row[0]), bytes(row[1]))


def _prune_recorded(conn: sqlite3.Connection, anchor: tuple[int, bytes]) -> bool:
    """A PRUNED entry in the (verified) chain names this prune point and its hash."""
    wanted = {"up_to_seq": anchor[0], "up_to_hash": anchor[1].hex()}
    for (detail,) in conn.execute(
        "SELECT detail FROM entries WHERE kind = ? AND seq > ?", (PRUNED, anchor[0])
    ):
        if json.loads(detail) == wanted:
            return True
    return False


def _locate_broken_link(
    conn: sqlite3.Connection, seq: int, stored_prev: bytes, self_consistent: bool
) -> tuple[int, str]:
    """Entry ``seq`` does not link to entry ``seq - 1``: work out which one is out of place."""
    earlier = conn.execute(
        "SELECT max(seq) FROM entries WHERE hash = ? AND seq < ?", (stored_prev, seq - 1)
    ).fetchone()[0]
    if earlier is not None:
        return (
            earlier + 1,
            f"entries {earlier + 1}..{seq - 1} were inserted: entry {seq} links to entry {earlier}",
        )
    if self_consistent:
        # Entry seq is intact against its own prev_hash, so its predecessor
        # is the one that changed (rewritten with a fresh hash, or replaced).
        return (
            seq - 1,
            f"entry {seq - 1} was altered or replaced: entry {seq} does not link to it",
        )
    return (seq, f"entry {seq} was altered or moved: it does not link to entry {seq - 1}")


# --- the check at start: from the last verified checkpoint --------------------------------


@dataclass(frozen=True)
class ChainMark:
    """A point of the chain: an entry's seq and the hash it had then."""

    seq: int
    hash: bytes


@dataclass(frozen=True)
class StartCheck:
    """Outcome of ``check_at_start``: ``ok`` only when every check passed."""

    ok: bool
    problem: str | None  # one line for a person; None when ok
    first_bad_seq: int | None
    checked: int  # entries re-hashed by this check
    verified_to: ChainMark | None  # the newest signed checkpoint verified: the next start's mark
    # Entries up to this seq were verified at an earlier start and not re-hashed now:
    # the daemon audits them while idle (``ChainAudit``). 0 when the whole chain was walked.
    trusted_to: int = 0


def check_at_start(
    path: str | os.PathLike[str],
    public_key: bytes,
    verified: ChainMark | None,
    acknowledged: ChainMark | None,
) -> StartCheck:
    """Check, read-only, what a daemon must check before it appends to its ledger.

    ``verified`` is the checkpoint a previous start verified: entries up to it
    are not re-hashed again (that is what keeps a start fast at a million
    entries), but its hash must still be the one verified then. From there the
    chain is re-hashed link by link and every later checkpoint's signature is
    checked against ``public_key`` (the terminal's pinned key, not the one the
    file names). ``acknowledged`` is the highest entry the county acknowledged:
    its hash must not have changed either, so a history rewritten and re-signed
    with the terminal's own key is still refused. Without ``verified`` the
    whole chain is walked, as ``verify_file`` does, without the integrity check.
    """
    try:
        conn = _open_read_only(path)
    except LedgerError as exc:
        return StartCheck(False, str(exc), None, 0, None)
    try:
        return _check_at_start(conn, public_key, verified, acknowledged)
    except sqlite3.DatabaseError as exc:
        return StartCheck(False, f"cannot read the ledger: {exc}", None, 0, None)
    finally:
        conn.close()


def _check_at_start(
    conn: sqlite3.Connection,
    public_key: bytes,
    verified: ChainMark | None,
    acknowledged: ChainMark | None,
) -> StartCheck:
    def bad(seq: int | None, problem: str, checked: int = 0) -> StartCheck:
        return StartCheck(False, problem, seq, checked, None)

    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not {"entries", "checkpoints", "meta"} <= tables:
        return bad(None, "not a ledger file: tables are missing")
    meta = conn.execute("SELECT terminal_id, public_key FROM meta").fetchall()
    if len(meta) != 1:
        return bad(1, "the ledger has no terminal identity")
    terminal_id, meta_key = meta[0]
    if meta_key != public_key:
        return bad(1, "the ledger names another key than the terminal's own: it was rebuilt")
    try:
        verifier = Ed25519PublicKey.from_public_bytes(public_key)
    except ValueError:
        return bad(1, "the terminal's public key is not valid")
    last = conn.execute("SELECT max(seq) FROM entries").fetchone()[0]
    if last is None:
        return bad(1, "the ledger has no entries: genesis is missing")
    anchor = _prune_anchor(conn)

    def hash_at(seq: int) -> bytes | None:
        row = conn.execute("SELECT hash FROM entries WHERE seq = ?", (seq,)).fetchone()
        if row is not None:
            return bytes(row[0])
        if anchor is not None and anchor[0] == seq:
            return anchor[1]
        return None

    if acknowledged is not None:
        held = hash_at(acknowledged.seq)
        if held is None and acknowledged.seq > last:
            return bad(
                last + 1,
                f"entries after {last} are gone, but the county acknowledged up to "
                f"entry {acknowledged.seq}",
            )
        # Below a prune point the entry is gone for good: the county holds it.
        if held is not None and held != acknowledged.hash:
            return bad(
                acknowledged.seq,
                f"history the county acknowledged was rewritten: entry {acknowledged.seq} "
                "is not the one the county holds",
            )

    start: tuple[int, bytes] | None = None  # (seq, hash) the walk links to
    if verified is not None:
        held = hash_at(verified.seq)
        if held is not None:
            if held != verified.hash:
                return bad(
                    verified.seq,
                    f"entries up to {verified.seq} were rewritten since they were verified "
                    "at an earlier start",
                )
            start = (verified.seq, verified.hash)
        elif verified.seq > last:
            return bad(
                last + 1,
                f"entries after {last} are gone: entry {verified.seq} was verified at an "
                "earlier start",
            )
        # Else retention pruned past the mark: walk from the prune point instead.
    if start is None and anchor is not None:
        start = anchor

    if start is None:
        genesis = conn.execute("SELECT seq, kind, detail FROM entries WHERE seq = 1").fetchone()
        expected_detail = canonical_json(
            {"terminal_id": terminal_id, "public_key": public_key.hex()}
        )
        if genesis is None or genesis[1] != GENESIS or genesis[2] != expected_detail:
            return bad(1, "entry 1 is not the genesis entry for this terminal and key")
        prev, first = GENESIS_PREV_HASH, 1
    else:
        prev, first = start[1], start[0] + 1

    # Checkpoints from the start point on (the one at a prune point vouches for it).
    checkpoint_hash: dict[int, bytes] = {}
    low = first - 1 if start is not None and start == anchor else first
    for cp_seq, cp_hash, signature in conn.execute(
        "SELECT seq, hash, signature FROM checkpoints WHERE seq >= ? ORDER BY seq", (low,)
    ):
        try:
            verifier.verify(signature, checkpoint_message(terminal_id, cp_seq, cp_hash))
        except InvalidSignature:
            return bad(cp_seq, f"checkpoint at entry {cp_seq}: the signature is forged")
        checkpoint_hash[cp_seq] = cp_hash
    if start is not None and start == anchor and checkpoint_hash.get(anchor[0]) != anchor[1]:
        return bad(anchor[0], f"the prune point {anchor[0]} is not covered by a signed checkpoint")

    walked_to, problem = _walk_chain(conn, prev, first, checkpoint_hash)
    checked = walked_to - first + 1
    if problem is not None:
        return bad(problem[0], problem[1], checked)
    if checkpoint_hash and max(checkpoint_hash) > walked_to:
        return bad(
            walked_to + 1,
            f"entries from {walked_to + 1} on were deleted: a signed checkpoint names entry "
            f"{max(checkpoint_hash)}",
            checked,
        )
    if start is not None and start == anchor and not _prune_recorded(conn, anchor):
        return bad(
            anchor[0] + 1,
            f"entries up to {anchor[0]} are gone but no pruned entry in the chain says so",
            checked,
        )
    signed = [seq for seq in checkpoint_hash if first <= seq <= walked_to]
    if signed:
        top = max(signed)
        mark: ChainMark | None = ChainMark(top, checkpoint_hash[top])
    else:
        mark = None if start is None else ChainMark(*start)
    trusted_to = verified.seq if start is not None and verified is not None else 0
    if start is not None and start == anchor:
        trusted_to = 0
    return StartCheck(True, None, None, checked, mark, trusted_to)


class ChainAudit:
    """Re-hash a ledger's entries up to a seq, a slice at a time, on its writer's connection.

    The check at start re-hashes only what came after the last verified checkpoint; this
    walks the older part while the terminal is idle, so an entry edited there without
    re-hashing (which leaves every link intact) is still found at every start, without
    making the start slow. Each ``step`` is short and runs on the decision worker, so it
    never races the worker's own appends or a prune.
    """

    def __init__(self, book: Ledger, upto_seq: int) -> None:
        self._book = book
        self.upto = upto_seq
        self.problem: tuple[int, str] | None = None
        self.checked = 0
        self._prev = GENESIS_PREV_HASH
        self._next = 1
        public = _public_bytes(book._key)
        self._verifier = Ed25519PublicKey.from_public_bytes(public)
        self._genesis_detail = canonical_json(
            {"terminal_id": book.terminal_id, "public_key": public.hex()}
        )

    @property
    def done(self) -> bool:
        return self.problem is not None or self._next > self.upto

    def step(self, limit: int) -> bool:
        """Re-hash up to ``limit`` more entries; True when the audit is over (done or bad)."""
        if self.done:
            return True
        conn = self._book._db
        anchor = _prune_anchor(conn)
        if anchor is not None and self._next <= anchor[0]:
            # Retention removed the start of the chain: its signed prune point vouches for it.
            cp = conn.execute(
                "SELECT hash, signature FROM checkpoints WHERE seq = ?", (anchor[0],)
            ).fetchone()
            if cp is None or bytes(cp[0]) != anchor[1] or not self._signed(anchor[0], cp):
                self.problem = (anchor[0], f"the prune point {anchor[0]} is not signed")
                return True
            self._prev, self._next = anchor[1], anchor[0] + 1
        elif self._next == 1:
            genesis = conn.execute("SELECT kind, detail FROM entries WHERE seq = 1").fetchone()
            if genesis is None or genesis[0] != GENESIS or genesis[1] != self._genesis_detail:
                self.problem = (1, "entry 1 is not the genesis entry for this terminal and key")
                return True
        last = min(self.upto, self._next + limit - 1)
        checkpoint_hash: dict[int, bytes] = {}
        for cp_seq, cp_hash, signature in conn.execute(
            "SELECT seq, hash, signature FROM checkpoints WHERE seq >= ? AND seq <= ?",
            (self._next, last),
        ):
            if not self._signed(cp_seq, (cp_hash, signature)):
                self.problem = (cp_seq, f"checkpoint at entry {cp_seq}: the signature is forged")
                return True
            checkpoint_hash[cp_seq] = cp_hash
        walked, problem = _walk_chain(conn, self._prev, self._next, checkpoint_hash, last)
        self.checked += max(0, walked - self._next + 1)
        if problem is None and walked < last:
            problem = (walked + 1, f"entry {walked + 1} is missing")
        if problem is not None:
            self.problem = problem
            return True
        self._prev = bytes(
            conn.execute("SELECT hash FROM entries WHERE seq = ?", (last,)).fetchone()[0]
        )
        self._next = last + 1
        return self.done

    def _signed(self, seq: int, cp: Sequence[Any]) -> bool:
        message = checkpoint_message(self._book.terminal_id, seq, bytes(cp[0]))
        try:
            self._verifier.verify(bytes(cp[1]), message)
        except InvalidSignature:
            return False
        return True


# --- export and stats ----------------------------------------------------------------


def _hex_or_none(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


def export_file(path: str | os.PathLike[str], fmt: Literal["csv", "jsonl"], out: TextIO) -> int:
    """Write every entry to ``out`` as CSV or JSON lines, read-only; return the count."""
    if fmt not in ("csv", "jsonl"):
        raise LedgerError(f"unknown export format {fmt!r}: use csv or jsonl")
    conn = _open_read_only(path)
    count = 0
    try:
        rows = conn.execute(_SELECT_ALL + " ORDER BY seq")
        write: Callable[[Sequence[Any]], None]
        if fmt == "csv":
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(ALL_COLUMNS)

            def write(row: Sequence[Any]) -> None:
                writer.writerow([*row[:16], row[16].hex(), row[17].hex(), row[18]])
        else:

            def write(row: Sequence[Any]) -> None:
                record = dict(zip(ALL_COLUMNS, row, strict=True))
                record["detail"] = json.loads(row[15])
                record["prev_hash"] = _hex_or_none(row[16])
                record["hash"] = _hex_or_none(row[17])
                out.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")

        for row in rows:
            write(row)
            count += 1
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"cannot read the ledger {path}: {exc}") from exc
    finally:
        conn.close()
    return count


def stats_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Counts and sums over a ledger file, read-only."""
    conn = _open_read_only(path)
    try:
        total, first_ms, last_ms, last_seq = conn.execute(
            "SELECT count(*), min(at_ms), max(at_ms), max(seq) FROM entries"
        ).fetchone()
        by_kind = dict(conn.execute("SELECT kind, count(*) FROM entries GROUP BY kind"))
        by_verdict = {
            ("none" if k is None else k): v
            for k, v in conn.execute("SELECT verdict, count(*) FROM entries GROUP BY verdict")
        }
        by_reason = dict(
            conn.execute(
                "SELECT reason, count(*) FROM entries WHERE reason IS NOT NULL GROUP BY reason"
            )
        )
        sales, fen = conn.execute(
            "SELECT count(*), coalesce(sum(amount_fen), 0) FROM entries"
            " WHERE kind = 'sale' AND verdict = 'accept'"
        ).fetchone()
        reversed_count, reversed_fen = conn.execute(
            "SELECT count(*), coalesce(sum(s.amount_fen), 0) FROM entries AS s"
            " WHERE s.kind = 'sale' AND s.verdict = 'accept' AND EXISTS (SELECT 1 FROM entries"
            " AS r WHERE r.ref_seq = s.seq AND r.kind = 'reversal')"
        ).fetchone()
        unacked = conn.execute("SELECT count(*) FROM entries WHERE acked_at_ms IS NULL").fetchone()[
            0
        ]
        checkpoints = conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0]
        meta = conn.execute("SELECT terminal_id, schema FROM meta").fetchone()
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"cannot read the ledger {path}: {exc}") from exc
    finally:
        conn.close()
    file = Path(path)
    wal = file.with_name(file.name + "-wal")
    return {
        "terminal_id": None if meta is None else meta[0],
        "schema": None if meta is None else meta[1],
        "entries": total,
        "last_seq": last_seq,
        "by_kind": by_kind,
        "by_verdict": by_verdict,
        "by_reason": by_reason,
        "accepted_sales": sales,
        "accepted_fen": fen,
        "reversed_sales": reversed_count,
        "reversed_fen": reversed_fen,
        "net_fen": fen - reversed_fen,
        "unacked": unacked,
        "first_ms": first_ms,
        "last_ms": last_ms,
        "checkpoints": checkpoints,
        "file_bytes": file.stat().st_size + (wal.stat().st_size if wal.exists() else 0),
    }
