"""The ledger's audit: offline verification, the check at start, the idle audit, export and stats.

This module owns every read-only look at a ledger file: ``verify_file`` (SQLite's
integrity check, the whole hash chain and the checkpoint signatures), the faster
``check_at_start`` from the last verified checkpoint, ``ChainAudit`` (the older part
of the chain, a slice at a time, while the terminal is idle), and ``export_file`` and
``stats_file`` (through sqlite-utils). It never writes to a ledger, never opens one
for writing (``ChainAudit`` reads on its writer's connection) and never reads a clock.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from protocol.chain import (
    ENTRY_DOMAIN,
    GENESIS,
    GENESIS_PREV_HASH,
    HASHED_COLUMNS,
    PRUNED,
    canonical_json,
    checkpoint_message,
)
from terminal.ledger_key import public_bytes
from terminal.ledger_schema import (
    ALL_COLUMNS,
    INT64_MAX,
    LedgerError,
    sqlite_utils_database,
)

if TYPE_CHECKING:
    from terminal.ledger import Ledger


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of ``verify_file``: ``ok`` only when every check passed."""

    ok: bool
    entries: int  # rows read from the entries table
    checkpoints: int  # rows in the checkpoints table
    first_bad_seq: int | None  # the first entry that is missing, altered or out of place
    problem: str | None  # one line for a person; None when ok


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
    upto: int = INT64_MAX,
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
    for (detail,) in conn.execute(
        "SELECT detail FROM entries WHERE kind = ? AND seq > ?", (PRUNED, anchor[0])
    ):
        named = json.loads(detail)
        if named.get("up_to_seq") == anchor[0] and named.get("up_to_hash") == anchor[1].hex():
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
        public = public_bytes(book._key)
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


# --- export and stats: sqlite-utils reads the rows ------------------------------------


def _hex_or_none(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


def _rows(conn: sqlite3.Connection, sql: str) -> Iterator[dict[str, Any]]:
    """Rows of ``sql`` as dicts keyed by column name (a missing table raises, as SQL does)."""
    rows: Iterator[dict[str, Any]] = sqlite_utils_database(conn).query(sql)
    return rows


def export_file(path: str | os.PathLike[str], fmt: Literal["csv", "jsonl"], out: TextIO) -> int:
    """Write every entry to ``out`` as CSV or JSON lines, read-only; return the count."""
    if fmt not in ("csv", "jsonl"):
        raise LedgerError(f"unknown export format {fmt!r}: use csv or jsonl")
    conn = _open_read_only(path)
    count = 0
    try:
        rows = _rows(conn, "SELECT " + ", ".join(ALL_COLUMNS) + " FROM entries ORDER BY seq")
        if fmt == "csv":
            writer = csv.DictWriter(out, fieldnames=ALL_COLUMNS, lineterminator="\n")
            writer.writeheader()
            for record in rows:
                record["prev_hash"] = record["prev_hash"].hex()
                record["hash"] = record["hash"].hex()
                writer.writerow(record)
                count += 1
        else:
            for record in rows:
                record["detail"] = json.loads(record["detail"])
                record["prev_hash"] = _hex_or_none(record["prev_hash"])
                record["hash"] = _hex_or_none(record["hash"])
                out.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
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
        db = sqlite_utils_database(conn)
        entries = db.table("entries")
        total = entries.count
        first_ms, last_ms, last_seq = conn.execute(
            "SELECT min(at_ms), max(at_ms), max(seq) FROM entries"
        ).fetchone()

        def counts(column: str, where: str = "") -> dict[Any, int]:
            sql = f"SELECT {column} AS k, count(*) AS n FROM entries {where} GROUP BY {column}"
            return {row["k"]: row["n"] for row in _rows(conn, sql)}

        by_kind = counts("kind")
        by_verdict = {("none" if k is None else k): v for k, v in counts("verdict").items()}
        by_reason = counts("reason", "WHERE reason IS NOT NULL")
        sales, fen = conn.execute(
            "SELECT count(*), coalesce(sum(amount_fen), 0) FROM entries"
            " WHERE kind = 'sale' AND verdict = 'accept'"
        ).fetchone()
        reversed_count, reversed_fen = conn.execute(
            "SELECT count(*), coalesce(sum(s.amount_fen), 0) FROM entries AS s"
            " WHERE s.kind = 'sale' AND s.verdict = 'accept' AND EXISTS (SELECT 1 FROM entries"
            " AS r WHERE r.ref_seq = s.seq AND r.kind = 'reversal')"
        ).fetchone()
        unacked = entries.count_where("acked_at_ms IS NULL")
        checkpoints = db.table("checkpoints").count
        metas = list(_rows(conn, "SELECT terminal_id, schema FROM meta"))
        meta = metas[0] if metas else None
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"cannot read the ledger {path}: {exc}") from exc
    finally:
        conn.close()
    file = Path(path)
    wal = file.with_name(file.name + "-wal")
    return {
        "terminal_id": None if meta is None else meta["terminal_id"],
        "schema": None if meta is None else meta["schema"],
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
