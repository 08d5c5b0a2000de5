"""Alembic environment of renas-db (installed as renas_db.migrations)."""
