"""The county's stored agency directory: the agencies and canteens tables.

This module owns reading and replacing the directory county IT imports (migration 0003,
tables ``agencies`` and ``canteens``). ``load_directory`` turns the two tables into a
``protocol.agencies.Directory`` - the object settlement, reconciliation and the
publication to the terminals all work from - inside a transaction the caller opened,
so the agencies and canteens it returns belong together. ``replace_agencies`` and
``replace_canteens`` swap a whole table for a file already checked by
protocol/agencies.py, inside the caller's write transaction: either every row of the
new file is stored or, when the database refuses (an agency a canteen still runs), none.

It never parses CSV (protocol/agencies.py does), never publishes (county/updates.py
signs the directory document), and never reads a clock: callers pass the time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import Connection, Table, delete, insert, select, text

from county import rollups
from county.db.schema import agencies as agencies_table
from county.db.schema import canteens as canteens_table
from county.errors import StoreError
from protocol.agencies import Agency, Canteen, Directory

# pg_advisory_xact_lock key of a directory import ("agency" in ASCII): an agencies import
# reads the canteens it must keep and a canteens import reads the agencies it names, so
# the two never run at once on PostgreSQL. SQLite's write transactions (BEGIN IMMEDIATE)
# are one at a time anyway.
_PG_LOCK_KEY = 0x6167656E6379


class DirectoryRefused(StoreError):
    """A directory import the stored directory cannot take; ``lines`` holds one line per
    row that stands in the way (a canteen whose operator the new agencies lack)."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def load_directory(conn: Connection, version: int = 0, issued_at: int | None = None) -> Directory:
    """The stored directory: every agency and canteen, ordered by code and by canteen id.

    Read inside the caller's transaction (``Database.read()`` or ``.write()``). An empty
    database gives an empty Directory (no agencies, so every unit is UNLISTED and every
    canteen's operator None). ``version`` and ``issued_at`` only label the object, as the
    signed document carries them; the tables keep no version of their own."""
    agencies = [
        Agency(
            code=row.code,
            name=row.name,
            level=row.level,
            parent=row.parent,
            finance_account=row.finance_account,
        )
        for row in conn.execute(select(agencies_table).order_by(agencies_table.c.code))
    ]
    canteens = [
        Canteen(row.canteen, row.name, row.operator)
        for row in conn.execute(select(canteens_table).order_by(canteens_table.c.canteen))
    ]
    return Directory(agencies, canteens, version, issued_at)


def operator_of(conn: Connection, canteen: str) -> str | None:
    """The agency that runs ``canteen``, or None for a canteen the canteens table lacks."""
    found = conn.execute(
        select(canteens_table.c.operator).where(canteens_table.c.canteen == canteen)
    ).scalar_one_or_none()
    return None if found is None else str(found)


def _lock(conn: Connection) -> None:
    """Hold the directory's import lock until the transaction ends (PostgreSQL only)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})


def replace_agencies(conn: Connection, directory: Directory, now_ms: int) -> Directory:
    """Make ``directory``'s agencies the stored ones, in the caller's write transaction.

    Refused (``DirectoryRefused``, nothing changed) when a stored canteen names as its
    operator an agency the new file lacks: one line per such canteen. The stored
    canteens stay as they are. Returns the directory now stored (agencies and canteens)."""
    _lock(conn)
    kept = load_directory(conn).canteens.values()
    missing = [c for c in kept if c.operator not in directory.agencies]
    if missing:
        raise DirectoryRefused(
            [
                f"canteen {c.canteen} ({c.name}) is run by agency {c.operator!r}, which the "
                "new file removes: keep the agency, or import canteens without it first"
                for c in missing
            ]
        )
    conn.execute(delete(agencies_table))
    _insert(conn, agencies_table, [a.as_json() for a in directory.agencies.values()], now_ms)
    return load_directory(conn)


def replace_canteens(conn: Connection, canteens: Sequence[Canteen], now_ms: int) -> Directory:
    """Make ``canteens`` the stored canteens, in the caller's write transaction.

    The caller checked them against a directory it read before (parse_canteens_csv);
    they are checked again here, under the import lock, against the agencies stored now,
    so a concurrent agencies import cannot leave a canteen without its operator.
    Returns the directory now stored."""
    _lock(conn)
    stored = load_directory(conn)
    missing = [c for c in canteens if c.operator not in stored.agencies]
    if missing:
        raise DirectoryRefused(
            [
                f"canteen {c.canteen}: operator {c.operator!r} is not an agency in the "
                "stored directory"
                for c in missing
            ]
        )
    before = {c.canteen: c.operator for c in stored.canteens.values()}
    conn.execute(delete(canteens_table))
    _insert(conn, canteens_table, [c.as_json() for c in canteens], now_ms)
    # Visiting sales are those of another agency than the operator's (county/rollups.py).
    changed = {c.canteen for c in canteens if before.get(c.canteen) != c.operator}
    changed |= set(before) - {c.canteen for c in canteens}
    for canteen in sorted(changed):
        rollups.rebuild_visits(conn, canteen)
    return load_directory(conn)


def _insert(conn: Connection, table: Table, rows: Iterable[dict[str, object]], now_ms: int) -> None:
    """Insert ``rows`` in one executemany (a directory has at most a few thousand rows)."""
    values = [{**row, "imported_ms": now_ms} for row in rows]
    if values:
        conn.execute(insert(table), values)
