"""the review of alarms and conflicts, and the anomalies finder's index.

- conflicts.withdrawn_by, confirmed_ms, confirmed_by, confirmed_reason: who withdrew a
  conflict (withdrawn_ms and withdrawn_reason were there), or who confirmed it, when and
  why (county/review.py);
- alarms.confirmed_ms, confirmed_by, confirmed_reason, withdrawn_ms, withdrawn_by,
  withdrawn_reason: the same review of an alarm against a terminal;
- entries_sales_cadre: accepted sales by time with their cadre and canteen, so the
  inspection's multi-canteen days read the index alone (partial, as entries_sales_at).

Old rows stay valid: every new column is nullable, NULL meaning "not reviewed".

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_INT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_ACCEPTED_SALE = sa.text("kind = 'sale' AND verdict = 'accept'")


def upgrade() -> None:
    op.add_column("conflicts", sa.Column("withdrawn_by", sa.Text))
    op.add_column("conflicts", sa.Column("confirmed_ms", _INT))
    op.add_column("conflicts", sa.Column("confirmed_by", sa.Text))
    op.add_column("conflicts", sa.Column("confirmed_reason", sa.Text))
    op.add_column("alarms", sa.Column("confirmed_ms", _INT))
    op.add_column("alarms", sa.Column("confirmed_by", sa.Text))
    op.add_column("alarms", sa.Column("confirmed_reason", sa.Text))
    op.add_column("alarms", sa.Column("withdrawn_ms", _INT))
    op.add_column("alarms", sa.Column("withdrawn_by", sa.Text))
    op.add_column("alarms", sa.Column("withdrawn_reason", sa.Text))
    op.create_index(
        "entries_sales_cadre",
        "entries",
        ["at_ms", "cadre", "canteen"],
        if_not_exists=True,
        sqlite_where=_ACCEPTED_SALE,
        postgresql_where=_ACCEPTED_SALE,
    )


def downgrade() -> None:
    raise NotImplementedError("the county's migrations go forward only: restore a backup")
