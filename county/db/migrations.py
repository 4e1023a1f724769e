"""Bringing a county database to this version's schema.

Interim: creates the tables of county/db/schema.py where missing. The Alembic
migrations replace this (issue 14)."""

from __future__ import annotations

from county.db.engine import Database
from county.db.schema import metadata


def prepare(db: Database) -> None:
    """Make the database ready for this version: the tables exist, as schema.py says."""
    with db.write() as conn:
        metadata.create_all(conn, checkfirst=True)
