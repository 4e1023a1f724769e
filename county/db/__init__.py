"""The county database: the engine and transactions (engine.py), the tables (schema.py),
and the migrations that make and change them (migrations.py, migrations/)."""

from county.db.engine import (
    Database,
    DatabaseError,
    DatabaseUnavailable,
    PoolLimits,
    database_url,
    safe_url,
)

__all__ = [
    "Database",
    "DatabaseError",
    "DatabaseUnavailable",
    "PoolLimits",
    "database_url",
    "safe_url",
]
