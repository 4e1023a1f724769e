"""report indexes: entries found by service day, canteen, agency and terminal time.

A year of a city is some 40 million entries. Without these, a report for one month,
one canteen or one agency reads them all. Each index answers one kind of question
(docs/county-ops.md, "Migrations", says which):

- entries_canteen_day (canteen, day): one canteen over a range of service days;
- entries_day (day): every canteen over a range of days (a month's settlement);
- entries_unit_day (unit, day): one agency (entries.unit, the diner's agency code)
  over a range of days;
- entries_terminal_at (terminal, at_ms): one terminal's entries by time;
- entries_at_ms (at_ms): any entry by time. On PostgreSQL a BRIN index: entries
  arrive roughly in time order, so a block range summary a few hundred kilobytes in
  size finds a day among 40 million rows; SQLite has no BRIN and gets a B-tree.

Each index is made IF NOT EXISTS, so a database where a DBA built them beforehand
(CREATE INDEX CONCURRENTLY, same names, no write lock) is upgraded in a moment.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

from typing import Any

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# (name, columns, PostgreSQL index method or None for a B-tree)
INDEXES: tuple[tuple[str, tuple[str, ...], str | None], ...] = (
    ("entries_canteen_day", ("canteen", "day"), None),
    ("entries_day", ("day",), None),
    ("entries_unit_day", ("unit", "day"), None),
    ("entries_terminal_at", ("terminal", "at_ms"), None),
    ("entries_at_ms", ("at_ms",), "brin"),
)


def upgrade() -> None:
    for name, columns, using in INDEXES:
        method: dict[str, Any] = {} if using is None else {"postgresql_using": using}
        op.create_index(name, "entries", list(columns), if_not_exists=True, **method)


def downgrade() -> None:
    raise NotImplementedError("the county's migrations go forward only: restore a backup")
