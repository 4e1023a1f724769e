"""The county database's Alembic migrations: env.py (how they run) and versions/ (each
revision). county/db/migrations.py drives them from code; no alembic.ini is needed."""
