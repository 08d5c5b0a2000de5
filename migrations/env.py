"""Alembic environment. `renas-db db upgrade` passes its own connection; plain
`alembic upgrade head` from a checkout reads RENAS_DB_URL or alembic.ini."""
from __future__ import annotations

import os

from alembic import context
from sqlalchemy import MetaData

config = context.config
# Migrations carry frozen copies of their tables; target_metadata is only for autogenerate.
target_metadata: MetaData | None = None
try:
    from renas_db.db.models import Base
    target_metadata = Base.metadata
except ImportError:  # pragma: no cover
    pass


def run_migrations(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite",
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run_migrations(connection)
else:
    from renas_db.db.session import Store
    url = os.environ.get("RENAS_DB_URL") or config.get_main_option("sqlalchemy.url")
    store = Store(url)
    with store.engine.connect() as conn:
        run_migrations(conn)
        conn.commit()
