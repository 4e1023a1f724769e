"""baseline: every county table and index as the county had them before migrations.

A new database gets them all. A SQLite county made by an earlier version (which made
its own tables with CREATE TABLE IF NOT EXISTS and patched them at each start) is
adopted: a table already there keeps its rows and gets the columns it lacks, the
first version's ``revocations`` table moves into ``conflict_revocations``, and only
then is the database stamped with this revision.

Frozen: these are this revision's own copies of the tables, not county/db/schema.py,
which may move on; a later change is a later revision.

Revision ID: 0001
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Int = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Serial = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Bytes = sa.LargeBinary()
STRICT: dict[str, Any] = {"sqlite_strict": True}
NO_ROWID: dict[str, Any] = {"sqlite_strict": True, "sqlite_with_rowid": False}


def _tables() -> list[sa.Table]:
    """The county's tables as of this revision (a fresh MetaData on every call)."""
    m = sa.MetaData()
    c = sa.Column
    return [
        sa.Table(
            "terminals",
            m,
            c("terminal_id", sa.Text, primary_key=True),
            c("canteen", sa.Text, nullable=False),
            c("code_hash", Bytes, unique=True),
            c("code_expires_ms", Int),
            c("cert_sha256", sa.Text, unique=True),
            c("ledger_key", Bytes),
            c("registered_ms", Int, nullable=False),
            c("provisioned_ms", Int),
            c("last_seen_ms", Int),
            c("acked_seq", Int, nullable=False, server_default=sa.text("0")),
            c("last_hash", Bytes, nullable=False),
            **STRICT,
        ),
        sa.Table(
            "entries",
            m,
            c("terminal", sa.Text, nullable=False),
            c("canteen", sa.Text, nullable=False),
            c("seq", Int, nullable=False),
            c("entry_id", sa.Text, nullable=False),
            c("at_ms", Int, nullable=False),
            c("kind", sa.Text, nullable=False),
            c("verdict", sa.Text),
            c("reason", sa.Text),
            c("method", sa.Text),
            c("cadre", sa.Text),
            c("credential", sa.Text),
            c("ctr", Int),
            c("unit", sa.Text),
            c("day", sa.Text),
            c("meal", sa.Text),
            c("amount_fen", Int, nullable=False),
            c("ref_seq", Int),
            c("detail", sa.Text, nullable=False),
            c("prev_hash", Bytes, nullable=False),
            c("hash", Bytes, nullable=False),
            c("received_ms", Int, nullable=False),
            sa.PrimaryKeyConstraint("terminal", "seq"),
            **NO_ROWID,
        ),
        sa.Table(
            "checkpoints",
            m,
            c("terminal", sa.Text, nullable=False),
            c("seq", Int, nullable=False),
            c("hash", Bytes, nullable=False),
            c("at_ms", Int, nullable=False),
            c("signature", Bytes, nullable=False),
            sa.PrimaryKeyConstraint("terminal", "seq"),
            **NO_ROWID,
        ),
        sa.Table(
            "held_batches",
            m,
            c("terminal", sa.Text, nullable=False),
            c("first_seq", Int, nullable=False),
            c("last_seq", Int, nullable=False),
            c("body", sa.Text, nullable=False),
            c("received_ms", Int, nullable=False),
            sa.PrimaryKeyConstraint("terminal", "first_seq", "last_seq"),
            **STRICT,
        ),
        sa.Table(
            "alarms",
            m,
            c("id", Serial, primary_key=True, autoincrement=True),
            c("terminal", sa.Text, nullable=False),
            c("kind", sa.Text, nullable=False),
            c("seq", Int, nullable=False),
            c("theirs", Bytes),
            c("ours", Bytes),
            c("problem", sa.Text, nullable=False),
            c("first_ms", Int, nullable=False),
            c("last_ms", Int, nullable=False),
            c("times", Int, nullable=False, server_default=sa.text("1")),
            sa.UniqueConstraint("terminal", "kind", "seq", "theirs"),
            **STRICT,
        ),
        sa.Table(
            "conflicts",
            m,
            c("id", Serial, primary_key=True, autoincrement=True),
            c("kind", sa.Text, nullable=False),
            c("credential", sa.Text),
            c("cadre", sa.Text),
            c("unit", sa.Text),
            c("day", sa.Text),
            c("meal", sa.Text),
            c("first_terminal", sa.Text, nullable=False),
            c("first_seq", Int, nullable=False),
            c("second_terminal", sa.Text, nullable=False),
            c("second_seq", Int, nullable=False),
            c("found_ms", Int, nullable=False),
            c("first_canteen", sa.Text),
            c("second_canteen", sa.Text),
            c("first_method", sa.Text),
            c("second_method", sa.Text),
            c("first_hash", Bytes),
            c("second_hash", Bytes),
            c("first_at_ms", Int),
            c("second_at_ms", Int),
            c("name", sa.Text),
            c("reason", sa.Text),
            c("withdrawn_ms", Int),
            c("withdrawn_reason", sa.Text),
            sa.UniqueConstraint("kind", "second_terminal", "second_seq"),
            **STRICT,
        ),
        sa.Table(
            "issuer_keys",
            m,
            c("public_key", Bytes, nullable=False),
            c("iss", sa.Text, nullable=False),
            c("kid", Bytes, nullable=False),
            c("not_before", Int),
            c("not_after", Int),
            c("added_ms", Int, nullable=False),
            sa.PrimaryKeyConstraint("public_key", "iss", "kid"),
            **STRICT,
        ),
        sa.Table(
            "evidence",
            m,
            c("terminal", sa.Text, nullable=False),
            c("seq", Int, nullable=False),
            c("canteen", sa.Text, nullable=False),
            c("method", sa.Text, nullable=False),
            c("cadre", sa.Text, nullable=False),
            c("name", sa.Text),
            c("credential", sa.Text, nullable=False),
            c("ctr", Int),
            c("day", sa.Text),
            c("meal", sa.Text),
            c("t", Int, nullable=False),
            c("at_ms", Int, nullable=False),
            c("hash", Bytes, nullable=False),
            c("received_ms", Int, nullable=False),
            sa.PrimaryKeyConstraint("terminal", "seq"),
            **NO_ROWID,
        ),
        sa.Table(
            "conflict_revocations",
            m,
            c("conflict_id", Int, nullable=False),
            c("credential", sa.Text, nullable=False),
            c("entry", sa.Text, nullable=False),
            c("created_ms", Int, nullable=False),
            sa.PrimaryKeyConstraint("conflict_id", "credential"),
            **STRICT,
        ),
        sa.Table(
            "counters",
            m,
            c("name", sa.Text, primary_key=True),
            c("value", Int, nullable=False),
            **STRICT,
        ),
        sa.Table(
            "clock_offsets",
            m,
            c("terminal", sa.Text, primary_key=True),
            c("scanned_seq", Int, nullable=False),
            c("seq", Int),
            c("ahead_ms", Int),
            c("server_ms", Int),
            c("noted_ms", Int, nullable=False),
            **STRICT,
        ),
    ]


_ACCEPTED_SALE = "kind = 'sale' AND verdict = 'accept'"
_REVERSAL = "kind = 'reversal'"
_HAS_CTR = "ctr IS NOT NULL"
# (name, table, columns, partial-index condition or None)
INDEXES: tuple[tuple[str, str, tuple[str, ...], str | None], ...] = (
    ("entries_presentation", "entries", ("credential", "ctr"), _ACCEPTED_SALE),
    ("entries_served", "entries", ("cadre", "day", "meal"), _ACCEPTED_SALE),
    ("entries_reversals", "entries", ("terminal", "ref_seq"), _REVERSAL),
    ("issuer_keys_kid", "issuer_keys", ("kid",), None),
    ("evidence_presentation", "evidence", ("credential", "ctr"), _HAS_CTR),
    ("evidence_served", "evidence", ("cadre", "day", "meal"), None),
)

# A NOT NULL column an earlier version's table lacks gets its value from this expression
# over the row (SQLite adds a column only with a default, so it is added with 0 first).
# evidence.t came after the first evidence table: a code's signed time, for a card sale
# the entry's own time; the entry's time is the one value every old row has.
_BACKFILL = {("evidence", "t"): "at_ms / 1000"}


def upgrade() -> None:
    bind = op.get_bind()
    have = set(sa.inspect(bind).get_table_names())
    for table in _tables():
        if table.name in have:
            _add_missing_columns(bind, table)
        else:
            table.create(bind)
    for name, table_name, columns, where in INDEXES:
        condition: dict[str, Any] = {}
        if where is not None:
            condition = {"sqlite_where": sa.text(where), "postgresql_where": sa.text(where)}
        op.create_index(name, table_name, list(columns), if_not_exists=True, **condition)
    if "revocations" in have:
        _move_first_revocations(bind)


def _add_missing_columns(bind: sa.Connection, table: sa.Table) -> None:
    present = {col["name"] for col in sa.inspect(bind).get_columns(table.name)}
    for column in table.columns:
        if column.name in present:
            continue
        if column.primary_key or column.unique:
            raise RuntimeError(
                f"table {table.name} of this database has no column {column.name}, which is "
                "a key: this is not a county database an earlier version made"
            )
        backfill = _BACKFILL.get((table.name, column.name))
        if column.nullable or column.server_default is not None:
            op.add_column(
                table.name,
                sa.Column(
                    column.name,
                    column.type,
                    nullable=column.nullable,
                    server_default=column.server_default,
                ),
            )
        elif backfill is not None:
            op.add_column(
                table.name,
                sa.Column(column.name, column.type, nullable=False, server_default=sa.text("0")),
            )
            op.execute(f"UPDATE {table.name} SET {column.name} = {backfill}")
        else:
            raise RuntimeError(
                f"table {table.name} of this database has no column {column.name} and "
                "nothing to fill it from: this is not a county database an earlier version made"
            )


def _move_first_revocations(bind: sa.Connection) -> None:
    """The first version kept one revocation per credential in ``revocations``; each now
    belongs to the conflict that made it, in ``conflict_revocations``."""
    columns = {col["name"] for col in sa.inspect(bind).get_columns("revocations")}
    if not {"conflict_id", "credential", "entry", "created_ms"} <= columns:
        raise RuntimeError(
            "this database has a table 'revocations' that is not the county's first "
            "version's: move or drop it, then upgrade again"
        )
    op.execute(
        "INSERT INTO conflict_revocations (conflict_id, credential, entry, created_ms)"
        " SELECT conflict_id, credential, entry, created_ms FROM revocations"
        # WHERE true: SQLite would read ON CONFLICT as a join's ON without it.
        " WHERE true ON CONFLICT DO NOTHING"
    )
    op.drop_table("revocations")


def downgrade() -> None:
    raise NotImplementedError("the county's migrations go forward only: restore a backup")
