"""Moving a county from one database to another, and checking a county's chains.

This module owns ``canteen-county db copy`` (a SQLite county into PostgreSQL is the
case that matters; any backend to any works) and ``db verify``. A copy reads every
table of the source in one consistent snapshot and streams it in batches (no table
is ever held in memory), writes the target in one transaction, sets PostgreSQL's id
sequences past the copied ids, and before committing proves the result from what the
target now holds: every terminal's chain re-hashed entry by entry with
protocol.chain's ``entry_hash``, each entry linked to the one before it, each
terminal's ``last_hash`` its last entry's, and every table's row count equal to the
source's. A copy that fails is rolled back and leaves the target empty, so it can
simply be run again. It never changes the source beyond what opening it does (a
SQLite county of an earlier version is upgraded first).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

from sqlalchemy import Connection, Table, func, select, text
from sqlalchemy import exc as sa_exc
from tqdm import tqdm

from county.db import migrations
from county.db.engine import Database, DatabaseError
from county.db.schema import entries, metadata, terminals
from protocol.chain import GENESIS_PREV_HASH, HASHED_COLUMNS, entry_hash

BATCH_ROWS = 5000


class CopyRefused(DatabaseError):
    """The copy cannot start (target not empty or not at head, same database)."""


class VerifyFailed(DatabaseError):
    """A chain or a table of the database is not what it must be; the message names the
    first terminal and entry (or table) that differs."""


@dataclass
class ChainCheck:
    """What ``verify_chains`` found sound."""

    terminals: int = 0
    entries: int = 0


@dataclass
class CopyResult:
    rows: dict[str, int] = field(default_factory=dict)
    chains: ChainCheck = field(default_factory=ChainCheck)

    @property
    def total(self) -> int:
        return sum(self.rows.values())


def _tables() -> list[Table]:
    return list(metadata.sorted_tables)


def _progress(total: int, what: str, show: bool | None) -> tqdm[Any]:
    """A progress bar on a terminal's standard error; nothing when it is not a tty."""
    enabled = sys.stderr.isatty() if show is None else show
    return tqdm(
        total=total,
        desc=what,
        unit=" rows",
        unit_scale=total >= 100_000,  # 40.0M rows; a small table counts one by one
        file=sys.stderr,
        disable=not enabled,
    )


@contextlib.contextmanager
def _snapshot(db: Database, write: bool = False) -> Iterator[Connection]:
    """One transaction over all of ``db`` with no statement timeout (a count or a scan of
    40 million entries takes longer than a request may). On PostgreSQL a read sees one
    snapshot (REPEATABLE READ); on SQLite a read transaction does anyway."""
    try:
        with db.engine.connect() as conn:
            if write and db.is_sqlite:
                conn = conn.execution_options(county_write=True)
            elif not write and not db.is_sqlite:
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                if not db.is_sqlite:
                    conn.execute(text("SET LOCAL statement_timeout = 0"))
                yield conn
    except sa_exc.OperationalError as exc:
        raise DatabaseError(f"the county database {db.url}: {exc.orig}") from None


def row_counts(conn: Connection) -> dict[str, int]:
    return {
        t.name: int(conn.execute(select(func.count()).select_from(t)).scalar_one())
        for t in _tables()
    }


def _check_target(source: Database, target: Database) -> None:
    if source.url == target.url:
        raise CopyRefused(f"--from and --to are the same database ({target.url})")
    found, need = migrations.current(target), migrations.head()
    if found != need:
        raise CopyRefused(
            f"the target database at {target.url} is at revision {found or 'none'}; "
            f"a copy needs {need}: run canteen-county db upgrade --database {target.url} first"
        )
    with _snapshot(target) as conn:
        for t in _tables():
            if conn.execute(select(1).select_from(t).limit(1)).first() is not None:
                raise CopyRefused(
                    f"the target database at {target.url} is not empty (table {t.name} has "
                    "rows): a copy goes into a new, upgraded database only"
                )


def copy_county(
    source: Database,
    target: Database,
    batch_rows: int = BATCH_ROWS,
    show_progress: bool | None = None,
) -> CopyResult:
    """Copy every table of ``source`` into the empty, upgraded ``target`` and verify it
    before committing. Raises CopyRefused before anything is written, VerifyFailed with
    the target left as empty as it was."""
    migrations.prepare(source)
    _check_target(source, target)
    result = CopyResult()
    with _snapshot(source) as src, _snapshot(target, write=True) as dst:
        counts = row_counts(src)
        for table in _tables():
            result.rows[table.name] = _copy_table(
                src, dst, table, counts[table.name], batch_rows, show_progress
            )
        if not target.is_sqlite:
            _reset_sequences(dst)
        # Checked in the copy's own transaction: a copy that fails is never committed.
        copied = row_counts(dst)
        for name, n in counts.items():
            if copied[name] != n:
                raise VerifyFailed(
                    f"table {name}: the source has {n} rows, the copy {copied[name]}"
                )
        result.chains = check_chains(dst, show_progress)
    return result


def _copy_table(
    src: Connection,
    dst: Connection,
    table: Table,
    total: int,
    batch_rows: int,
    show_progress: bool | None,
) -> int:
    order = list(table.primary_key.columns) or list(table.columns)
    rows = src.execute(select(table).order_by(*order).execution_options(yield_per=batch_rows))
    done = 0
    with _progress(total, table.name, show_progress) as bar:
        for part in rows.partitions():
            batch = [row._asdict() for row in part]
            try:
                dst.execute(table.insert(), batch)
            except sa_exc.DataError as exc:
                raise CopyRefused(_unstorable(table, batch, exc)) from None
            done += len(part)
            bar.update(len(part))
    return done


def _unstorable(table: Table, batch: list[dict[str, Any]], exc: sa_exc.DataError) -> str:
    """One line saying which row of ``table`` the target refused, and why.

    A SQLite county may hold what PostgreSQL cannot store: before the server refused
    them (county/app.py's json_object) a terminal could upload texts with a NUL
    character, which SQLite keeps and PostgreSQL refuses in any text column. Such an
    entry is signed and chained, so the copy cannot change it: it stops, names it, and
    leaves the target empty for county IT to decide."""
    key = [c.name for c in table.primary_key.columns]
    for row in batch:
        for name, value in row.items():
            if isinstance(value, str) and "\x00" in value:
                where = ", ".join(f"{k} {row[k]}" for k in key)
                return (
                    f"table {table.name}, row {where}: its {name} holds a NUL character, "
                    "which PostgreSQL cannot store in text; nothing was copied"
                )
    first = str(exc.orig).splitlines()[0] if exc.orig is not None else str(exc)
    return f"table {table.name}: the target refused a row ({first}); nothing was copied"


def _reset_sequences(conn: Connection) -> None:
    """Ids were copied as they were: each id sequence goes past the largest, so the next
    alarm or conflict the server records gets a new one."""
    for table in _tables():
        column = table.autoincrement_column
        if column is None:
            continue
        conn.execute(
            text(
                f"SELECT setval(pg_get_serial_sequence('{table.name}', '{column.name}'),"
                f" coalesce(max({column.name}), 0) + 1, false) FROM {table.name}"
            )
        )


def verify_chains(db: Database, show_progress: bool | None = None) -> ChainCheck:
    """``check_chains`` over all of ``db`` in one snapshot."""
    with _snapshot(db) as conn:
        return check_chains(conn, show_progress)


def check_chains(conn: Connection, show_progress: bool | None = None) -> ChainCheck:
    """Re-hash every terminal's chain: each entry's hash over its hashed columns, each
    linked to the one before (the first to the genesis hash), sequence numbers without
    a gap, and the terminal's ``last_hash`` its last entry's. Raises VerifyFailed
    naming the first terminal and entry that differs."""
    check = ChainCheck()
    columns = [entries.c[name] for name in HASHED_COLUMNS]
    last_hash = {
        str(r.terminal_id): bytes(r.last_hash)
        for r in conn.execute(select(terminals.c.terminal_id, terminals.c.last_hash))
    }
    total = int(conn.execute(select(func.count()).select_from(entries)).scalar_one())
    rows = conn.execute(
        select(entries.c.terminal, entries.c.prev_hash, entries.c.hash, *columns)
        .order_by(entries.c.terminal, entries.c.seq)
        .execution_options(yield_per=BATCH_ROWS)
    )
    walk = _ChainWalk(last_hash)
    with _progress(total, "verify", show_progress) as bar:
        for part in rows.partitions():
            for row in part:
                walk.entry(str(row[0]), bytes(row[1]), bytes(row[2]), tuple(row[3:]))
            check.entries += len(part)
            bar.update(len(part))
    walk.finish()
    check.terminals = len(last_hash)
    return check


def _fail(message: str) -> NoReturn:
    raise VerifyFailed(message)


class _ChainWalk:
    """One pass over every entry in (terminal, seq) order."""

    def __init__(self, last_hash: dict[str, bytes]) -> None:
        self.last_hash = last_hash
        self.seen: set[str] = set()
        self.terminal: str | None = None
        self.seq = 0
        self.prev = GENESIS_PREV_HASH

    def entry(self, terminal: str, prev_hash: bytes, hash_: bytes, fields: tuple[Any, ...]) -> None:
        if terminal != self.terminal:
            self._end_terminal()
            if terminal not in self.last_hash:
                _fail(f"terminal {terminal} entry {fields[0]}: no such terminal is registered")
            self.terminal, self.seq, self.prev = terminal, 0, GENESIS_PREV_HASH
            self.seen.add(terminal)
        seq = fields[0]
        if seq != self.seq + 1:
            _fail(f"terminal {terminal} entry {seq}: expected entry {self.seq + 1} (a gap)")
        if prev_hash != self.prev:
            _fail(
                f"terminal {terminal} entry {seq}: its prev_hash is not the hash of entry "
                f"{seq - 1} (the chain is broken)"
            )
        if entry_hash(prev_hash, fields) != hash_:
            _fail(f"terminal {terminal} entry {seq}: its hash does not match its fields (altered)")
        self.seq, self.prev = seq, hash_

    def _end_terminal(self) -> None:
        if self.terminal is None:
            return
        if self.last_hash[self.terminal] != self.prev:
            _fail(
                f"terminal {self.terminal} entry {self.seq}: the terminal's last_hash is not "
                "its last entry's hash"
            )

    def finish(self) -> None:
        self._end_terminal()
        for terminal in sorted(set(self.last_hash) - self.seen):
            if self.last_hash[terminal] != GENESIS_PREV_HASH:
                _fail(
                    f"terminal {terminal} entry 1: the terminal's last_hash names an entry "
                    "the database does not have"
                )
