"""the summaries the intake keeps for the console's year views (county/rollups.py).

- visits (terminal, seq, canteen, unit, cadre, at_ms, amount_fen, near_ms): accepted
  sales of a cadre whose agency is not the canteen's operator, each with how far the
  nearest other visit of its canteen and agency is;
- sales_slots (slot, canteen, meals, fen): accepted sales not reversed, per quarter hour
  (UTC ms // 900,000) and canteen;
- sales_days (day_no, canteen, unit, meals, fen): the same per local day, canteen and
  agency ('' for none);
- multi_days (cadre, day_no): cadres served at two canteens or more on one local day;
- rollups_meta (name, value): the zone of sales_days and multi_days, and the rest.

Filled from the entries already stored right after the revisions (1 min 40 s for 5.1
million entries on PostgreSQL; docs/inspection.md "Speed"), then kept by the intake.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_INT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "visits",
        sa.Column("terminal", sa.Text, nullable=False),
        sa.Column("seq", _INT, nullable=False),
        sa.Column("canteen", sa.Text, nullable=False),
        sa.Column("unit", sa.Text, nullable=False),
        sa.Column("cadre", sa.Text, nullable=False),
        sa.Column("at_ms", _INT, nullable=False),
        sa.Column("amount_fen", _INT, nullable=False),
        sa.Column("near_ms", _INT),
        sa.PrimaryKeyConstraint("terminal", "seq"),
        sqlite_strict=True,
        sqlite_with_rowid=False,
        if_not_exists=True,
    )
    op.create_index("visits_at", "visits", ["at_ms"], if_not_exists=True)
    op.create_index("visits_run", "visits", ["canteen", "unit", "at_ms"], if_not_exists=True)
    op.create_table(
        "sales_slots",
        sa.Column("slot", _INT, nullable=False),
        sa.Column("canteen", sa.Text, nullable=False),
        sa.Column("meals", _INT, nullable=False),
        sa.Column("fen", _INT, nullable=False),
        sa.PrimaryKeyConstraint("slot", "canteen"),
        sqlite_strict=True,
        sqlite_with_rowid=False,
        if_not_exists=True,
    )
    op.create_table(
        "sales_days",
        sa.Column("day_no", _INT, nullable=False),
        sa.Column("canteen", sa.Text, nullable=False),
        sa.Column("unit", sa.Text, nullable=False),
        sa.Column("meals", _INT, nullable=False),
        sa.Column("fen", _INT, nullable=False),
        sa.PrimaryKeyConstraint("day_no", "canteen", "unit"),
        sqlite_strict=True,
        sqlite_with_rowid=False,
        if_not_exists=True,
    )
    op.create_table(
        "multi_days",
        sa.Column("cadre", sa.Text, nullable=False),
        sa.Column("day_no", _INT, nullable=False),
        sa.PrimaryKeyConstraint("day_no", "cadre"),
        sqlite_strict=True,
        sqlite_with_rowid=False,
        if_not_exists=True,
    )
    op.create_table(
        "rollups_meta",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sqlite_strict=True,
        if_not_exists=True,
    )
    # Filled from the entries after the revisions, by this version's code
    # (county/db/migrations.py runs county/rollups.py's rebuild while this row is there):
    # a revision stays frozen, the rules of the summaries live in one place.
    op.execute(
        "INSERT INTO rollups_meta (name, value) SELECT 'fill', '0007' "
        "WHERE NOT EXISTS (SELECT 1 FROM rollups_meta WHERE name = 'fill')"
    )


def downgrade() -> None:
    raise NotImplementedError("the county's migrations go forward only: restore a backup")
