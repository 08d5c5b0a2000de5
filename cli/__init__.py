"""The renas-db command line (installed as renas_db.cli)."""
