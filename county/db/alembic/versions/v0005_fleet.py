"""the fleet: each terminal's latest reported status, and its recent syncs.

- terminal_status (terminal, reported_ms, software, last_seq, update_set, lists, status):
  what the terminal said about itself in the optional ``status`` object of its newest
  upload that carried one (docs/sync-protocol.md, "Terminal status"); ``lists`` and
  ``status`` are canonical JSON;
- sync_log (id, terminal, at_ms, outcome, accepted, duplicates, acked_seq, last_seq,
  alarm): the uploads the county wrote something for, newest kept, at most 500 per
  terminal (county/fleet.py trims them), for the console's terminal page.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_INT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "terminal_status",
        sa.Column("terminal", sa.Text, primary_key=True),
        sa.Column("reported_ms", _INT, nullable=False),
        sa.Column("software", sa.Text),
        sa.Column("last_seq", _INT),
        sa.Column("update_set", _INT),
        sa.Column("lists", sa.Text, nullable=False, server_default=sa.text("'{}'")),
        sa.Column("status", sa.Text, nullable=False, server_default=sa.text("'{}'")),
        sqlite_strict=True,
        if_not_exists=True,
    )
    op.create_table(
        "sync_log",
        sa.Column("id", _INT, primary_key=True, autoincrement=True),
        sa.Column("terminal", sa.Text, nullable=False),
        sa.Column("at_ms", _INT, nullable=False),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("accepted", _INT, nullable=False, server_default=sa.text("0")),
        sa.Column("duplicates", _INT, nullable=False, server_default=sa.text("0")),
        sa.Column("acked_seq", _INT),
        sa.Column("last_seq", _INT),
        sa.Column("alarm", sa.Text),
        sqlite_strict=True,
        if_not_exists=True,
    )
    op.create_index("sync_log_terminal", "sync_log", ["terminal", "id"], if_not_exists=True)


def downgrade() -> None:
    raise NotImplementedError("the county's migrations go forward only: restore a backup")
