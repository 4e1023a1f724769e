"""the console's users, sessions and audit log, and retired terminals.

- users (name, role, password_hash, created_ms, disabled_ms): who may log in to the
  console at /console, as admin, finance or inspector (docs/console.md);
- console_sessions (token_hash, user_name, created_ms, expires_ms, csrf): a login, kept
  only as a hash of its cookie, until it expires or the user logs out;
- audit_log (id, at_ms, user_name, action, target, detail): every action taken through
  the console or the county's commands that changes something, for the admin to read;
- terminals.retired_ms, retired_reason, replaced_by: a terminal id taken out of service
  (its certificate revoked, no longer reported as silent) and the id that replaced it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_INT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("created_ms", _INT, nullable=False),
        sa.Column("disabled_ms", _INT),
        sqlite_strict=True,
        if_not_exists=True,
    )
    op.create_table(
        "console_sessions",
        sa.Column("token_hash", sa.LargeBinary, primary_key=True),
        sa.Column("user_name", sa.Text, nullable=False),
        sa.Column("created_ms", _INT, nullable=False),
        sa.Column("expires_ms", _INT, nullable=False),
        sa.Column("csrf", sa.Text, nullable=False),
        sqlite_strict=True,
        if_not_exists=True,
    )
    op.create_index("console_sessions_user", "console_sessions", ["user_name"], if_not_exists=True)
    op.create_table(
        "audit_log",
        sa.Column("id", _INT, primary_key=True, autoincrement=True),
        sa.Column("at_ms", _INT, nullable=False),
        sa.Column("user_name", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("target", sa.Text, nullable=False, server_default=sa.text("''")),
        sa.Column("detail", sa.Text, nullable=False, server_default=sa.text("''")),
        sqlite_strict=True,
        if_not_exists=True,
    )
    op.create_index("audit_log_at", "audit_log", ["at_ms"], if_not_exists=True)
    # Plain ADD COLUMN on both backends; the revision runs in one transaction, so an
    # interrupted upgrade leaves none of them behind and runs again whole.
    op.add_column("terminals", sa.Column("retired_ms", _INT))
    op.add_column("terminals", sa.Column("retired_reason", sa.Text))
    op.add_column("terminals", sa.Column("replaced_by", sa.Text))


def downgrade() -> None:
    raise NotImplementedError("the county's migrations go forward only: restore a backup")
