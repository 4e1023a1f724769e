"""What the county store's job modules share: its limits, its error, the names of its
alarm and conflict kinds, and the two upserts several of them write (alarms, counters).

The store is split by job (county/intake.py, county/registry.py, county/conflicts.py,
county/reports.py, with county/store.py as the one door the app and the commands use).
This module owns only what more than one of those jobs needs, so that none of them has
to import another just for a constant. ``StoreError`` itself is in county/errors.py
(re-exported here), where county/db/engine.py can build its ``DatabaseError`` on it
without importing the store: a caller that catches ``StoreError`` also catches a
database that cannot be used.

The upserts are single statements (INSERT ... ON CONFLICT DO UPDATE), in SQLite's or
PostgreSQL's spelling as the connection's dialect says: two server processes counting
the same alarm or counter at the same moment both land, neither overwrites the other.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ClauseElement, ColumnElement, Connection, Executable, Table, literal_column
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine.interfaces import DBAPICursor, Dialect
from sqlalchemy.sql.compiler import SQLCompiler

from county.db.schema import alarms, counters
from county.errors import StoreError as StoreError  # re-exported

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
BEFORE_THE_KEY = frozenset((ALTERED, BAD_GENESIS, BAD_CHECKPOINT, UNSIGNED))
BAD_EVIDENCE = "bad_evidence"  # an accepted sale that proves nothing: stored, never a conflict
CLOCK = "clock"  # a terminal's clock was beyond the tolerance (county/intake.py, note_clock)

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


def upsert(conn: Connection, table: Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT on ``table`` that can take ON CONFLICT, in the connection's dialect."""
    return dialect_insert(conn.dialect.name, table)


def dialect_insert(dialect: str, table: Table) -> postgresql.Insert | sqlite.Insert:
    if dialect == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


# The statements written for every batch are built once per dialect and executed with
# their values as parameters: building a statement costs more than running it.


@functools.cache
def _bump(dialect: str) -> Executable:
    stmt = dialect_insert(dialect, counters)
    return stmt.on_conflict_do_update(
        index_elements=[counters.c.name],
        set_={"value": counters.c.value + stmt.excluded.value},
    )


@functools.cache
def _bump_prepared(dialect: str) -> Prepared:
    return Prepared(_bump(dialect))


def bump(conn: Connection, name: str, by: int) -> None:
    """Add ``by`` to the counter ``name`` (made at zero when new)."""
    if by:
        conn.execute(_bump(conn.dialect.name), {"name": name, "value": by})


def bump_all(conn: Connection, counts: dict[str, int]) -> None:
    """Add to several counters in one statement (one executemany), in the counters' name
    order, so that two transactions counting the same names lock their rows in one order."""
    rows = [{"name": name, "value": counts[name]} for name in sorted(counts) if counts[name]]
    if rows:
        _bump_prepared(conn.dialect.name).run(conn, rows)


# The values of one alarm row, as ``alarm_row`` gives them and ``record_alarms`` binds them.
_ALARM_VALUES = ("terminal", "kind", "seq", "theirs", "ours", "problem", "first_ms", "last_ms")


def alarm_row(
    terminal_id: str,
    kind: str,
    seq: int,
    theirs: bytes | None,
    ours: bytes | None,
    problem: str,
    now_ms: int,
) -> dict[str, Any]:
    """The values of one alarm, for ``record_alarms``."""
    return dict(
        zip(
            _ALARM_VALUES,
            (terminal_id, kind, seq, theirs, ours, problem, now_ms, now_ms),
            strict=True,
        )
    )


@functools.cache
def _record_alarms(dialect: str) -> Prepared:
    stmt = dialect_insert(dialect, alarms)
    counted = stmt.on_conflict_do_update(
        index_elements=[alarms.c.terminal, alarms.c.kind, alarms.c.seq, alarms.c.theirs],
        set_={
            "last_ms": stmt.excluded.last_ms,
            "times": alarms.c.times + 1,
            "problem": stmt.excluded.problem,
        },
    )
    return Prepared(counted, _ALARM_VALUES)


def record_alarms(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """One alarm row (from ``alarm_row``) per (terminal, kind, seq, theirs): a terminal
    retries a refused batch, and the row counts the retries (``times``) instead of growing
    the table. A batch's alarms, each for a different key, go in one executemany: a
    terminal whose every sale fails its evidence check sends hundreds at once."""
    if rows:
        _record_alarms(conn.dialect.name).run(conn, rows)


@functools.cache
def insert_or_ignore(dialect: str, table: Table) -> Executable:
    """INSERT ... ON CONFLICT DO NOTHING on ``table``, built once per dialect."""
    return dialect_insert(dialect, table).on_conflict_do_nothing()


# --- the statements of every sync, run without SQLAlchemy's per-statement work ---------


def sql_word(word: str) -> ColumnElement[str]:
    """A kind or verdict written into the SQL, not bound: a partial index (entries_sales_at,
    entries_served, entries_reversals) serves a query only when the planner sees the very
    words of its WHERE. Bound as a parameter, SQLite searched each sale's terminal for its
    reversal, every entry of the terminal, a month taking minutes instead of seconds."""
    assert word.isalpha()
    return literal_column(f"'{word}'")


class Prepared:
    """A Core statement compiled once per dialect and run straight on the DBAPI cursor of
    the caller's connection, inside its transaction.

    A sale sync runs about a dozen statements; SQLAlchemy spends more CPU on each one
    (its cache key, parameters, execution context and result) than SQLite takes to
    run it, and at the lunch peak that CPU is what the county server runs short of.
    The statements of every sync (county/intake.py) are built as Core constructs, so
    they stay dialect-neutral and checked against the schema, and compiled here once
    per dialect; what runs per sync is the driver's own execute. Only plain values go
    in (ints, texts, bytes), which both drivers take as they are, so no bind processor
    is needed; a driver error is raised as SQLAlchemy would raise it (the same
    ``OperationalError`` and friends, a lost connection invalidated), so the store's
    503 for a database that cannot answer works the same.
    """

    # Statements run this way in this process (bench/county_intake.py counts them: the
    # engine's events do not see them).
    runs = 0

    def __init__(self, stmt: Executable, column_keys: Sequence[str] | None = None) -> None:
        self.stmt = stmt
        self.column_keys = list(column_keys) if column_keys is not None else None
        self._compiled: dict[str, tuple[str, tuple[str, ...] | None, dict[str, Any]]] = {}

    def _form(self, dialect: Dialect) -> tuple[str, tuple[str, ...] | None, dict[str, Any]]:
        form = self._compiled.get(dialect.name)
        if form is None:
            assert isinstance(self.stmt, ClauseElement)
            compiled = self.stmt.compile(dialect=dialect, column_keys=self.column_keys)
            assert isinstance(compiled, SQLCompiler)
            if compiled.escaped_bind_names:
                raise ValueError(f"parameter names that need escaping: {compiled.string}")
            # Values the statement carries itself (LIMIT 1), under their generated names.
            fixed = {
                k: v for k, v in compiled.construct_params(_check=False).items() if v is not None
            }
            order = tuple(compiled.positiontup or ()) if compiled.positional else None
            form = self._compiled[dialect.name] = (compiled.string, order, fixed)
        return form

    def run(
        self, conn: Connection, params: Mapping[str, Any] | Sequence[Mapping[str, Any]]
    ) -> DBAPICursor:
        """Execute with ``params`` (a list: executemany); the cursor, for rows or rowcount."""
        sql, order, fixed = self._form(conn.dialect)
        many = not isinstance(params, Mapping)
        rows: list[Mapping[str, Any]] = [params] if isinstance(params, Mapping) else list(params)
        if fixed:
            rows = [{**fixed, **row} for row in rows]
        args: list[Any] = (
            rows if order is None else [tuple([row[name] for name in order]) for row in rows]
        )
        Prepared.runs += 1
        raw = conn.connection
        cursor = raw.cursor()
        try:
            if many:
                cursor.executemany(sql, args)
            else:
                cursor.execute(sql, args[0])
        except conn.dialect.loaded_dbapi.Error as exc:
            if conn.dialect.is_disconnect(exc, raw.dbapi_connection, cursor):
                conn.invalidate(exc)
            raise sa_exc.DBAPIError.instance(
                sql, args, exc, conn.dialect.loaded_dbapi.Error, dialect=conn.dialect
            ) from exc
        return cursor
