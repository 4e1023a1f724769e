"""agency directory, cadres, and the settlement index.

- agencies (code, name, level, parent, finance_account): the directory county IT
  imports with ``canteen-county agencies import`` (protocol/agencies.py checks it);
- canteens (canteen, name, operator): which agency runs each canteen;
- cadres (cadre, unit, name, account, monthly_allowance_fen): the roster's cadres with
  their bank account and monthly allowance, for reconciliation and allowance reports;
- entries_sales_at: accepted sales by time with canteen, agency, meal and amount, so a
  month's settlement reads the index alone (partial: sales and refusals are apart).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_INT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_ACCEPTED_SALE = sa.text("kind = 'sale' AND verdict = 'accept'")


def upgrade() -> None:
    op.create_table(
        "agencies",
        sa.Column("code", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("level", sa.Text, nullable=False),
        sa.Column("parent", sa.Text),
        sa.Column("finance_account", sa.Text, nullable=False, server_default=sa.text("''")),
        sa.Column("imported_ms", _INT, nullable=False),
        sqlite_strict=True,
        if_not_exists=True,
    )
    op.create_table(
        "canteens",
        sa.Column("canteen", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("operator", sa.Text, nullable=False),
        sa.Column("imported_ms", _INT, nullable=False),
        sqlite_strict=True,
        if_not_exists=True,
    )
    op.create_table(
        "cadres",
        sa.Column("cadre", sa.Text, primary_key=True),
        sa.Column("unit", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("account", sa.Text),
        sa.Column("monthly_allowance_fen", _INT),
        sa.Column("imported_ms", _INT, nullable=False),
        sqlite_strict=True,
        if_not_exists=True,
    )
    op.create_index("cadres_account", "cadres", ["account"], if_not_exists=True)
    op.create_index(
        "entries_sales_at",
        "entries",
        ["at_ms", "canteen", "unit", "meal", "amount_fen"],
        if_not_exists=True,
        sqlite_where=_ACCEPTED_SALE,
        postgresql_where=_ACCEPTED_SALE,
    )


def downgrade() -> None:
    raise NotImplementedError("the county's migrations go forward only: restore a backup")
