"""Bringing a county database to this version's schema, with Alembic.

This module owns the county's migrations as code calls them: which revision a
database is at (``current``), which one this version needs (``head``), applying the
missing ones (``upgrade``) and what a server or command does when it opens a
database (``prepare``). The revisions themselves live in county/db/alembic/versions/
and run through county/db/alembic/env.py, each in its own transaction; no
alembic.ini is read.

Opening rules. SQLite, the embedded default, is upgraded by whoever opens it, so
``--data DIR`` alone works as it always did. PostgreSQL is shared by several server
processes and run by a DBA: it is never changed by opening it; a database behind
this version is refused with the command that upgrades it, and one ahead of it
(a newer server migrated it) is refused too.

Two upgrades at once wait for each other: on PostgreSQL with an advisory lock held
by the upgrading session (so it goes with a killed process), on SQLite with a lock
on a file beside the database. The second then finds the database at head.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, String, func, inspect, literal_column, select, table, text
from sqlalchemy import exc as sa_exc

from county.db.engine import Database, DatabaseError

SCRIPTS = Path(__file__).resolve().parent / "alembic"
# pg_advisory_lock key of the county's migrations (any constant; "canteen" in ASCII).
_PG_LOCK_KEY = 0x63616E7465656E


@dataclass(frozen=True)
class Status:
    """Where a database stands: its revision (None before the first) and this version's."""

    backend: str
    url: str
    current: str | None
    head: str

    @property
    def at_head(self) -> bool:
        return self.current == self.head


def _config(conn: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    if conn is not None:
        cfg.attributes["connection"] = conn
    return cfg


@functools.cache
def _scripts() -> ScriptDirectory:
    """The revisions shipped with this version (read once per process)."""
    return ScriptDirectory.from_config(_config())


def head() -> str:
    """The revision this version of the county needs."""
    found = _scripts().get_current_head()
    assert found is not None, "county/db/alembic/versions holds no revision"
    return found


def current(db: Database) -> str | None:
    """The revision ``db`` is at; None for a database no migration has run on."""
    with db.read() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def status(db: Database) -> Status:
    return Status(db.backend, db.url, current(db), head())


def _known(revision: str | None) -> bool:
    if revision is None:
        return True
    try:
        return _scripts().get_revision(revision) is not None
    except CommandError:
        return False


def _ahead(db: Database, found: str) -> DatabaseError:
    return DatabaseError(
        f"the county database at {db.url} is at revision {found}, which this server does not "
        f"know (it needs {head()}): a newer canteen-county migrated it; run that version"
    )


def upgrade(db: Database, to: str = "head") -> tuple[str | None, str]:
    """Apply every revision ``db`` lacks up to ``to`` (this version's head unless a test
    says otherwise), each in its own transaction, and return the revision it was at and
    the one it is at now. Safe to run again after a kill."""
    with _upgrade_lock(db) as conn:
        before = MigrationContext.configure(conn).get_current_revision()
        conn.commit()
        if not _known(before):
            raise _ahead(db, str(before))
        if not db.is_sqlite:
            _check_collation(db, conn)
        try:
            command.upgrade(_config(conn), to)
        except (sa_exc.DBAPIError, RuntimeError, CommandError) as exc:
            # A lost connection, a role that may not change tables, a database that is
            # not a county's: the revision in progress was rolled back.
            why = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
            raise DatabaseError(
                f"upgrading the county database at {db.url} stopped: {why}; "
                "the revisions before it are kept: fix that and run the upgrade again"
            ) from None
        after = MigrationContext.configure(conn).get_current_revision()
        conn.commit()
        _fill_rollups(conn)
    return before, str(after)


def _fill_rollups(conn: Connection) -> None:
    """Fill the console's summaries once a revision asked for it (0007), in one
    transaction; a kill leaves the request in place for the next run."""
    from county import rollups  # the county's rules, which import this package

    with conn.begin():
        if inspect(conn).has_table("rollups_meta") and rollups.fill_requested(conn):
            rollups.rebuild(conn)


def _check_collation(db: Database, conn: Connection) -> None:
    """Refuse a PostgreSQL database that sorts text other than by its bytes.

    The county orders text as SQLite does, byte by byte: which of two sales received in
    the same millisecond is a conflict's first (county/conflicts.py orders by received
    time, terminal, seq), the order ``entries`` prints (compared with cmp after a copy,
    docs/county-ops.md section 7), and indexes that a C library upgrade can never
    silently reorder. A database created with a language's collation (en_US.UTF-8, or
    an ICU locale) sorts 'HQ-3' between 'hq-2' and 'hq-4'; docs/county-ops.md section 2
    creates it with LOCALE 'C'."""
    version = int(conn.execute(text("SHOW server_version_num")).scalar_one())
    # Before PostgreSQL 15 every database's collation came from the C library.
    provider = "datlocprovider" if version >= 150000 else "'c'::\"char\""
    found = conn.execute(
        select(literal_column(provider, String), literal_column("datcollate", String))
        .select_from(table("pg_database"))
        .where(literal_column("datname") == func.current_database())
    ).one()
    conn.commit()
    by_bytes = found[0] == "c" and (
        found[1] in ("C", "POSIX") or str(found[1]).upper() in ("C.UTF-8", "C.UTF8")
    )
    if not by_bytes:
        what = "an ICU locale" if found[0] == "i" else f"the locale {found[1]}"
        raise DatabaseError(
            f"the county database at {db.url} sorts text by {what}; the county needs "
            "text sorted by its bytes: create the database with ENCODING 'UTF8' LOCALE 'C' "
            "TEMPLATE template0 (docs/county-ops.md, section 2)"
        )


@contextlib.contextmanager
def _upgrade_lock(db: Database) -> Iterator[Connection]:
    """A connection of ``db`` to migrate on, no other upgrade running meanwhile."""
    if db.is_sqlite:
        path = db.sqlite_path
        assert path is not None
        with open(path.with_name(path.name + "-migrate.lock"), "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            # county_write: each revision's transaction starts with BEGIN IMMEDIATE.
            with db.engine.connect() as conn:
                yield conn.execution_options(county_write=True)
        return
    conn = db.engine.connect()
    try:
        # Session settings: no statement timeout (an index on 40 million rows takes
        # minutes), and the lock that makes a second upgrade wait. The connection is
        # discarded afterwards, so neither reaches the server's pool.
        conn.execute(text("SET statement_timeout = 0"))
        if int(conn.execute(text("SHOW server_version_num")).scalar_one()) >= 140000:
            # A killed upgrade's session notices within a second, even mid-index, and
            # rolls its revision back instead of running on without anyone to commit.
            conn.execute(text("SET client_connection_check_interval = 1000"))
        conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _PG_LOCK_KEY})
        conn.commit()
        yield conn
    finally:
        with contextlib.suppress(sa_exc.SQLAlchemyError):
            conn.invalidate()
            conn.close()


def prepare(db: Database) -> None:
    """Make ``db`` ready for this version, or refuse it with one line that says what to do.

    SQLite is upgraded here. PostgreSQL must be at head already: a DBA upgrades it with
    ``canteen-county db upgrade`` while the servers are stopped."""
    found = current(db)
    if found == head() and not _fill_pending(db):
        return
    if not _known(found):
        raise _ahead(db, str(found))
    if db.is_sqlite:
        upgrade(db)
        return
    if found == head():
        raise DatabaseError(
            f"the county database at {db.url} is at revision {found} but its summaries were "
            f"never filled (an upgrade stopped): run canteen-county db upgrade --database {db.url}"
        )
    raise DatabaseError(
        f"the county database at {db.url} is at revision {found or 'none'}; this server needs "
        f"{head()}: run canteen-county db upgrade --database {db.url}"
    )


def _fill_pending(db: Database) -> bool:
    from county import rollups

    with db.read() as conn:
        return inspect(conn).has_table("rollups_meta") and rollups.fill_requested(conn)
