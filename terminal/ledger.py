"""Append-only, hash-chained SQLite ledger: every decision the terminal makes.

This module owns the open ledger file: appending entries (committed and fsynced
before ``append`` returns), group commit, the hash chain as it is written,
checkpoints signed with the terminal's own Ed25519 key, the read queries the
policy needs, marking entries acknowledged by the county server, and retention.
Beside it: the schema and migrations (``ledger_schema``), the audit, export and
stats (``ledger_audit``) and the key file (``ledger_key``); their names are
re-exported here. It never edits or deletes an entry (but for retention), never
reads a clock (times are arguments) and imports no device or network library.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# The chain format, entry kinds, verdicts and the entry types are protocol/chain.py's
# (the county and terminal.core use them too); re-exported for the terminal's callers.
from protocol.chain import ACCEPT as ACCEPT
from protocol.chain import CHECKPOINT_DOMAIN as CHECKPOINT_DOMAIN
from protocol.chain import CLOCK_FAULT as CLOCK_FAULT
from protocol.chain import CONFIG_APPLIED as CONFIG_APPLIED
from protocol.chain import ENTRY_DOMAIN as ENTRY_DOMAIN
from protocol.chain import GENESIS as GENESIS
from protocol.chain import GENESIS_PREV_HASH as GENESIS_PREV_HASH
from protocol.chain import HASHED_COLUMNS as HASHED_COLUMNS
from protocol.chain import PRUNED as PRUNED
from protocol.chain import REJECT as REJECT
from protocol.chain import REVERSAL as REVERSAL
from protocol.chain import SALE as SALE
from protocol.chain import TIME_SIGNAL as TIME_SIGNAL
from protocol.chain import TOKEN_CHECK as TOKEN_CHECK
from protocol.chain import EntryDraft as EntryDraft
from protocol.chain import LedgerEntry as LedgerEntry
from protocol.chain import canonical_json as canonical_json
from protocol.chain import checkpoint_message as checkpoint_message
from protocol.chain import entry_hash as entry_hash
from terminal.durable import write_transaction

# The audit and the key file, re-exported: callers say ledger.verify_file and so on.
from terminal.ledger_audit import ChainAudit as ChainAudit
from terminal.ledger_audit import ChainMark as ChainMark
from terminal.ledger_audit import StartCheck as StartCheck
from terminal.ledger_audit import VerifyReport as VerifyReport
from terminal.ledger_audit import check_at_start as check_at_start
from terminal.ledger_audit import export_file as export_file
from terminal.ledger_audit import stats_file as stats_file
from terminal.ledger_audit import verify_file as verify_file
from terminal.ledger_key import load_or_create_signing_key as load_or_create_signing_key
from terminal.ledger_key import public_bytes
from terminal.ledger_schema import ALL_COLUMNS as ALL_COLUMNS
from terminal.ledger_schema import (
    INSERT_ENTRY,
    INT64_MAX,
    INT64_MIN,
    SELECT_ENTRIES,
    apply_migrations,
)
from terminal.ledger_schema import SCHEMA_VERSION as SCHEMA_VERSION
from terminal.ledger_schema import LedgerError as LedgerError

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
    if type(value) is not int or not INT64_MIN <= value <= INT64_MAX:
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


def _write_failed(exc: BaseException) -> LedgerError:
    return LedgerError(
        f"ledger write failed: {exc}; nothing was recorded. Check free space on the "
        "storage card and run 'canteen-terminal ledger verify'; call county IT if it persists"
    )


@contextlib.contextmanager
def _writing(conn: sqlite3.Connection, savepoint: str | None = None) -> Iterator[None]:
    """One write transaction (``durable.write_transaction``); a SQLite error in it,
    the BEGIN and the COMMIT included, becomes a ``LedgerError`` saying nothing was recorded."""
    try:
        with write_transaction(conn, savepoint):
            yield
    except sqlite3.Error as exc:
        raise _write_failed(exc) from exc


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
            apply_migrations(conn, now_ms)
            public = public_bytes(signing_key)
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
        with write_transaction(conn):
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
                conn.execute(INSERT_ENTRY, (*fields, GENESIS_PREV_HASH, digest))
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
        with _writing(conn, "entry" if grouped else None):
            if draft.kind == REVERSAL:
                self._check_reversal(conn, draft)
            last_seq, last_hash = conn.execute(
                "SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            seq = last_seq + 1
            fields = (seq, uuid.uuid4().hex, at_ms, *columns)
            digest = entry_hash(last_hash, fields)
            conn.execute(INSERT_ENTRY, (*fields, last_hash, digest))
            if seq % self._checkpoint_every == 0:
                self._insert_checkpoint(conn, seq, digest, at_ms)
        self._count_appended(draft)
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
        failed_inside = False
        try:
            with write_transaction(conn):
                self._grouped = True
                try:
                    yield
                except BaseException:
                    failed_inside = True
                    raise
                finally:
                    self._grouped = False
        except BaseException as exc:
            self._unsynced = None  # what the group counted was rolled back
            if isinstance(exc, sqlite3.Error) and not failed_inside:
                raise _write_failed(exc) from exc  # the BEGIN or the COMMIT failed
            raise

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
        # When the county last acknowledged what goes: with every acknowledged entry
        # pruned, "time since the last sync" must still count from it (last_ack_ms).
        acked = conn.execute(
            "SELECT max(acked_at_ms) FROM entries WHERE seq <= ?", (point,)
        ).fetchone()[0]
        detail: dict[str, Any] = {"up_to_seq": point, "up_to_hash": point_hash.hex()}
        if acked is not None:
            detail["acked_at_ms"] = int(acked)
        self.append(EntryDraft(kind=PRUNED, detail=detail), at_ms)
        with _writing(conn):
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
        with _writing(conn):
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
        self._unsynced = None
        return int(count)

    def close(self, at_ms: int | None = None) -> None:
        """Sign a checkpoint over the last entry (if it has none) and close the file."""
        if self._conn is None:
            return
        conn = self._conn
        try:
            with _writing(conn):
                last_seq, last_hash, last_at = conn.execute(
                    "SELECT seq, hash, at_ms FROM entries ORDER BY seq DESC LIMIT 1"
                ).fetchone()
                done = conn.execute("SELECT 1 FROM checkpoints WHERE seq = ?", (last_seq,))
                if done.fetchone() is None:
                    self._insert_checkpoint(
                        conn, last_seq, last_hash, last_at if at_ms is None else at_ms
                    )
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
        """When the county server last acknowledged entries, or None if it never has.

        Retention may have removed every acknowledged entry: the newest PRUNED entry
        then says when the county acknowledged the last of them.
        """
        value: int | None = self._db.execute(
            "SELECT max(acked_at_ms) FROM entries WHERE acked_at_ms IS NOT NULL"
        ).fetchone()[0]
        if value is not None:
            return value
        row = self._db.execute(
            "SELECT detail FROM entries WHERE kind = ? ORDER BY seq DESC LIMIT 1", (PRUNED,)
        ).fetchone()
        acked = json.loads(row[0]).get("acked_at_ms") if row is not None else None
        return acked if type(acked) is int else None

    def last_acked(self) -> ChainMark | None:
        """The highest entry the county server acknowledged, with its hash; None if none."""
        row = self._db.execute(
            "SELECT seq, hash FROM entries WHERE acked_at_ms IS NOT NULL ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        return None if row is None else ChainMark(int(row[0]), bytes(row[1]))

    def entry(self, seq: int) -> LedgerEntry | None:
        """The entry with this sequence number, if there is one."""
        row = self._db.execute(SELECT_ENTRIES + " WHERE seq = ?", (seq,)).fetchone()
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
                SELECT_ENTRIES + " WHERE seq >= ? ORDER BY seq LIMIT ?", (next_seq, page)
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
            SELECT_ENTRIES + " AS s WHERE s.kind = 'sale' AND s.verdict = 'accept'"
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
