"""How the county reaches its database: a URL in, transactions out.

This module owns the connection to the county database, SQLite (the embedded default,
a file in the data directory) or PostgreSQL (several server processes sharing one
database). It turns a URL into an engine with the right pool and settings, hands out
read and write transactions, and turns "the database is not there right now" (a pool
with no free connection, a server restarting, a SQLite writer holding the lock) into
``DatabaseUnavailable``, which the server answers with 503 and the terminal retries.
It never knows a table: county/db/schema.py and the stores above do.

Writes: on SQLite a write transaction starts with BEGIN IMMEDIATE, so writers queue
on the file's lock instead of failing half-way; the writers of one process queue first
on a lock of their own, in the process, then write through one connection kept for
writes, whose page cache stays warm from one write to the next (see ``Database.write``
and ``__init__``). On PostgreSQL transactions run at
READ COMMITTED and each writer locks what it decides on (the terminal's row for its
intake; county/intake.py says which), so two server processes can take the same
terminal's retries at once and the second sees what the first committed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import ConnectionPoolEntry

from county.errors import StoreError

SQLITE_FILE = "county.sqlite"
log = logging.getLogger("county.db")
# SQLite: the WAL size (pages) at which a committing writer copies it into the database
# file itself, as SQLite does at 1,000 pages by default; with checkpoints in a thread of
# their own (Database.checkpoint_in_background) only a safety net.
AUTOCHECKPOINT_PAGES = 1000
BACKGROUND_AUTOCHECKPOINT_PAGES = 20_000
# The SQLite writer connection's page cache (SQLite's default is 2,000 KiB).
WRITER_CACHE_KIB = 65_536


class DatabaseError(StoreError):
    """The county database cannot be used as asked; the message says what to do. A
    ``StoreError`` (county/errors.py), so callers of the store catch it with the rest."""


class DatabaseUnavailable(DatabaseError):
    """The database cannot take this request now (busy, restarting, out of connections):
    answer 503 and let the caller retry; nothing was written."""


@dataclass(frozen=True)
class PoolLimits:
    """Bounds on one server process's connections to PostgreSQL."""

    # Connections one process keeps; N processes need N × (size + overflow) on the server.
    size: int = 8
    overflow: int = 4
    # How long a request waits for a free connection before it is answered 503.
    timeout_s: float = 5.0
    # How long to wait for PostgreSQL to accept a new connection.
    connect_timeout_s: int = 5
    # A statement that runs longer than this is cancelled (no request hangs on a lock).
    statement_timeout_ms: int = 30_000
    # SQLite: how long a writer waits for another writer before a 503.
    busy_timeout_ms: int = 10_000

    def one(self) -> PoolLimits:
        """The same limits for a pool of one connection."""
        return dataclasses.replace(self, size=1, overflow=0)


def database_url(url: str | None, data_dir: str | Path | None) -> str:
    """The URL a county command uses: ``--database URL`` if given, else the SQLite file
    in ``--data DIR`` (the embedded default, as before there was a choice)."""
    if url:
        return url
    if data_dir is None:
        raise DatabaseError("name the county database: --database URL or --data DIR")
    return f"sqlite:///{Path(data_dir) / SQLITE_FILE}"


def _parse(url: str) -> URL:
    try:
        parsed = make_url(url)
    except (sa_exc.ArgumentError, ValueError):
        raise DatabaseError(
            f"database URL {safe_url(url)!r}: expected sqlite:///PATH or "
            "postgresql://USER@HOST/NAME"
        ) from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise DatabaseError(f"database URL {url!r}: sqlite:///PATH needs a file path")
        return parsed.set(drivername="sqlite+pysqlite")
    if backend in ("postgresql", "postgres"):
        # psycopg 3 is the one PostgreSQL driver this project installs.
        return parsed.set(drivername="postgresql+psycopg")
    raise DatabaseError(
        f"database URL {safe_url(url)!r}: only sqlite:///PATH and postgresql://… are supported"
    )


def safe_url(url: str) -> str:
    """The URL to show in messages and logs, with any password masked."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (sa_exc.ArgumentError, ValueError):
        return "<unparsable URL>"


class Database:
    """An open county database: an engine and the transactions the stores use."""

    def __init__(self, url: str, pool: PoolLimits | None = None) -> None:
        self.pool = pool or PoolLimits()
        parsed = _parse(url)
        # Shown in messages as the user wrote it (no driver name), password masked.
        self.url = safe_url(url)
        self.backend = parsed.get_backend_name()
        # Read by each new SQLite connection (checkpoint_in_background changes it).
        self._sqlite_settings = {"wal_autocheckpoint": AUTOCHECKPOINT_PAGES}
        self.engine = (
            _sqlite_engine(parsed, self.pool, self._sqlite_settings)
            if self.is_sqlite
            else _pg_engine(parsed, self.pool)
        )
        # SQLite: every write transaction of this process on one connection of its own
        # (writers take turns anyway). SQLite drops a connection's whole page cache when
        # another connection has written since its last transaction, so writes spread
        # over the pool read every index page they touch again; the writer's own cache
        # stays warm from one batch to the next.
        self._write_engine = (
            _sqlite_engine(parsed, self.pool.one(), self._sqlite_settings, WRITER_CACHE_KIB)
            if self.is_sqlite
            else self.engine
        )
        self._checkpointer: _Checkpointer | None = None
        # SQLite lets one writer in at a time. Left to SQLite, the others of this process
        # would each hold a pooled connection and sleep in its busy handler, waking at
        # growing intervals (up to 100 ms) to try again: the file stood idle between two
        # writers, and the pool ran dry for readers. Queued here, the next writer starts
        # the moment the last one commits. Other processes (a county command) still meet
        # SQLite's own busy wait.
        self._writer = threading.Lock() if self.is_sqlite else None

    @property
    def is_sqlite(self) -> bool:
        return self.backend == "sqlite"

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file, or None on PostgreSQL."""
        return Path(self.engine.url.database or "") if self.is_sqlite else None

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction: committed when the block ends, rolled back if it raises."""
        with (
            self._writer_turn(),
            self._connection(self._write_engine, write=True) as conn,
            _unavailable_on_outage(self.url),
            conn.begin(),
        ):
            yield conn
        if self._checkpointer is not None:
            self._checkpointer.due()

    def checkpoint_in_background(self) -> None:
        """SQLite, for a server: copy the WAL into the database file in a thread of its
        own after each write transaction, rather than in the commit of whichever writer
        finds the WAL at 1,000 pages. That copy and its fsync took over half of a commit
        (a 300-entry batch into the entries table and its ten indexes: 24.2 ms against
        11.0 ms without it) while every other writer waited for its turn; a PASSIVE
        checkpoint runs beside the next writer instead. Nothing on PostgreSQL."""
        if not self.is_sqlite or self._checkpointer is not None:
            return
        self._sqlite_settings["wal_autocheckpoint"] = BACKGROUND_AUTOCHECKPOINT_PAGES
        self.engine.dispose()  # pooled connections are made again with the new setting
        self._write_engine.dispose()
        self._checkpointer = _Checkpointer(str(self.sqlite_path), self.url)

    @contextlib.contextmanager
    def _writer_turn(self) -> Iterator[None]:
        """On SQLite, this process's turn to write; ``DatabaseUnavailable`` (503) when it
        does not come within the busy timeout."""
        if self._writer is None:
            yield
            return
        wait_s = self.pool.busy_timeout_ms / 1000
        if not self._writer.acquire(timeout=wait_s):
            raise DatabaseUnavailable(
                f"the county database {self.url} is busy: other writers held it for {wait_s:g} s"
            )
        try:
            yield
        finally:
            self._writer.release()

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """One read transaction: a consistent view of what was committed before it."""
        with (
            self._connection(self.engine, write=False) as conn,
            _unavailable_on_outage(self.url),
            conn.begin(),
        ):
            yield conn

    @contextlib.contextmanager
    def _connection(self, engine: Engine, write: bool) -> Iterator[Connection]:
        with _unavailable_on_outage(self.url):
            conn = engine.connect()
        try:
            if write and self.is_sqlite:
                conn = conn.execution_options(county_write=True)
            yield conn
        finally:
            with contextlib.suppress(sa_exc.SQLAlchemyError):
                conn.close()

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        self.engine.dispose()
        self._write_engine.dispose()


class _Checkpointer:
    """A thread that runs ``PRAGMA wal_checkpoint(PASSIVE)`` whenever a write transaction
    has ended since its last one (Database.checkpoint_in_background). PASSIVE never
    waits for or blocks a writer or reader; what it cannot copy now, it copies next time."""

    def __init__(self, path: str, url: str) -> None:
        self._path = path
        self._url = url
        self._due = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def due(self) -> None:
        self._due.set()

    def stop(self) -> None:
        self._stopping = True
        self._due.set()
        self._thread.join(30)

    def _run(self) -> None:
        # A connection of its own, outside the pool the requests use.
        conn: sqlite3.Connection | None = None
        try:
            while True:
                self._due.wait()
                self._due.clear()
                if self._stopping:
                    return
                try:
                    if conn is None:
                        conn = sqlite3.connect(self._path, isolation_level=None)
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # the next write tries again; commits stand
                    log.warning("%s: a WAL checkpoint failed: %s", self._url, exc)
        finally:
            if conn is not None:
                conn.close()


@contextlib.contextmanager
def _unavailable_on_outage(url: str) -> Iterator[None]:
    """Turn a database that cannot answer now into ``DatabaseUnavailable`` (a 503)."""
    try:
        yield
    except sa_exc.TimeoutError as exc:
        raise DatabaseUnavailable(f"no free connection to {url}: {exc}") from exc
    except sa_exc.OperationalError as exc:
        # A lost or refused connection, a server shutting down, a SQLite lock held too
        # long, a statement cancelled by its timeout: nothing was committed.
        raise DatabaseUnavailable(
            f"the county database {url} cannot answer now: {exc.orig}"
        ) from exc
    except sa_exc.InterfaceError as exc:
        raise DatabaseUnavailable(f"the connection to {url} was lost: {exc.orig}") from exc


def _sqlite_engine(
    url: URL, pool: PoolLimits, settings: dict[str, int], cache_kib: int = 0
) -> Engine:
    path = Path(url.database or "")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatabaseError(f"cannot make the folder of {path}: {exc.strerror}") from None
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": pool.busy_timeout_ms / 1000},
        pool_size=pool.size,
        max_overflow=pool.overflow,
        pool_timeout=pool.timeout_s,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy's "begin" event below start transactions, not the sqlite3
        # module's own guesswork (SQLAlchemy's documented recipe for pysqlite).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={int(pool.busy_timeout_ms)}")
        cursor.execute(f"PRAGMA wal_autocheckpoint={int(settings['wal_autocheckpoint'])}")
        if cache_kib:
            cursor.execute(f"PRAGMA cache_size={-int(cache_kib)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("county_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _pg_engine(url: URL, pool: PoolLimits) -> Engine:
    return create_engine(
        url,
        pool_size=pool.size,
        max_overflow=pool.overflow,
        pool_timeout=pool.timeout_s,
        # A connection the server dropped (a restart) is found before it is used.
        pool_pre_ping=True,
        isolation_level="READ COMMITTED",
        connect_args={
            "connect_timeout": pool.connect_timeout_s,
            "options": f"-c statement_timeout={int(pool.statement_timeout_ms)}"
            " -c idle_in_transaction_session_timeout=60000",
            "application_name": "canteen-county",
        },
    )
