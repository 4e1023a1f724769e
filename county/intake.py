"""Ledger intake: every rule by which a terminal's batch becomes acknowledged entries.

This module owns what happens to one upload batch. Its entries are checked for shape
(``parse_batch``: a malformed batch is a 400 before the database is touched), re-hashed
with the terminal's own ``entry_hash``, linked to the entry before them, checked for
contiguity and for the terminal's signed checkpoints (with the checkpoint key pinned at
provisioning), and stored in one transaction before anything is acknowledged.
Duplicates are acknowledged again, a gap is held and answered with where to resume, a
different entry under an acknowledged sequence number is a fork alarm. New accepted
sales and reversals go on to county/conflicts.py inside the same transaction. It also
reads the terminals' clock offsets out of their time_signal entries (``note_clock``).
It never speaks HTTP and never signs anything: the app does those.

Exactly once, with several server processes on one PostgreSQL. There is no lock in
the process; the database decides:

- One terminal's intake. The write transaction first locks that terminal's row
  (SELECT ... FOR UPDATE) and only then reads acked_seq and last_hash. Two processes
  given the same terminal's batch at the same moment run one after the other: the
  second waits on the row, then (at READ COMMITTED the locked row is re-read as the
  first committed it) sees the entries the first stored and acknowledges them again as
  duplicates; a batch beyond the mark is held as a gap; a different entry under a
  stored number is a fork. The held batches, checkpoints and clock offsets of a
  terminal are only written under the same row lock. On SQLite the lock clause is not
  rendered: BEGIN IMMEDIATE already gives the whole file to one writer.
- Across terminals. The conflict checks take advisory locks on the keys they look
  under, so two halves of a conflict arriving in two processes find it once
  (county/conflicts.py says how); the UNIQUE constraint on conflicts is the backstop.
- Alarms and counters are single upsert statements (ON CONFLICT DO UPDATE): a flood of
  retries counted in two processes adds up, neither overwrites the other.

Two transactions that would wait on each other in a way the sorted key order cannot
prevent (a held batch drained after the first round of checks) are broken by
PostgreSQL's deadlock detection: one is rolled back whole and answered 503, and the
terminal sends the batch again. Nothing is stored half.

What one sync costs (issue 14's lunch peak). A batch that stores entries is one write
transaction with one commit: the terminal's clock offsets are read out of the new
entries inside it (``note_clock``), not in a second transaction after it. A sync with
nothing new (no entries) is answered from a read transaction and writes nothing, as
long as the terminal's ``last_seen_ms`` is younger than ``SEEN_STEP_MS``; only then is
it a write (the new ``last_seen_ms`` and the ``batches_ok`` counter). So
``last_seen_ms`` is when the terminal was last heard from to within ``SEEN_STEP_MS``
(the report's silent terminals are counted in hours), and ``batches_ok`` counts the
batches that went through a write transaction, not the empty ones answered from a read.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Connection, Executable, bindparam, delete, func, insert, select, update

from county import conflicts, evidence, rollups
from county.db.schema import alarms, checkpoints, clock_offsets, entries, held_batches, terminals
from county.storekit import (
    ALTERED,
    BAD_CHECKPOINT,
    BAD_GENESIS,
    BEFORE_THE_KEY,
    CLOCK,
    FORK,
    GAP,
    OK,
    REFUSED,
    UNSIGNED,
    Limits,
    Prepared,
    StoreError,
    alarm_row,
    bump_all,
    dialect_insert,
    insert_or_ignore,
    record_alarms,
)
from protocol.chain import (
    ACCEPT,
    GENESIS,
    GENESIS_PREV_HASH,
    HASHED_COLUMNS,
    REVERSAL,
    SALE,
    TIME_SIGNAL,
    canonical_json,
    checkpoint_message,
    entry_hash,
)

CLOCK_TOLERANCE_MS = 30_000  # as the terminal's [sync] clock_tolerance_s default
# An empty batch writes the terminal's last_seen_ms only when the stored one is this old:
# terminals sync every 5 minutes, so an idle one writes at most every other sync.
SEEN_STEP_MS = 10 * 60_000


class BatchInvalid(StoreError):
    """The batch is malformed: not the protocol's shape or types (HTTP 400)."""


@dataclass
class IntakeResult:
    """What the server answers to one batch (before the app adds its signed time)."""

    status: str  # OK, GAP or REFUSED
    acked_seq: int
    accepted: int = 0  # entries stored by this batch (held batches drained included)
    duplicates: int = 0  # entries that were already stored with the same hash
    alarm: str | None = None  # FORK, ALTERED, BAD_CHECKPOINT, BAD_GENESIS, UNSIGNED
    problem: str | None = None  # one line for a person
    conflicts: list[int] = field(default_factory=list)

    @property
    def resume_from(self) -> int:
        return self.acked_seq + 1


# --- the batch on the wire -------------------------------------------------------------

# The wire carries the ledger's hashed columns in the ledger's own order.
_ENTRY_COLUMNS = HASHED_COLUMNS
# A wire entry is the 16 hashed fields in ledger order, then prev_hash and hash in hex.
WIRE_ENTRY_LENGTH = len(_ENTRY_COLUMNS) + 2
_INT_FIELDS = {0, 2, 13}
_OPT_INT_FIELDS = {9, 14}
_TEXT_FIELDS = {1, 3, 15}
# Integers are stored in SQLite INTEGER columns: signed 64 bits. Anything outside is
# malformed (400), never an overflow deep in the database (500, "retry later").
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# Every text of an entry but its detail is an id, a code or a day, and several are
# indexed together (cadre, day, meal): PostgreSQL's B-tree takes at most 2,704 bytes a
# row and refused longer ones (a 503 the terminal retried for ever), SQLite took them.
# Malformed on both backends, as any other shape error.
_MAX_TEXT_BYTES = 512
_DETAIL = 15


def _int64(value: object) -> bool:
    return type(value) is int and _INT64_MIN <= value <= _INT64_MAX


def _hex(value: object, what: str, length: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise BatchInvalid(f"{what} must be hex text")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise BatchInvalid(f"{what} is not hex") from None
    if length is not None and len(raw) != length:
        raise BatchInvalid(f"{what} must be {length} bytes, got {len(raw)}")
    return raw


@dataclass(frozen=True)
class WireEntry:
    fields: tuple[Any, ...]  # the 16 hashed fields, in ledger order
    prev_hash: bytes
    hash: bytes

    @property
    def seq(self) -> int:
        value: int = self.fields[0]
        return value


def parse_batch(
    doc: Any, limits: Limits
) -> tuple[list[WireEntry], list[tuple[int, bytes, int, bytes]], bytes]:
    """(entries, checkpoints, nonce) of a batch document, checked for shape and types only."""
    if not isinstance(doc, dict):
        raise BatchInvalid("the batch must be a JSON object")
    nonce = _hex(doc.get("nonce", ""), "nonce")
    if len(nonce) > 64:
        raise BatchInvalid("nonce is longer than 64 bytes")
    raw_entries = doc.get("entries", [])
    raw_cps = doc.get("checkpoints", [])
    if not isinstance(raw_entries, list) or not isinstance(raw_cps, list):
        raise BatchInvalid("entries and checkpoints must be arrays")
    if len(raw_entries) > limits.max_batch_entries:
        raise BatchInvalid(
            f"the batch has {len(raw_entries)} entries; at most {limits.max_batch_entries} fit"
        )
    if len(raw_cps) > len(raw_entries):
        raise BatchInvalid("more checkpoints than entries")
    entries: list[WireEntry] = []
    for i, item in enumerate(raw_entries):
        if not isinstance(item, list) or len(item) != WIRE_ENTRY_LENGTH:
            raise BatchInvalid(f"entry {i}: must be an array of {WIRE_ENTRY_LENGTH} items")
        for j in range(16):
            value = item[j]
            name = _ENTRY_COLUMNS[j]
            if j in _INT_FIELDS:
                ok = _int64(value)
            elif j in _OPT_INT_FIELDS:
                ok = value is None or _int64(value)
            elif j in _TEXT_FIELDS:
                ok = isinstance(value, str)
            else:
                ok = value is None or isinstance(value, str)
            if not ok:
                raise BatchInvalid(
                    f"entry {i}: {name} has the wrong type or is outside signed 64 bits"
                )
            if (
                j != _DETAIL
                and isinstance(value, str)
                and len(value) > _MAX_TEXT_BYTES // 4
                and len(value.encode("utf-8")) > _MAX_TEXT_BYTES
            ):
                raise BatchInvalid(f"entry {i}: {name} is longer than {_MAX_TEXT_BYTES} bytes")
        if item[0] < 1:
            raise BatchInvalid(f"entry {i}: seq must be 1 or more")
        entries.append(
            WireEntry(
                tuple(item[:16]),
                _hex(item[16], f"entry {i}: prev_hash", 32),
                _hex(item[17], f"entry {i}: hash", 32),
            )
        )
    for i in range(1, len(entries)):
        if entries[i].seq != entries[i - 1].seq + 1:
            raise BatchInvalid(
                f"entries must be contiguous and in order: {entries[i].seq} follows "
                f"{entries[i - 1].seq}"
            )
    checkpoints: list[tuple[int, bytes, int, bytes]] = []
    for i, item in enumerate(raw_cps):
        if (
            not isinstance(item, list)
            or len(item) != 4
            or not _int64(item[0])
            or not _int64(item[2])
        ):
            raise BatchInvalid(
                f"checkpoint {i}: must be [seq, hash hex, at_ms, signature hex], "
                "integers of 64 bits"
            )
        checkpoints.append(
            (
                item[0],
                _hex(item[1], f"checkpoint {i}: hash", 32),
                item[2],
                _hex(item[3], f"checkpoint {i}: signature", 64),
            )
        )
    return entries, checkpoints, nonce


# --- one batch ---------------------------------------------------------------------------

# The statements every batch runs are built once (SQLAlchemy then finds each compiled
# form in its cache by identity) and run with their values as parameters: building a
# Core statement costs more than SQLite takes to run it. They are dialect-neutral: the
# FOR UPDATE clause is not rendered on SQLite. Those of every sale sync or empty sync
# are ``Prepared`` (county/storekit.py): compiled once per dialect and run on the
# driver's cursor, without SQLAlchemy's per-statement work.
_T, _H, _E = terminals.c, held_batches.c, entries.c
# Whether any terminal's held batch is older than ``before`` (they are swept then). Read
# beside the terminal's row, so the sweep's DELETE runs only when there is something to
# sweep; on PostgreSQL it may miss one held a moment ago, which the next batch sweeps.
_ANY_EXPIRED = (
    select(_H.terminal).where(_H.received_ms < bindparam("before")).limit(1).exists()
).label("expired")
_TERMINAL = Prepared(
    select(_T.canteen, _T.ledger_key, _T.acked_seq, _T.last_hash, _ANY_EXPIRED)
    .where(_T.terminal_id == bindparam("terminal"))
    .with_for_update()
)
_SEEN = Prepared(
    update(terminals)
    .where(_T.terminal_id == bindparam("terminal"))
    .values(last_seen_ms=bindparam("now"))
)
_EXPIRE_HELD = delete(held_batches).where(_H.received_ms < bindparam("before"))
_STORED_HASHES = select(_E.seq, _E.hash).where(
    _E.terminal == bindparam("terminal"),
    _E.seq.between(bindparam("lo"), bindparam("hi")),
)
_INSERT_ENTRIES = Prepared(
    insert(entries),
    [*_ENTRY_COLUMNS, "terminal", "canteen", "prev_hash", "hash", "received_ms"],
)
_NEW_MARK = Prepared(
    update(terminals)
    .where(_T.terminal_id == bindparam("terminal"))
    .values(
        acked_seq=bindparam("acked"),
        last_hash=bindparam("last"),
        last_seen_ms=bindparam("now"),
    )
)
_HELD_COUNT = (
    select(func.count()).select_from(held_batches).where(_H.terminal == bindparam("terminal"))
)
_ANY_HELD = Prepared(select(_H.first_seq).where(_H.terminal == bindparam("terminal")).limit(1))
_DROP_COVERED = delete(held_batches).where(
    _H.terminal == bindparam("terminal"), _H.last_seq <= bindparam("acked")
)
_NEXT_HELD = (
    select(_H.first_seq, _H.last_seq, _H.body)
    .where(_H.terminal == bindparam("terminal"), _H.first_seq <= bindparam("next"))
    .order_by(_H.last_seq.desc())
    .limit(1)
)
_DROP_HELD = delete(held_batches).where(
    _H.terminal == bindparam("terminal"),
    _H.first_seq == bindparam("first"),
    _H.last_seq == bindparam("last"),
)
_LAST_HASH = select(_T.last_hash).where(_T.terminal_id == bindparam("terminal"))


@functools.cache
def _insert_checkpoints(dialect: str) -> Prepared:
    return Prepared(insert_or_ignore(dialect, checkpoints))


# An empty batch's look at the terminal, in a read transaction: no lock, no write. It
# also asks whether any terminal's held batch has expired: every batch that reaches
# the server sweeps those (``take``), so an empty one that finds some takes the write
# path.
_TERMINAL_SEEN = Prepared(
    select(_T.ledger_key, _T.acked_seq, _T.last_seen_ms, _ANY_EXPIRED).where(
        _T.terminal_id == bindparam("terminal")
    )
)


def answer_empty(
    conn: Connection, limits: Limits, terminal_id: str, doc: Any, now_ms: int
) -> IntakeResult | None:
    """The answer to a batch with no entries, from a read transaction, or None when the
    batch must go through ``take`` (it has entries, or the terminal's last_seen_ms is
    ``SEEN_STEP_MS`` old or more and is written again).

    Nothing in an empty batch can change a terminal's chain, so the answer is the
    acknowledged mark as it stands; a terminal that is not provisioned is refused here
    as in ``take``."""
    wire, _cps, _nonce = parse_batch(doc, limits)
    if wire:
        return None
    row = _TERMINAL_SEEN.run(
        conn, {"terminal": terminal_id, "before": now_ms - limits.held_ttl_ms}
    ).fetchone()
    if row is None or row[0] is None:
        raise StoreError(f"terminal {terminal_id} is not provisioned")
    seen = row[2]
    if row[3] or seen is None or not 0 <= now_ms - int(seen) < SEEN_STEP_MS:
        return None
    return IntakeResult(OK, int(row[1]))


# What is wrong inside a batch, as the arguments of its alarm: kind, seq, theirs, ours, text.
InBatchProblem = tuple[str, int, bytes, bytes | None, str]


@dataclass(frozen=True)
class Checked:
    """A batch document checked on its own, before any database work: its shape and types
    (``parse_batch``), and every hash and link inside it (the first problem found, as the
    arguments of an alarm, or None). On SQLite the server's writers take turns, so what
    needs no database is done before the turn (county/store.py, ``intake``)."""

    wire: list[WireEntry]
    cps: list[tuple[int, bytes, int, bytes]]
    problem: InBatchProblem | None


def check_alone(doc: Any, limits: Limits) -> Checked:
    """``Checked`` for ``doc``; raises ``BatchInvalid`` for a malformed one."""
    wire, cps, _nonce = parse_batch(doc, limits)
    return Checked(wire, cps, _chain_problem(wire))


def _chain_problem(wire: Sequence[WireEntry]) -> InBatchProblem | None:
    """The batch on its own: every hash recomputed, every link inside it."""
    for i, e in enumerate(wire):
        if i and e.prev_hash != wire[i - 1].hash:
            return (
                ALTERED,
                e.seq,
                e.prev_hash,
                wire[i - 1].hash,
                f"entry {e.seq} does not link to entry {e.seq - 1} of the same batch",
            )
        if entry_hash(e.prev_hash, e.fields) != e.hash:
            return (
                ALTERED,
                e.seq,
                e.hash,
                None,
                f"entry {e.seq} was altered: its hash does not match its contents",
            )
    return None


def take(
    conn: Connection,
    limits: Limits,
    lists: evidence.Lists | None,
    terminal_id: str,
    doc: Any,
    now_ms: int,
    checked: Checked | None = None,
) -> IntakeResult:
    """Apply one upload batch inside the caller's write transaction (``checked``: the
    document's ``check_alone``, when the caller did it before the transaction)."""
    if checked is None:
        checked = check_alone(doc, limits)
    wire, cps = checked.wire, checked.cps
    # The terminal's row first, locked: everything below is decided on what it says now.
    before = now_ms - limits.held_ttl_ms
    row = _TERMINAL.run(conn, {"terminal": terminal_id, "before": before}).fetchone()
    if row is None or row[1] is None:
        raise StoreError(f"terminal {terminal_id} is not provisioned")
    canteen, key, acked, last_hash = row[0], bytes(row[1]), int(row[2]), bytes(row[3])
    if row[4]:
        # Held batches whose gap never closed: the terminal resends from the mark anyway.
        conn.execute(_EXPIRE_HELD, {"before": before})
    run = _Batch(conn, limits, lists, terminal_id, canteen, key, now_ms)
    result = run.apply(acked, last_hash, wire, cps, checked.problem)
    if result.status == GAP and wire:
        run.hold(wire, doc)
    elif result.status == OK and result.accepted:
        run.drain_held(result)
    if result.acked_seq > acked:
        # The new entries' clock statements, in this same transaction (one commit a
        # sync): the terminal's row is locked already and its entries end at the mark.
        _note_clock(conn, terminal_id, now_ms, result.acked_seq, acked, run.time_signals)
    if not run.seen:
        # Nothing stored: the terminal's row still says when it was last heard from.
        _SEEN.run(conn, {"terminal": terminal_id, "now": now_ms})
    counts = {
        "entries_accepted": result.accepted,
        "entries_duplicate": result.duplicates,
        "batches_" + result.status: 1,
        **run.counts,
    }
    bump_all(conn, counts)
    return result


class _Batch:
    """The rules applied to one terminal's entries, inside one write transaction."""

    def __init__(
        self,
        conn: Connection,
        limits: Limits,
        lists: evidence.Lists | None,
        terminal_id: str,
        canteen: str,
        key: bytes,
        now_ms: int,
    ) -> None:
        self.conn = conn
        self.limits = limits
        self.lists = lists
        self.terminal_id = terminal_id
        self.canteen = canteen
        self.key = key
        self.now_ms = now_ms
        # Counters this batch adds to, written once at its end (one upsert each).
        self.counts: dict[str, int] = {}
        # Whether the terminal's row already took last_seen_ms (with a new mark).
        self.seen = False
        # Whether any entry stored by this batch is a time_signal (note_clock reads it).
        self.time_signals = False

    def apply(
        self,
        acked: int,
        last_hash: bytes,
        wire: Sequence[WireEntry],
        cps: Sequence[tuple[int, bytes, int, bytes]],
        in_batch: InBatchProblem | None,
    ) -> IntakeResult:
        if not wire:
            return IntakeResult(OK, acked)
        terminal_id = self.terminal_id
        # 1. The batch on its own (``_chain_problem``, found before the transaction).
        if in_batch is not None:
            return self.alarm(acked, *in_batch)
        first = wire[0]
        if first.seq == 1:
            expected = canonical_json({"terminal_id": terminal_id, "public_key": self.key.hex()})
            if first.fields[3] != GENESIS or first.fields[15] != expected:
                return self.alarm(
                    acked,
                    BAD_GENESIS,
                    1,
                    first.hash,
                    None,
                    "entry 1 is not the genesis of this terminal with its pinned ledger key",
                )
            if first.prev_hash != GENESIS_PREV_HASH:
                return self.alarm(
                    acked, BAD_GENESIS, 1, first.hash, None, "entry 1 does not start a chain"
                )
        # 2. Checkpoints: signed by the pinned key over an entry of this batch.
        verifier = Ed25519PublicKey.from_public_bytes(self.key)
        by_seq = {e.seq: e for e in wire}
        for cp_seq, cp_hash, _at, signature in cps:
            entry = by_seq.get(cp_seq)
            problem = None
            if entry is None or entry.hash != cp_hash:
                problem = f"checkpoint {cp_seq} does not sign an entry of this batch"
            else:
                try:
                    verifier.verify(signature, checkpoint_message(terminal_id, cp_seq, cp_hash))
                except InvalidSignature:
                    problem = f"checkpoint {cp_seq}: the signature is not the terminal's"
            if problem is not None:
                return self.alarm(acked, BAD_CHECKPOINT, cp_seq, cp_hash, None, problem)
        # The pinned ledger key must vouch for the whole batch: a checkpoint over its last
        # entry, which covers every entry before it through the chain. The TLS key alone
        # (a copied certificate, a root shell on the device) must not be enough.
        last = wire[-1]
        if not any(cp[0] == last.seq for cp in cps):
            return self.alarm(
                acked,
                UNSIGNED,
                last.seq,
                last.hash,
                None,
                f"no checkpoint signed with the terminal's ledger key covers entry {last.seq}, "
                "the last of the batch: refused (a terminal signs one at the end of each batch)",
            )
        # 3. Against what the server holds.
        if first.seq > acked + 1:
            return IntakeResult(
                GAP,
                acked,
                problem=f"entries {acked + 1}..{first.seq - 1} are missing: resume from "
                f"{acked + 1}",
            )
        old = [e for e in wire if e.seq <= acked]
        duplicates = 0
        if old:
            stored = {
                int(seq): bytes(h)
                for seq, h in self.conn.execute(
                    _STORED_HASHES, {"terminal": terminal_id, "lo": old[0].seq, "hi": old[-1].seq}
                )
            }
            for e in old:
                ours = stored.get(e.seq)
                if ours != e.hash:
                    return self.alarm(
                        acked,
                        FORK,
                        e.seq,
                        e.hash,
                        ours,
                        f"fork: entry {e.seq} differs from the one acknowledged before "
                        "(a restored backup, a cloned terminal or tampering)",
                    )
                duplicates += 1
        new = [e for e in wire if e.seq > acked]
        if new and new[0].prev_hash != last_hash:
            return self.alarm(
                acked,
                FORK,
                new[0].seq,
                new[0].prev_hash,
                last_hash,
                f"fork: entry {new[0].seq} follows a different entry {new[0].seq - 1} than the "
                "one acknowledged before (a restored backup, a cloned terminal or tampering)",
            )
        result = IntakeResult(OK, acked, duplicates=duplicates)
        if new:
            self.store(new, cps)
            result.acked_seq = new[-1].seq
            result.accepted = len(new)
            result.conflicts.extend(self.cross_check(new))
        return result

    def store(self, new: Sequence[WireEntry], cps: Sequence[tuple[int, bytes, int, bytes]]) -> None:
        """Store entries that continue the chain, their checkpoints and the new mark."""
        conn, terminal_id, now_ms, canteen = self.conn, self.terminal_id, self.now_ms, self.canteen
        rows = []
        for e in new:
            row = dict(zip(_ENTRY_COLUMNS, e.fields, strict=True))
            row["terminal"] = terminal_id
            row["canteen"] = canteen
            row["prev_hash"] = e.prev_hash
            row["hash"] = e.hash
            row["received_ms"] = now_ms
            rows.append(row)
        _INSERT_ENTRIES.run(conn, rows)
        rollups.note_entries(conn, rows)
        if not self.time_signals:
            self.time_signals = any(e.fields[3] == TIME_SIGNAL for e in new)
        new_seqs = {e.seq for e in new}
        signed = [
            {"terminal": terminal_id, "seq": s, "hash": h, "at_ms": at, "signature": sig}
            for s, h, at, sig in cps
            if s in new_seqs
        ]
        if signed:
            _insert_checkpoints(conn.dialect.name).run(conn, signed)
        _NEW_MARK.run(
            conn,
            {"terminal": terminal_id, "acked": new[-1].seq, "last": new[-1].hash, "now": now_ms},
        )
        self.seen = True

    def cross_check(self, new: Sequence[WireEntry]) -> list[int]:
        """New accepted sales become evidence and are compared with other terminals';
        reversals withdraw the conflicts of the sales they undo. The keys the checks look
        under are locked first, all at once (county/conflicts.py)."""
        keyring = conflicts.Keyring(self.conn)
        sales: dict[int, conflicts.Sale] = {}
        alarms: list[dict[str, Any]] = []
        for e in new:
            if e.fields[3] == SALE and e.fields[4] == ACCEPT:
                f = dict(zip(_ENTRY_COLUMNS, e.fields, strict=True))
                sale = conflicts.judge(
                    keyring,
                    self.lists,
                    self.terminal_id,
                    self.canteen,
                    e.seq,
                    e.hash,
                    f,
                    self.now_ms,
                    self.counts,
                    alarms,
                )
                if sale is not None:
                    sales[e.seq] = sale
        record_alarms(self.conn, alarms)
        conflicts.lock_keys(self.conn, (k for s in sales.values() for k in conflicts.check_keys(s)))
        conflicts.store_evidence(self.conn, list(sales.values()), self.now_ms)
        # A sale reversed in the same batch is kept as evidence but never a conflict: the
        # cadre was not charged for it.
        undone = {e.fields[14] for e in new if e.fields[3] == REVERSAL and e.fields[14] is not None}
        # The conflicts of every charged sale, looked up together (county/conflicts.py);
        # a reversal in the batch touches only conflicts of sales stored before it.
        found = conflicts.find_conflicts(
            self.conn,
            [sale for seq, sale in sales.items() if seq not in undone],
            self.limits.meal_span_s,
            self.now_ms,
        )
        for e in new:
            if e.fields[3] == REVERSAL and e.fields[14] is not None:
                conflicts.reversed_sale(
                    self.conn, self.terminal_id, int(e.fields[14]), e.seq, self.now_ms
                )
        return found

    def alarm(
        self,
        acked: int,
        kind: str,
        seq: int,
        theirs: bytes | None,
        ours: bytes | None,
        problem: str,
    ) -> IntakeResult:
        if kind in BEFORE_THE_KEY:
            # Reachable with the TLS key alone, with any hash the sender likes: one row per
            # terminal and kind counts them, so a flood cannot grow the table.
            seq, theirs, ours = 0, b"", None
        record_alarms(
            self.conn, [alarm_row(self.terminal_id, kind, seq, theirs, ours, problem, self.now_ms)]
        )
        return IntakeResult(REFUSED, acked, alarm=kind, problem=problem)

    def hold(self, wire: Sequence[WireEntry], doc: Any) -> None:
        """Keep a batch that arrived ahead of a gap, until the gap fills (or it expires)."""
        count = self.conn.execute(_HELD_COUNT, {"terminal": self.terminal_id}).scalar_one()
        if count >= self.limits.max_held_batches:
            return  # the terminal resends from the resume mark anyway
        self.conn.execute(
            insert_or_ignore(self.conn.dialect.name, held_batches),
            {
                "terminal": self.terminal_id,
                "first_seq": wire[0].seq,
                "last_seq": wire[-1].seq,
                "body": json.dumps(doc),
                "received_ms": self.now_ms,
            },
        )

    def drain_held(self, result: IntakeResult) -> None:
        """Apply held batches that now continue the chain; drop those already covered."""
        conn, terminal = self.conn, {"terminal": self.terminal_id}
        # Most batches find nothing held: one look instead of a delete and a select.
        if _ANY_HELD.run(conn, terminal).fetchone() is None:
            return
        while True:
            conn.execute(_DROP_COVERED, {**terminal, "acked": result.acked_seq})
            row = conn.execute(_NEXT_HELD, {**terminal, "next": result.acked_seq + 1}).one_or_none()
            if row is None:
                return
            conn.execute(_DROP_HELD, {**terminal, "first": row[0], "last": row[1]})
            last_hash = conn.execute(_LAST_HASH, terminal).scalar_one()
            held = check_alone(json.loads(row[2]), self.limits)
            more = self.apply(result.acked_seq, bytes(last_hash), held.wire, held.cps, held.problem)
            if more.status != OK:
                return
            result.acked_seq = more.acked_seq
            result.accepted += more.accepted
            result.conflicts.extend(more.conflicts)


# --- terminals' clocks (issue 12, point 5) ---------------------------------------------


# note_clock runs after every sync: its usual statements, built once.
_CLOCK_TERMINAL = (
    select(_T.terminal_id).where(_T.terminal_id == bindparam("terminal")).with_for_update()
)
_SCANNED = select(clock_offsets.c.scanned_seq).where(
    clock_offsets.c.terminal == bindparam("terminal")
)
# The usual sale sync: everything before its entries was read, none is a time_signal.
_MOVE_SCAN_MARK = Prepared(
    update(clock_offsets)
    .where(
        clock_offsets.c.terminal == bindparam("of"),
        clock_offsets.c.scanned_seq >= bindparam("before"),
    )
    .values(scanned_seq=bindparam("top"), noted_ms=bindparam("now"))
)
_TOP_SEQ = select(func.coalesce(func.max(_E.seq), 0)).where(_E.terminal == bindparam("terminal"))
_SIGNALS = (
    select(_E.seq, _E.detail)
    .where(
        _E.terminal == bindparam("terminal"),
        _E.seq > bindparam("after"),
        _E.kind == "time_signal",
    )
    .order_by(_E.seq)
)


@functools.cache
def _scanned_up_to(dialect: str) -> Executable:
    """How far a terminal's entries were read for its clock (a single upsert)."""
    stmt = dialect_insert(dialect, clock_offsets)
    return stmt.on_conflict_do_update(
        index_elements=[clock_offsets.c.terminal],
        set_={"scanned_seq": stmt.excluded.scanned_seq, "noted_ms": stmt.excluded.noted_ms},
    )


def note_clock(conn: Connection, terminal_id: str, now_ms: int) -> None:
    """Read the terminal's time_signal entries held since the last call: keep its newest
    clock offset, and raise a ``clock`` alarm for each one beyond the tolerance.

    Only entries the chain checks accepted are read, so an offset is the terminal's
    own signed-in-chain statement beside the county's signed time. The terminal's row is
    locked first, as at intake: two processes noting one terminal's clock at once read
    each time_signal entry once.

    ``take`` does the same inside the intake transaction for the entries it stores;
    this call is for a terminal whose entries were stored some other way.
    """
    terminal = {"terminal": terminal_id}
    known = conn.execute(_CLOCK_TERMINAL, terminal).one_or_none()
    if known is None:
        return
    top = int(conn.execute(_TOP_SEQ, terminal).scalar_one())
    _note_clock(conn, terminal_id, now_ms, top, None, True)


def _note_clock(
    conn: Connection,
    terminal_id: str,
    now_ms: int,
    top: int,
    before: int | None,
    time_signals: bool,
) -> None:
    """note_clock with the terminal's row locked by the caller, its entries ending at
    ``top``. ``before`` is the mark before the entries just stored and ``time_signals``
    whether any of them is a time_signal: when everything up to ``before`` was read
    already and none is, only the scan mark moves (the usual sale sync)."""
    terminal = {"terminal": terminal_id}
    if before is not None and not time_signals:
        moved = _MOVE_SCAN_MARK.run(
            conn, {"of": terminal_id, "before": before, "top": top, "now": now_ms}
        )
        if moved.rowcount == 1:
            return  # one statement: no new entry to read, the mark moved past them
    row = conn.execute(_SCANNED, terminal).one_or_none()
    after = int(row[0]) if row else 0
    if row is not None and top <= after:
        return
    found = None
    signals = conn.execute(_SIGNALS, {**terminal, "after": after}).all()
    for seq, detail in signals:
        try:
            d = json.loads(detail)
        except (ValueError, RecursionError):
            continue  # a signed entry the county cannot read: no offset from it
        if not isinstance(d, dict):
            continue
        ahead, server = d.get("wall_ahead_ms"), d.get("server_ms")
        if type(ahead) is not int and type(d.get("offset_ms")) is int:
            ahead = -d["offset_ms"]  # entries written before wall_ahead_ms existed
        if type(ahead) is not int or type(server) is not int:
            continue
        found = (seq, ahead, server)
        if abs(ahead) > CLOCK_TOLERANCE_MS:
            way = "ahead of" if ahead > 0 else "behind"
            conn.execute(
                insert(alarms).values(
                    terminal=terminal_id,
                    kind=CLOCK,
                    seq=seq,
                    problem=f"the terminal's clock was {abs(ahead) / 1000:.0f} s {way} the "
                    f"county's time (tolerance {CLOCK_TOLERANCE_MS // 1000} s): "
                    "its sales ran on the county's time; have its clock set (NTP)",
                    first_ms=now_ms,
                    last_ms=now_ms,
                )
            )
    conn.execute(
        _scanned_up_to(conn.dialect.name),
        {"terminal": terminal_id, "scanned_seq": top, "noted_ms": now_ms},
    )
    if found is not None:
        conn.execute(
            update(clock_offsets)
            .where(clock_offsets.c.terminal == terminal_id)
            .values(seq=found[0], ahead_ms=found[1], server_ms=found[2])
        )
