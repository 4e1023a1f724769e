"""Ledger entries written straight into a county database, as fast as the backend takes them.

This module owns the one bulk loader of the project's generated histories: the
county-scale bench's month-report history (bench/county_scale.py) and ``hw-sim county
history`` (hwsim/history.py) both hand it rows of the ``entries`` table in
``ENTRY_COLUMNS`` order. For the load only, as one loads a database before opening
it: the table's secondary indexes are dropped and made again afterwards from their
own definitions (one sort each instead of millions of random inserts); SQLite runs
with synchronous=OFF and a large cache (the servers' connections keep
synchronous=FULL); PostgreSQL takes the rows by COPY. All rows go in one
transaction: a load that fails leaves the table as it was. Then ANALYZE (VACUUM
ANALYZE on PostgreSQL), so the planner knows the new table.

It checks nothing about the rows (the callers build them with protocol/chain.py)
and touches no other table.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

ENTRY_COLUMNS = (
    "terminal, canteen, seq, entry_id, at_ms, kind, verdict, reason, method, cadre,"
    " credential, ctr, unit, day, meal, amount_fen, ref_seq, detail, prev_hash, hash,"
    " received_ms"
)
CHUNK = 50_000


class Progress(Protocol):
    def update(self, n: int) -> Any: ...


def pg_dsn(url: str) -> str:
    """A libpq URL for psycopg from the county's SQLAlchemy-style URL."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def sqlite_file(url: str) -> str | None:
    """The file of a ``sqlite:///PATH`` URL, or None for another backend."""
    for prefix in ("sqlite:///", "sqlite+pysqlite:///"):
        if url.startswith(prefix):
            return url[len(prefix) :]
    return None


def load_entries(url: str, rows: Iterable[Sequence[Any]], progress: Progress | None = None) -> int:
    """Append ``rows`` to the entries table of the county at ``url``; how many."""
    path = sqlite_file(url)
    if path is not None:
        return _load_sqlite(path, rows, progress)
    return _load_pg(pg_dsn(url), rows, progress)


def _load_sqlite(path: str, rows: Iterable[Sequence[Any]], progress: Progress | None) -> int:
    conn = sqlite3.connect(path, isolation_level=None)
    done = 0
    try:
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-1000000")
        indexes = [
            (str(name), str(sql))
            for name, sql in conn.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND"
                " tbl_name = 'entries' AND sql IS NOT NULL"
            )
        ]
        conn.execute("BEGIN")
        try:
            for name, _sql in indexes:
                conn.execute(f'DROP INDEX "{name}"')
            sql = f"INSERT INTO entries ({ENTRY_COLUMNS}) VALUES ({', '.join('?' * 21)})"
            chunk: list[Sequence[Any]] = []
            for row in rows:
                chunk.append(row)
                if len(chunk) == CHUNK:
                    conn.executemany(sql, chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress.update(len(chunk))
                    chunk.clear()
            conn.executemany(sql, chunk)
            done += len(chunk)
            if progress is not None:
                progress.update(len(chunk))
            for _name, sql in indexes:
                conn.execute(sql)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
    finally:
        conn.close()
    return done


def _load_pg(dsn: str, rows: Iterable[Sequence[Any]], progress: Progress | None) -> int:
    import psycopg

    done = 0
    with psycopg.connect(dsn, autocommit=False) as conn:
        found = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'entries'"
            " AND indexname NOT IN (SELECT conname FROM pg_constraint)"
        ).fetchall()
        for name, _sql in found:
            conn.execute(f'DROP INDEX "{name}"')
        with conn.cursor() as cur, cur.copy(f"COPY entries ({ENTRY_COLUMNS}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
                done += 1
                if done % CHUNK == 0 and progress is not None:
                    progress.update(CHUNK)
            if progress is not None:
                progress.update(done % CHUNK)
        for _name, sql in found:
            conn.execute(sql)
        conn.commit()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE entries")
    return done
