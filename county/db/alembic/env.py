"""How Alembic runs the county's migrations: on the connection county/db/migrations.py
hands over (``config.attributes["connection"]``), each revision in its own transaction.

It never makes a connection of its own and never reads alembic.ini or a logging
configuration: the county's command or server owns both. Offline (``--sql``) mode is
not offered: a migration of a live county is run against the database itself.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

config = context.config
connection = config.attributes.get("connection")
if context.is_offline_mode() or not isinstance(connection, Connection):
    raise RuntimeError(
        "the county's migrations run from canteen-county db upgrade, on a database connection"
    )

context.configure(
    connection=connection,
    # One transaction per revision: a run stopped half-way keeps every revision it
    # finished and none of the one it was in, so running it again goes on from there.
    transaction_per_migration=True,
    # SQLite's DDL is transactional too (the county's engine issues BEGIN itself), so
    # both backends roll a half-done revision back.
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations()
