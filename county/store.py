"""The county server's database: terminals, acknowledged ledger entries, alarms, conflicts.

This module owns the county's SQLite file and every rule of ledger intake: a
batch's entries are re-hashed with the terminal's own ``entry_hash``, linked to
the entry before them, checked for contiguity and for the terminal's signed
checkpoints (with the checkpoint key pinned at provisioning), and committed in
one transaction before anything is acknowledged. Duplicates are acknowledged
again, a gap is held and answered with where to resume, a different entry
under an acknowledged sequence number is a fork alarm. It also makes the
cross-terminal checks no single terminal can make offline and turns what they
find into conflicts and credential revocations. It never speaks HTTP, never
reads certificates off a socket and never signs anything: the app does those.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from county import evidence
from protocol.chain import (
    ACCEPT,
    GENESIS,
    GENESIS_PREV_HASH,
    HASHED_COLUMNS,
    REVERSAL,
    SALE,
    canonical_json,
    checkpoint_message,
    entry_hash,
)
from protocol.lists import parse_issuer_keys
from protocol.tokens import IssuerKey

# Conflict kinds.
PRESENTATION_TWICE = "presentation_twice"  # one (iss, cti, ctr) accepted at two terminals
SERVED_TWICE = "served_twice"  # one cadre served in one meal window at two canteens

# Alarm kinds.
FORK = "fork"
ALTERED = "altered"
BAD_CHECKPOINT = "bad_checkpoint"
BAD_GENESIS = "bad_genesis"
UNSIGNED = "unsigned"  # the batch's last entry is not covered by a checkpoint: refused
# Refusals found before the ledger key vouched for the batch (anyone with the TLS key).
_BEFORE_THE_KEY = frozenset((ALTERED, BAD_GENESIS, BAD_CHECKPOINT, UNSIGNED))
BAD_EVIDENCE = "bad_evidence"  # an accepted sale that proves nothing: stored, never a conflict

# Batch outcomes.
OK = "ok"
GAP = "gap"
REFUSED = "refused"


@dataclass(frozen=True)
class Limits:
    """Bounds on what one terminal may make the server hold or do."""

    # Entries in one upload batch; the terminal's batch size must stay below it.
    max_batch_entries: int = 2000
    # Bytes of one request body; a batch of max_batch_entries QR sales fits well below.
    max_body_bytes: int = 8 * 1024 * 1024
    # Batches held for one terminal while an earlier gap is open.
    max_held_batches: int = 8
    # Two sales of one cadre are "served twice" only when they happened this close: as
    # long as the longest default meal window, shorter than the shortest default gap
    # between two meals (09:00 to 11:30), so without published meal windows a terminal
    # that labels a breakfast code "lunch" still cannot clash it with the real lunch.
    # Where county IT published the windows, the meal itself is checked (published.py).
    meal_span_s: int = 2 * 3600
    # How long a batch held behind a gap waits for the entries before it.
    held_ttl_ms: int = 24 * 3_600_000
    # How long a provisioning code stays valid.
    code_ttl_ms: int = 7 * 86_400_000
    # SQLite busy timeout: how long a write waits for another writer before a 503.
    busy_timeout_ms: int = 10_000


class StoreError(Exception):
    """The county database cannot do what was asked; the message says what to do."""


class ProvisionRefused(StoreError):
    """A provisioning request is refused (unknown, used or expired code, another key)."""


class BatchInvalid(StoreError):
    """The batch is malformed: not the protocol's shape or types (HTTP 400)."""


@dataclass(frozen=True)
class Terminal:
    terminal_id: str
    canteen: str
    ledger_key: bytes | None
    acked_seq: int


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


# --- schema ------------------------------------------------------------------------

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


def _int64(value: object) -> bool:
    return type(value) is int and _INT64_MIN <= value <= _INT64_MAX


_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS terminals (
        terminal_id TEXT PRIMARY KEY,
        canteen TEXT NOT NULL,
        code_hash BLOB UNIQUE,
        code_expires_ms INTEGER,
        cert_sha256 TEXT UNIQUE,
        ledger_key BLOB,
        registered_ms INTEGER NOT NULL,
        provisioned_ms INTEGER,
        last_seen_ms INTEGER,
        acked_seq INTEGER NOT NULL DEFAULT 0,
        last_hash BLOB NOT NULL
    ) STRICT""",
    """CREATE TABLE IF NOT EXISTS entries (
        terminal TEXT NOT NULL,
        canteen TEXT NOT NULL,
        seq INTEGER NOT NULL,
        entry_id TEXT NOT NULL,
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
        prev_hash BLOB NOT NULL,
        hash BLOB NOT NULL,
        received_ms INTEGER NOT NULL,
        PRIMARY KEY (terminal, seq)
    ) STRICT, WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS entries_presentation ON entries (credential, ctr)"
    " WHERE kind = 'sale' AND verdict = 'accept'",
    "CREATE INDEX IF NOT EXISTS entries_served ON entries (cadre, day, meal)"
    " WHERE kind = 'sale' AND verdict = 'accept'",
    "CREATE INDEX IF NOT EXISTS entries_reversals ON entries (terminal, ref_seq)"
    " WHERE kind = 'reversal'",
    """CREATE TABLE IF NOT EXISTS checkpoints (
        terminal TEXT NOT NULL,
        seq INTEGER NOT NULL,
        hash BLOB NOT NULL,
        at_ms INTEGER NOT NULL,
        signature BLOB NOT NULL,
        PRIMARY KEY (terminal, seq)
    ) STRICT, WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS held_batches (
        terminal TEXT NOT NULL,
        first_seq INTEGER NOT NULL,
        last_seq INTEGER NOT NULL,
        body TEXT NOT NULL,
        received_ms INTEGER NOT NULL,
        PRIMARY KEY (terminal, first_seq, last_seq)
    ) STRICT""",
    """CREATE TABLE IF NOT EXISTS alarms (
        id INTEGER PRIMARY KEY,
        terminal TEXT NOT NULL,
        kind TEXT NOT NULL,
        seq INTEGER NOT NULL,
        theirs BLOB,
        ours BLOB,
        problem TEXT NOT NULL,
        first_ms INTEGER NOT NULL,
        last_ms INTEGER NOT NULL,
        times INTEGER NOT NULL DEFAULT 1,
        UNIQUE (terminal, kind, seq, theirs)
    ) STRICT""",
    """CREATE TABLE IF NOT EXISTS conflicts (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        credential TEXT,
        cadre TEXT,
        unit TEXT,
        day TEXT,
        meal TEXT,
        first_terminal TEXT NOT NULL,
        first_seq INTEGER NOT NULL,
        second_terminal TEXT NOT NULL,
        second_seq INTEGER NOT NULL,
        found_ms INTEGER NOT NULL,
        UNIQUE (kind, second_terminal, second_seq)
    ) STRICT""",
    # Issuer keys the county verifies phone codes with: every key it ever published
    # or imported, with its own window, so a key retired since still proves older sales.
    """CREATE TABLE IF NOT EXISTS issuer_keys (
        public_key BLOB NOT NULL,
        iss TEXT NOT NULL,
        kid BLOB NOT NULL,
        not_before INTEGER,
        not_after INTEGER,
        added_ms INTEGER NOT NULL,
        PRIMARY KEY (public_key, iss, kid)
    ) STRICT""",
    "CREATE INDEX IF NOT EXISTS issuer_keys_kid ON issuer_keys (kid)",
    # The accepted sales the county verified itself (county/evidence.py): the only rows
    # the cross-terminal checks read. A sale that proves nothing is stored but never here.
    """CREATE TABLE IF NOT EXISTS evidence (
        terminal TEXT NOT NULL,
        seq INTEGER NOT NULL,
        canteen TEXT NOT NULL,
        method TEXT NOT NULL,
        cadre TEXT NOT NULL,
        name TEXT,
        credential TEXT NOT NULL,
        ctr INTEGER,
        day TEXT,
        meal TEXT,
        t INTEGER NOT NULL,
        at_ms INTEGER NOT NULL,
        hash BLOB NOT NULL,
        received_ms INTEGER NOT NULL,
        PRIMARY KEY (terminal, seq)
    ) STRICT, WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS evidence_presentation ON evidence (credential, ctr)"
    " WHERE ctr IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS evidence_served ON evidence (cadre, day, meal)",
    # What each conflict revokes. A credential stays revoked while one conflict that
    # names it stands; withdrawing the last one lifts it.
    """CREATE TABLE IF NOT EXISTS conflict_revocations (
        conflict_id INTEGER NOT NULL,
        credential TEXT NOT NULL,
        entry TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        PRIMARY KEY (conflict_id, credential)
    ) STRICT""",
    """CREATE TABLE IF NOT EXISTS counters (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) STRICT""",
    # Each terminal's newest clock offset, read from its time_signal entries at intake
    # (note_clock). scanned_seq: how far its entries were read; ahead_ms: its wall clock
    # minus the county's time, from the entry at seq (NULL until one arrives).
    """CREATE TABLE IF NOT EXISTS clock_offsets (
        terminal TEXT PRIMARY KEY,
        scanned_seq INTEGER NOT NULL,
        seq INTEGER,
        ahead_ms INTEGER,
        server_ms INTEGER,
        noted_ms INTEGER NOT NULL
    ) STRICT""",
)

# Columns added to tables of earlier versions (ALTER TABLE ADD COLUMN when missing).
_ADDED_COLUMNS = {
    "conflicts": (
        ("first_canteen", "TEXT"),
        ("second_canteen", "TEXT"),
        ("first_method", "TEXT"),
        ("second_method", "TEXT"),
        ("first_hash", "BLOB"),
        ("second_hash", "BLOB"),
        ("first_at_ms", "INTEGER"),
        ("second_at_ms", "INTEGER"),
        ("name", "TEXT"),
        ("reason", "TEXT"),
        ("withdrawn_ms", "INTEGER"),
        ("withdrawn_reason", "TEXT"),
    ),
}


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a county database of an earlier version up to this schema."""
    for table, columns in _ADDED_COLUMNS.items():
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        for name, decl in columns:
            if name not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
    # Revocations of the first version: one row per credential, in their own table.
    old = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'revocations'"
    ).fetchone()
    if old is not None:
        conn.execute(
            "INSERT OR IGNORE INTO conflict_revocations (conflict_id, credential, entry,"
            " created_ms) SELECT conflict_id, credential, entry, created_ms FROM revocations"
        )
        conn.execute("DROP TABLE revocations")


def database_path(url: str) -> Path:
    """The file of a ``sqlite:///PATH`` database URL (the only kind this server speaks)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise StoreError(
            f"database URL {url!r}: only sqlite:///PATH is supported by the reference server"
        )
    return Path(url[len(prefix) :])


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


class CountyStore:
    """The open county database. Thread-safe: one lock serialises every write."""

    def __init__(
        self, path: str | Path, limits: Limits | None = None, lists: evidence.Lists | None = None
    ) -> None:
        self.path = Path(path)
        self.limits = limits or Limits()
        # What county IT published (meal windows, roster), for judging evidence at intake.
        self.lists = lists
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path,
                isolation_level=None,
                check_same_thread=False,
                timeout=self.limits.busy_timeout_ms / 1000,
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                conn.execute(statement)
            _migrate(conn)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the county database {self.path}: {exc}") from exc
        self._conn = conn

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise

    def _bump(self, conn: sqlite3.Connection, name: str, by: int) -> None:
        if by:
            conn.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                (name, by),
            )

    def counter(self, name: str) -> int:
        with self._lock:
            row = self._conn.execute(
                "SELECT value FROM counters WHERE name = ?", (name,)
            ).fetchone()
        return 0 if row is None else int(row[0])

    # -- terminals and provisioning -------------------------------------------------

    def add_terminal(self, terminal_id: str, canteen: str, now_ms: int) -> str:
        """Register ``terminal_id`` at ``canteen`` (or renew its code); return the secret."""
        if not terminal_id or not canteen:
            raise StoreError("a terminal needs a non-empty id and canteen")
        secret = secrets.token_bytes(10)
        code_hash = hashlib.sha256(secret).digest()
        with self._write() as conn:
            row = conn.execute(
                "SELECT canteen FROM terminals WHERE terminal_id = ?", (terminal_id,)
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO terminals (terminal_id, canteen, code_hash, code_expires_ms,"
                    " registered_ms, last_hash) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        terminal_id,
                        canteen,
                        code_hash,
                        now_ms + self.limits.code_ttl_ms,
                        now_ms,
                        GENESIS_PREV_HASH,
                    ),
                )
            elif row[0] != canteen:
                raise StoreError(
                    f"terminal {terminal_id} is registered at canteen {row[0]}, not {canteen}; "
                    "a terminal keeps its canteen: register a new terminal id instead"
                )
            else:
                # Re-provisioning (a new TLS key): the pinned ledger key stays, and the old
                # certificate stops working now, so a stolen terminal is cut off at once.
                conn.execute(
                    "UPDATE terminals SET code_hash = ?, code_expires_ms = ?, cert_sha256 = NULL"
                    " WHERE terminal_id = ?",
                    (code_hash, now_ms + self.limits.code_ttl_ms, terminal_id),
                )
        return secret.hex()

    def redeem_code(self, secret_hex: str, ledger_key: bytes, now_ms: int) -> Terminal:
        """Check a one-time code and the checkpoint key; ``bind_certificate`` spends the code."""
        try:
            secret = bytes.fromhex(secret_hex)
        except ValueError:
            raise ProvisionRefused("the provisioning code is malformed") from None
        with self._lock:
            row = self._conn.execute(
                "SELECT terminal_id, canteen, code_expires_ms, ledger_key, acked_seq FROM terminals"
                " WHERE code_hash = ?",
                (hashlib.sha256(secret).digest(),),
            ).fetchone()
        if row is None:
            raise ProvisionRefused(
                "unknown or already used provisioning code: ask county IT for a new one "
                "('canteen-county terminal add')"
            )
        if row[2] is not None and now_ms > row[2]:
            raise ProvisionRefused("the provisioning code has expired: ask county IT for a new one")
        if row[3] is not None and row[3] != ledger_key:
            raise ProvisionRefused(
                f"terminal {row[0]} already has a different ledger key pinned: a terminal's "
                "ledger key never changes; restore the terminal's key or register a new terminal"
            )
        return Terminal(row[0], row[1], row[3], row[4])

    def bind_certificate(
        self, secret_hex: str, terminal_id: str, cert_sha256: str, ledger_key: bytes, now_ms: int
    ) -> None:
        """Spend the code: pin the certificate and ledger key, atomically with the code check."""
        code_hash = hashlib.sha256(bytes.fromhex(secret_hex)).digest()
        with self._write() as conn:
            old = conn.execute(
                "SELECT cert_sha256 FROM terminals WHERE terminal_id = ? AND code_hash = ?",
                (terminal_id, code_hash),
            ).fetchone()
            if old is None:
                raise ProvisionRefused("the provisioning code was used meanwhile")
            conn.execute(
                "UPDATE terminals SET code_hash = NULL, code_expires_ms = NULL, cert_sha256 = ?,"
                " ledger_key = coalesce(ledger_key, ?), provisioned_ms = ? WHERE terminal_id = ?",
                (cert_sha256, ledger_key, now_ms, terminal_id),
            )

    def terminal_for_cert(self, cert_sha256: str) -> tuple[str, str] | None:
        """(terminal id, canteen) of a provisioned certificate, or None.

        Asked of the database each time (one indexed read): county IT re-registering a
        terminal in another process must cut its old certificate off at once.
        """
        with self._lock:
            row = self._conn.execute(
                "SELECT terminal_id, canteen FROM terminals WHERE cert_sha256 = ?", (cert_sha256,)
            ).fetchone()
        if row is None:
            return None
        return row[0], row[1]

    def terminal(self, terminal_id: str) -> Terminal | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT terminal_id, canteen, ledger_key, acked_seq FROM terminals"
                " WHERE terminal_id = ?",
                (terminal_id,),
            ).fetchone()
        return None if row is None else Terminal(row[0], row[1], row[2], row[3])

    # -- ledger intake ---------------------------------------------------------------

    def intake(self, terminal_id: str, doc: Any, now_ms: int) -> IntakeResult:
        """Apply one upload batch; everything it stores is committed before this returns."""
        entries, checkpoints, _nonce = parse_batch(doc, self.limits)
        with self._write() as conn:
            row = conn.execute(
                "SELECT canteen, ledger_key, acked_seq, last_hash FROM terminals"
                " WHERE terminal_id = ?",
                (terminal_id,),
            ).fetchone()
            if row is None or row[1] is None:
                raise StoreError(f"terminal {terminal_id} is not provisioned")
            canteen, key, acked, last_hash = row
            conn.execute(
                "UPDATE terminals SET last_seen_ms = ? WHERE terminal_id = ?",
                (now_ms, terminal_id),
            )
            # Held batches whose gap never closed: the terminal resends from the mark anyway.
            conn.execute(
                "DELETE FROM held_batches WHERE received_ms < ?",
                (now_ms - self.limits.held_ttl_ms,),
            )
            result = self._apply(
                conn, terminal_id, canteen, key, acked, last_hash, entries, checkpoints, now_ms
            )
            if result.status == GAP and entries:
                self._hold(conn, terminal_id, entries, doc, now_ms)
            elif result.status == OK and result.accepted:
                self._drain_held(conn, terminal_id, canteen, key, result, now_ms)
            self._bump(conn, "entries_accepted", result.accepted)
            self._bump(conn, "entries_duplicate", result.duplicates)
            self._bump(conn, "batches_" + result.status, 1)
            return result

    def _apply(
        self,
        conn: sqlite3.Connection,
        terminal_id: str,
        canteen: str,
        key: bytes,
        acked: int,
        last_hash: bytes,
        entries: Sequence[WireEntry],
        checkpoints: Sequence[tuple[int, bytes, int, bytes]],
        now_ms: int,
    ) -> IntakeResult:
        if not entries:
            return IntakeResult(OK, acked)
        # 1. The batch on its own: every hash recomputed, every link inside it.
        for i, e in enumerate(entries):
            if i and e.prev_hash != entries[i - 1].hash:
                return self._alarm(
                    conn,
                    terminal_id,
                    acked,
                    ALTERED,
                    e.seq,
                    e.prev_hash,
                    entries[i - 1].hash,
                    f"entry {e.seq} does not link to entry {e.seq - 1} of the same batch",
                    now_ms,
                )
            if entry_hash(e.prev_hash, e.fields) != e.hash:
                return self._alarm(
                    conn,
                    terminal_id,
                    acked,
                    ALTERED,
                    e.seq,
                    e.hash,
                    None,
                    f"entry {e.seq} was altered: its hash does not match its contents",
                    now_ms,
                )
        first = entries[0]
        if first.seq == 1:
            expected = canonical_json({"terminal_id": terminal_id, "public_key": key.hex()})
            if first.fields[3] != GENESIS or first.fields[15] != expected:
                return self._alarm(
                    conn,
                    terminal_id,
                    acked,
                    BAD_GENESIS,
                    1,
                    first.hash,
                    None,
                    "entry 1 is not the genesis of this terminal with its pinned ledger key",
                    now_ms,
                )
            if first.prev_hash != GENESIS_PREV_HASH:
                return self._alarm(
                    conn,
                    terminal_id,
                    acked,
                    BAD_GENESIS,
                    1,
                    first.hash,
                    None,
                    "entry 1 does not start a chain",
                    now_ms,
                )
        # 2. Checkpoints: signed by the pinned key over an entry of this batch.
        verifier = Ed25519PublicKey.from_public_bytes(key)
        by_seq = {e.seq: e for e in entries}
        for cp_seq, cp_hash, _at, signature in checkpoints:
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
                return self._alarm(
                    conn,
                    terminal_id,
                    acked,
                    BAD_CHECKPOINT,
                    cp_seq,
                    cp_hash,
                    None,
                    problem,
                    now_ms,
                )
        # The pinned ledger key must vouch for the whole batch: a checkpoint over its last
        # entry, which covers every entry before it through the chain. The TLS key alone
        # (a copied certificate, a root shell on the device) must not be enough.
        last = entries[-1]
        if not any(cp[0] == last.seq for cp in checkpoints):
            return self._alarm(
                conn,
                terminal_id,
                acked,
                UNSIGNED,
                last.seq,
                last.hash,
                None,
                f"no checkpoint signed with the terminal's ledger key covers entry {last.seq}, "
                "the last of the batch: refused (a terminal signs one at the end of each batch)",
                now_ms,
            )
        # 3. Against what the server holds.
        if first.seq > acked + 1:
            return IntakeResult(
                GAP,
                acked,
                problem=f"entries {acked + 1}..{first.seq - 1} are missing: resume from "
                f"{acked + 1}",
            )
        old = [e for e in entries if e.seq <= acked]
        duplicates = 0
        if old:
            stored = dict(
                conn.execute(
                    "SELECT seq, hash FROM entries WHERE terminal = ? AND seq BETWEEN ? AND ?",
                    (terminal_id, old[0].seq, old[-1].seq),
                ).fetchall()
            )
            for e in old:
                ours = stored.get(e.seq)
                if ours != e.hash:
                    return self._alarm(
                        conn,
                        terminal_id,
                        acked,
                        FORK,
                        e.seq,
                        e.hash,
                        ours,
                        f"fork: entry {e.seq} differs from the one acknowledged before "
                        "(a restored backup, a cloned terminal or tampering)",
                        now_ms,
                    )
                duplicates += 1
        new = [e for e in entries if e.seq > acked]
        if new and new[0].prev_hash != last_hash:
            return self._alarm(
                conn,
                terminal_id,
                acked,
                FORK,
                new[0].seq,
                new[0].prev_hash,
                last_hash,
                f"fork: entry {new[0].seq} follows a different entry {new[0].seq - 1} than the "
                "one acknowledged before (a restored backup, a cloned terminal or tampering)",
                now_ms,
            )
        result = IntakeResult(OK, acked, duplicates=duplicates)
        if new:
            conn.executemany(
                "INSERT INTO entries (terminal, canteen, seq, entry_id, at_ms, kind, verdict,"
                " reason, method, cadre, credential, ctr, unit, day, meal, amount_fen, ref_seq,"
                " detail, prev_hash, hash, received_ms) VALUES"
                " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(terminal_id, canteen, *e.fields, e.prev_hash, e.hash, now_ms) for e in new],
            )
            new_seqs = {e.seq for e in new}
            conn.executemany(
                "INSERT OR IGNORE INTO checkpoints (terminal, seq, hash, at_ms, signature)"
                " VALUES (?, ?, ?, ?, ?)",
                [(terminal_id, *cp) for cp in checkpoints if cp[0] in new_seqs],
            )
            result.acked_seq = new[-1].seq
            result.accepted = len(new)
            conn.execute(
                "UPDATE terminals SET acked_seq = ?, last_hash = ? WHERE terminal_id = ?",
                (new[-1].seq, new[-1].hash, terminal_id),
            )
            keyring = _StoreKeyring(conn)
            for e in new:
                if e.fields[3] == SALE and e.fields[4] == ACCEPT:
                    result.conflicts.extend(
                        self._take_evidence(conn, keyring, terminal_id, canteen, e, now_ms)
                    )
                elif e.fields[3] == REVERSAL and e.fields[14] is not None:
                    self._reversed(conn, terminal_id, e, now_ms)
        return result

    def _reversed(
        self, conn: sqlite3.Connection, terminal_id: str, e: WireEntry, now_ms: int
    ) -> None:
        """Staff undid a sale: a standing conflict it was part of no longer stands. The
        refresher lifts what only that conflict revoked (county/updates.py)."""
        ref = e.fields[14]
        conn.execute(
            "UPDATE conflicts SET withdrawn_ms = ?, withdrawn_reason = ? WHERE withdrawn_ms IS NULL"
            " AND ((first_terminal = ? AND first_seq = ?) OR (second_terminal = ? AND"
            " second_seq = ?))",
            (
                now_ms,
                f"staff at {terminal_id} reversed entry {ref} (reversal entry {e.seq})",
                terminal_id,
                ref,
                terminal_id,
                ref,
            ),
        )

    def _alarm(
        self,
        conn: sqlite3.Connection,
        terminal_id: str,
        acked: int,
        kind: str,
        seq: int,
        theirs: bytes | None,
        ours: bytes | None,
        problem: str,
        now_ms: int,
    ) -> IntakeResult:
        if kind in _BEFORE_THE_KEY:
            # Reachable with the TLS key alone, with any hash the sender likes: one row per
            # terminal and kind counts them, so a flood cannot grow the table.
            seq, theirs, ours = 0, b"", None
        _record_alarm(conn, terminal_id, kind, seq, theirs, ours, problem, now_ms)
        return IntakeResult(REFUSED, acked, alarm=kind, problem=problem)

    def _hold(
        self,
        conn: sqlite3.Connection,
        terminal_id: str,
        entries: Sequence[WireEntry],
        doc: Any,
        now_ms: int,
    ) -> None:
        count = conn.execute(
            "SELECT count(*) FROM held_batches WHERE terminal = ?", (terminal_id,)
        ).fetchone()[0]
        if count >= self.limits.max_held_batches:
            return  # the terminal resends from the resume mark anyway
        conn.execute(
            "INSERT OR IGNORE INTO held_batches (terminal, first_seq, last_seq, body, received_ms)"
            " VALUES (?, ?, ?, ?, ?)",
            (terminal_id, entries[0].seq, entries[-1].seq, json.dumps(doc), now_ms),
        )

    def _drain_held(
        self,
        conn: sqlite3.Connection,
        terminal_id: str,
        canteen: str,
        key: bytes,
        result: IntakeResult,
        now_ms: int,
    ) -> None:
        """Apply held batches that now continue the chain; drop those already covered."""
        while True:
            conn.execute(
                "DELETE FROM held_batches WHERE terminal = ? AND last_seq <= ?",
                (terminal_id, result.acked_seq),
            )
            row = conn.execute(
                "SELECT first_seq, last_seq, body FROM held_batches WHERE terminal = ?"
                " AND first_seq <= ? ORDER BY last_seq DESC LIMIT 1",
                (terminal_id, result.acked_seq + 1),
            ).fetchone()
            if row is None:
                return
            conn.execute(
                "DELETE FROM held_batches WHERE terminal = ? AND first_seq = ? AND last_seq = ?",
                (terminal_id, row[0], row[1]),
            )
            last_hash = conn.execute(
                "SELECT last_hash FROM terminals WHERE terminal_id = ?", (terminal_id,)
            ).fetchone()[0]
            entries, checkpoints, _ = parse_batch(json.loads(row[2]), self.limits)
            more = self._apply(
                conn,
                terminal_id,
                canteen,
                key,
                result.acked_seq,
                last_hash,
                entries,
                checkpoints,
                now_ms,
            )
            if more.status != OK:
                return
            result.acked_seq = more.acked_seq
            result.accepted += more.accepted
            result.conflicts.extend(more.conflicts)

    # -- evidence and cross-terminal checks ------------------------------------------

    def _take_evidence(
        self,
        conn: sqlite3.Connection,
        keyring: _StoreKeyring,
        terminal_id: str,
        canteen: str,
        e: WireEntry,
        now_ms: int,
    ) -> list[int]:
        """Verify one new accepted sale; only what verified is compared with other terminals."""
        f = dict(zip(_ENTRY_COLUMNS, e.fields, strict=True))
        proof = evidence.check_sale(f, keyring, canteen, self.lists)
        if isinstance(proof, evidence.Unjudged):
            self._bump(conn, "sales_unjudged", 1)
            return []
        if isinstance(proof, str):
            # The terminal vouched for a sale it cannot prove: an alarm against the terminal,
            # never a conflict against the cadre it names.
            _record_alarm(
                conn,
                terminal_id,
                BAD_EVIDENCE,
                e.seq,
                e.hash,
                None,
                f"accepted sale {e.seq} is no evidence: {proof}",
                now_ms,
            )
            self._bump(conn, "sales_without_evidence", 1)
            return []
        conn.execute(
            "INSERT OR IGNORE INTO evidence (terminal, seq, canteen, method, cadre, name,"
            " credential, ctr, day, meal, t, at_ms, hash, received_ms)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                terminal_id,
                e.seq,
                canteen,
                proof.method,
                proof.cadre,
                proof.name,
                proof.credential,
                f["ctr"] if proof.method == evidence.QR else None,
                f["day"],
                f["meal"],
                proof.t,
                f["at_ms"],
                e.hash,
                now_ms,
            ),
        )
        second = _Side(terminal_id, e.seq, canteen, proof.method, proof.credential, e.hash)
        second_at = int(f["at_ms"])
        undone = conn.execute(
            "SELECT 1 FROM entries WHERE terminal = ? AND ref_seq = ? AND kind = ?",
            (terminal_id, e.seq, REVERSAL),
        ).fetchone()
        if undone is not None:
            return []  # reversed in the same batch: the cadre was not charged for it
        if proof.method == evidence.QR:
            # One code accepted at two terminals: a copied code (a screenshot). It is one
            # conflict, not also "served twice", though both are true.
            row = conn.execute(
                "SELECT terminal, seq, canteen, method, credential, hash, at_ms FROM evidence"
                " WHERE credential = ? AND ctr = ? AND terminal != ?"
                " ORDER BY received_ms, terminal, seq LIMIT 1",
                (proof.credential, f["ctr"], terminal_id),
            ).fetchone()
            if row is not None:
                first = _Side(*row[:6])
                reason = (
                    f"one phone code (counter {f['ctr']}) was accepted at {first.terminal} and "
                    f"{terminal_id}: the code was copied (a screenshot); its credential is revoked"
                )
                return [
                    self._conflict(
                        conn,
                        PRESENTATION_TWICE,
                        f,
                        proof,
                        first,
                        int(row[6]),
                        second,
                        second_at,
                        [proof.credential],
                        reason,
                        now_ms,
                    )
                ]
        if f["day"] is None or f["meal"] is None:
            return []
        row = conn.execute(
            "SELECT v.terminal, v.seq, v.canteen, v.method, v.credential, v.hash, v.at_ms"
            " FROM evidence AS v WHERE v.cadre = ? AND v.day = ? AND v.meal = ?"
            " AND v.terminal != ? AND abs(v.t - ?) <= ?"
            " AND NOT EXISTS (SELECT 1 FROM entries AS r WHERE r.terminal = v.terminal"
            "   AND r.ref_seq = v.seq AND r.kind = ?)"
            " ORDER BY v.received_ms, v.terminal, v.seq LIMIT 1",
            (
                proof.cadre,
                f["day"],
                f["meal"],
                terminal_id,
                proof.t,
                self.limits.meal_span_s,
                REVERSAL,
            ),
        ).fetchone()
        if row is None:
            return []
        first = _Side(*row[:6])
        cards = sorted({s.credential for s in (first, second) if s.method == evidence.CARD})
        where = f"{first.terminal} ({first.canteen}) and {terminal_id} ({canteen})"
        if cards:
            # A card proves nothing about its holder: revoke the card, never the phone.
            revoke = cards
            reason = (
                f"{proof.cadre} was served {f['meal']} on {f['day']} at {where}, by card: a "
                "cloned or lent card, or a faulty terminal; the card is revoked"
            )
        else:
            revoke = [proof.credential]
            reason = (
                f"{proof.cadre} was served {f['meal']} on {f['day']} at {where}, both times "
                "with the phone's signed code; the later credential is revoked"
            )
        return [
            self._conflict(
                conn,
                SERVED_TWICE,
                f,
                proof,
                first,
                int(row[6]),
                second,
                second_at,
                revoke,
                reason,
                now_ms,
            )
        ]

    def _conflict(
        self,
        conn: sqlite3.Connection,
        kind: str,
        f: dict[str, Any],
        proof: evidence.Proof,
        first: _Side,
        first_at_ms: int,
        second: _Side,
        second_at_ms: int,
        revoke: Sequence[str],
        reason: str,
        now_ms: int,
    ) -> int:
        cur = conn.execute(
            "INSERT OR IGNORE INTO conflicts (kind, credential, cadre, unit, day, meal,"
            " first_terminal, first_seq, second_terminal, second_seq, found_ms, first_canteen,"
            " second_canteen, first_method, second_method, first_hash, second_hash,"
            " first_at_ms, second_at_ms, name, reason)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                kind,
                proof.credential,
                proof.cadre,
                f["unit"],
                f["day"],
                f["meal"],
                first.terminal,
                first.seq,
                second.terminal,
                second.seq,
                now_ms,
                first.canteen,
                second.canteen,
                first.method,
                second.method,
                first.hash,
                second.hash,
                first_at_ms,
                second_at_ms,
                proof.name,
                reason,
            ),
        )
        conflict_id = int(cur.lastrowid or 0)
        for credential in revoke:
            entry = revocation_entry(credential)
            if entry is not None and conflict_id:
                conn.execute(
                    "INSERT OR IGNORE INTO conflict_revocations (conflict_id, credential, entry,"
                    " created_ms) VALUES (?, ?, ?, ?)",
                    (conflict_id, credential, canonical_json(entry), now_ms),
                )
        return conflict_id

    # -- issuer keys and review ---------------------------------------------------------

    def add_issuer_keys(self, entries: Sequence[Any], now_ms: int) -> int:
        """Remember trust-list entries (token.md §5) as keys that prove phone codes."""
        keys = parse_issuer_keys(entries)
        with self._write() as conn:
            before = conn.total_changes
            conn.executemany(
                "INSERT INTO issuer_keys (public_key, iss, kid, not_before, not_after, added_ms)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (public_key, iss, kid) DO UPDATE SET"
                " not_before = excluded.not_before, not_after = excluded.not_after"
                " WHERE not_before IS NOT excluded.not_before"
                " OR not_after IS NOT excluded.not_after",
                [(k.public_key, k.iss, k.kid, k.not_before, k.not_after, now_ms) for k in keys],
            )
            return conn.total_changes - before

    def issuer_key_count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM issuer_keys").fetchone()[0])

    def withdraw_conflict(self, conflict_id: int, reason: str, now_ms: int) -> list[dict[str, Any]]:
        """Withdraw a conflict after review; the revocation entries it alone held are lifted."""
        if not reason.strip():
            raise StoreError("say why the conflict is withdrawn (--reason TEXT): it is kept")
        with self._write() as conn:
            row = conn.execute(
                "SELECT withdrawn_ms FROM conflicts WHERE id = ?", (conflict_id,)
            ).fetchone()
            if row is None:
                raise StoreError(
                    f"no conflict {conflict_id}: 'canteen-county conflicts' lists them"
                )
            if row[0] is not None:
                raise StoreError(f"conflict {conflict_id} was withdrawn already")
            conn.execute(
                "UPDATE conflicts SET withdrawn_ms = ?, withdrawn_reason = ? WHERE id = ?",
                (now_ms, reason.strip(), conflict_id),
            )
            lifted = conn.execute(
                "SELECT r.entry FROM conflict_revocations AS r WHERE r.conflict_id = ?"
                " AND NOT EXISTS (SELECT 1 FROM conflict_revocations AS o JOIN conflicts AS c"
                "   ON c.id = o.conflict_id WHERE o.credential = r.credential"
                "   AND c.withdrawn_ms IS NULL)"
                " ORDER BY r.credential",
                (conflict_id,),
            ).fetchall()
        return [json.loads(r[0]) for r in lifted]

    # -- reads for the commands --------------------------------------------------------

    def iter_entries(self, terminal_id: str | None = None) -> Iterator[dict[str, Any]]:
        """Every acknowledged entry, by terminal and sequence number."""
        sql = (
            "SELECT terminal, canteen, seq, entry_id, at_ms, kind, verdict, reason, cadre, unit,"
            " day, meal, amount_fen, prev_hash, hash FROM entries"
        )
        params: tuple[Any, ...] = ()
        if terminal_id is not None:
            sql += " WHERE terminal = ?"
            params = (terminal_id,)
        sql += " ORDER BY terminal, seq"
        conn = sqlite3.connect(f"{self.path.absolute().as_uri()}?mode=ro", uri=True)
        try:
            for r in conn.execute(sql, params):
                yield {
                    "terminal": r[0],
                    "canteen": r[1],
                    "seq": r[2],
                    "entry_id": r[3],
                    "at_ms": r[4],
                    "kind": r[5],
                    "verdict": r[6],
                    "reason": r[7],
                    "cadre": r[8],
                    "unit": r[9],
                    "day": r[10],
                    "meal": r[11],
                    "amount_fen": r[12],
                    "prev_hash": r[13].hex(),
                    "hash": r[14].hex(),
                }
        finally:
            conn.close()

    def revocations(self) -> list[dict[str, Any]]:
        """Revocation entries standing on at least one conflict that was not withdrawn."""
        with self._lock:
            # One row per credential, named after the first standing conflict that revokes it;
            # the conflict's kind and unit joined in SQL, not read for every conflict.
            rows = self._conn.execute(
                "SELECT s.entry, s.first, s.created, c.kind, c.unit FROM (SELECT r.credential,"
                " r.entry, min(r.conflict_id) AS first, min(r.created_ms) AS created"
                " FROM conflict_revocations AS r JOIN conflicts AS w ON w.id = r.conflict_id"
                " WHERE w.withdrawn_ms IS NULL GROUP BY r.credential) AS s"
                " JOIN conflicts AS c ON c.id = s.first ORDER BY s.first, s.credential"
            ).fetchall()
        out = []
        for entry, conflict_id, created_ms, kind, unit in rows:
            item = json.loads(entry)
            item.update(
                {"reason": kind, "conflict": conflict_id, "unit": unit, "created_ms": created_ms}
            )
            out.append(item)
        return out

    # -- terminals' clocks (issue 12, point 5) ---------------------------------------

    CLOCK_TOLERANCE_MS = 30_000  # as the terminal's [sync] clock_tolerance_s default

    def note_clock(self, terminal_id: str, now_ms: int) -> None:
        """Read the terminal's time_signal entries held since the last call: keep its newest
        clock offset, and raise a ``clock`` alarm for each one beyond the tolerance.

        Only entries the chain checks accepted are read, so an offset is the terminal's
        own signed-in-chain statement beside the county's signed time.
        """
        with self._write() as conn:
            row = conn.execute(
                "SELECT scanned_seq FROM clock_offsets WHERE terminal = ?", (terminal_id,)
            ).fetchone()
            after = int(row[0]) if row else 0
            top = conn.execute(
                "SELECT coalesce(max(seq), 0) FROM entries WHERE terminal = ?", (terminal_id,)
            ).fetchone()[0]
            if row is not None and top <= after:
                return
            found = None
            for seq, detail in conn.execute(
                "SELECT seq, detail FROM entries WHERE terminal = ? AND seq > ?"
                " AND kind = 'time_signal' ORDER BY seq",
                (terminal_id, after),
            ).fetchall():
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
                if abs(ahead) > self.CLOCK_TOLERANCE_MS:
                    way = "ahead of" if ahead > 0 else "behind"
                    conn.execute(
                        "INSERT INTO alarms (terminal, kind, seq, problem, first_ms, last_ms)"
                        " VALUES (?, 'clock', ?, ?, ?, ?)",
                        (
                            terminal_id,
                            seq,
                            f"the terminal's clock was {abs(ahead) / 1000:.0f} s {way} the "
                            f"county's time (tolerance {self.CLOCK_TOLERANCE_MS // 1000} s): "
                            "its sales ran on the county's time; have its clock set (NTP)",
                            now_ms,
                            now_ms,
                        ),
                    )
            conn.execute(
                "INSERT INTO clock_offsets (terminal, scanned_seq, noted_ms) VALUES (?, ?, ?)"
                " ON CONFLICT (terminal) DO UPDATE SET scanned_seq = excluded.scanned_seq,"
                " noted_ms = excluded.noted_ms",
                (terminal_id, top, now_ms),
            )
            if found is not None:
                conn.execute(
                    "UPDATE clock_offsets SET seq = ?, ahead_ms = ?, server_ms = ?"
                    " WHERE terminal = ?",
                    (*found, terminal_id),
                )

    def clock_offsets(self) -> list[dict[str, Any]]:
        """Each terminal's newest clock offset (``ahead_ms``: its clock minus county time)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT terminal, ahead_ms, seq, server_ms FROM clock_offsets"
                " WHERE ahead_ms IS NOT NULL ORDER BY terminal"
            ).fetchall()
        return [
            {
                "terminal": t,
                "ahead_ms": ahead,
                "seq": seq,
                "server_ms": server,
                "in_tolerance": abs(ahead) <= self.CLOCK_TOLERANCE_MS,
            }
            for t, ahead, seq, server in rows
        ]

    def alarms(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT a.id, a.terminal, t.canteen, a.kind, a.seq, a.problem, a.first_ms,"
                " a.last_ms, a.times, a.theirs FROM alarms AS a"
                " LEFT JOIN terminals AS t ON t.terminal_id = a.terminal ORDER BY a.id"
            ).fetchall()
        keys = (
            "id",
            "terminal",
            "canteen",
            "kind",
            "seq",
            "problem",
            "first_ms",
            "last_ms",
            "times",
        )
        out = []
        for r in rows:
            item = dict(zip(keys, r[:9], strict=True))
            item["hash"] = r[9].hex() if r[9] is not None else None
            out.append(item)
        return out

    def conflicts(self) -> list[dict[str, Any]]:
        """Every conflict with its evidence: both entries, their terminals, hashes and times."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, kind, credential, cadre, name, unit, day, meal, reason, found_ms,"
                " withdrawn_ms, withdrawn_reason,"
                " first_terminal, first_canteen, first_seq, first_method, first_hash, first_at_ms,"
                " second_terminal, second_canteen, second_seq, second_method, second_hash,"
                " second_at_ms FROM conflicts ORDER BY id"
            ).fetchall()
            revoked: dict[int, list[str]] = {}
            for conflict_id, credential in self._conn.execute(
                "SELECT conflict_id, credential FROM conflict_revocations"
                " ORDER BY conflict_id, credential"
            ):
                revoked.setdefault(conflict_id, []).append(credential)
        head = (
            "id",
            "kind",
            "credential",
            "cadre",
            "name",
            "unit",
            "day",
            "meal",
            "reason",
            "found_ms",
            "withdrawn_ms",
            "withdrawn_reason",
        )
        side = ("terminal", "canteen", "seq", "method", "hash", "at_ms")
        out = []
        for r in rows:
            item = dict(zip(head, r[:12], strict=True))
            for name, values in (("first", r[12:18]), ("second", r[18:24])):
                entry = dict(zip(side, values, strict=True))
                entry["hash"] = entry["hash"].hex() if entry["hash"] is not None else None
                item[name] = entry
            item["revokes"] = revoked.get(r[0], [])
            out.append(item)
        return out

    def report(self, now_ms: int, silent_after_ms: int, utc_offset_h: int = 8) -> dict[str, Any]:
        """Per canteen and day: meals, amounts, refusals by reason, conflicts; silent terminals.

        An entry without a service day (a refusal before any meal window was
        known) counts on the local day of its time, at ``utc_offset_h``.
        """
        local_day = f"date(at_ms / 1000, 'unixepoch', '{int(utc_offset_h):+d} hours')"
        with self._lock:
            conn = self._conn
            days: dict[tuple[str, str], dict[str, Any]] = {}

            def slot(canteen: str, day: str) -> dict[str, Any]:
                return days.setdefault(
                    (canteen, day),
                    {
                        "canteen": canteen,
                        "day": day,
                        "meals": 0,
                        "amount_fen": 0,
                        "reversals": 0,
                        "refusals": {},
                        "conflicts": 0,
                    },
                )

            for canteen, day, kind, verdict, reason, n, fen in conn.execute(
                f"SELECT canteen, coalesce(day, {local_day}), kind, verdict, reason, count(*),"
                " coalesce(sum(amount_fen), 0) FROM entries WHERE kind IN ('sale', 'reversal')"
                " GROUP BY 1, 2, 3, 4, 5"
            ):
                s = slot(canteen, day)
                if kind == SALE and verdict == ACCEPT:
                    s["meals"] += n
                    s["amount_fen"] += fen
                elif kind == REVERSAL:
                    s["meals"] -= n
                    s["amount_fen"] -= fen
                    s["reversals"] += n
                elif kind == SALE:
                    key = reason or "unknown"
                    s["refusals"][key] = s["refusals"].get(key, 0) + n
            per_unit: dict[str, dict[str, int]] = {}
            for kind, unit, canteen, day in conn.execute(
                "SELECT c.kind, coalesce(c.unit, ''), e.canteen, coalesce(c.day, '')"
                " FROM conflicts AS c JOIN entries AS e"
                " ON e.terminal = c.second_terminal AND e.seq = c.second_seq"
                " WHERE c.withdrawn_ms IS NULL"
            ):
                slot(canteen, day)["conflicts"] += 1
                u = per_unit.setdefault(unit, {})
                u[kind] = u.get(kind, 0) + 1
            silent = [
                {"terminal": t, "canteen": c, "last_seen_ms": seen, "acked_seq": acked}
                for t, c, seen, acked in conn.execute(
                    "SELECT terminal_id, canteen, last_seen_ms, acked_seq FROM terminals"
                    " WHERE last_seen_ms IS NULL OR last_seen_ms < ? ORDER BY terminal_id",
                    (now_ms - silent_after_ms,),
                )
            ]
            by_kind = dict(conn.execute("SELECT kind, count(*) FROM alarms GROUP BY kind"))
        return {
            "days": [days[k] for k in sorted(days)],
            "conflicts_by_unit": per_unit,
            "terminals_not_heard_from": silent,
            "alarms": sum(by_kind.values()),
            "alarms_by_kind": by_kind,
            "clock_offsets": self.clock_offsets(),
        }


@dataclass(frozen=True)
class _Side:
    """One of the two accepted sales of a conflict."""

    terminal: str
    seq: int
    canteen: str
    method: str
    credential: str
    hash: bytes


class _StoreKeyring:
    """The issuer keys in the county database, read inside the intake's transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._cache: dict[bytes, list[IssuerKey]] = {}

    def issuer_keys(self, kid: bytes) -> Sequence[IssuerKey]:
        found = self._cache.get(kid)
        if found is None:
            found = [
                IssuerKey(iss, kid, bytes(public_key), not_before, not_after)
                for public_key, iss, not_before, not_after in self.conn.execute(
                    "SELECT public_key, iss, not_before, not_after FROM issuer_keys"
                    " WHERE kid = ? ORDER BY public_key",
                    (kid,),
                )
            ]
            self._cache[kid] = found
        return found


def _record_alarm(
    conn: sqlite3.Connection,
    terminal_id: str,
    kind: str,
    seq: int,
    theirs: bytes | None,
    ours: bytes | None,
    problem: str,
    now_ms: int,
) -> None:
    # A terminal retries a refused batch; one alarm row counts the retries.
    conn.execute(
        "INSERT INTO alarms (terminal, kind, seq, theirs, ours, problem, first_ms, last_ms)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (terminal, kind, seq, theirs)"
        " DO UPDATE SET last_ms = excluded.last_ms, times = times + 1,"
        " problem = excluded.problem",
        (terminal_id, kind, seq, theirs, ours, problem, now_ms, now_ms),
    )


def revocation_entry(credential: str | None) -> dict[str, Any] | None:
    """The token.md §5 revocation entry for a ledger credential reference, if it names one."""
    if credential is None:
        return None
    if credential.startswith("qr/"):
        iss, _, cti = credential[3:].rpartition("/")
        if iss and cti:
            return {"kind": "credential", "iss": iss, "cti": cti}
    elif credential.startswith("card/"):
        return {"kind": "card", "uid": credential[5:]}
    return None


def next_terminal_id(store: CountyStore, canteen: str) -> str:
    """The first free id ``CANTEEN-N`` for a new terminal at ``canteen``."""
    with store._lock:
        taken = {
            row[0]
            for row in store._conn.execute(
                "SELECT terminal_id FROM terminals WHERE canteen = ?", (canteen,)
            )
        }
    n = 1
    while f"{canteen}-{n}" in taken:
        n += 1
    return f"{canteen}-{n}"
