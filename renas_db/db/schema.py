"""Schema versions: upgrade, current, and the check every command runs first."""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

import renas_db.migrations as migrations_pkg
from renas_db.db.session import Store
from renas_db.errors import SchemaError


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations_pkg.__file__).parent))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(store: Store) -> str | None:
    with store.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(store: Store, revision: str = "head") -> None:
    cfg = _alembic_config()
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def downgrade(store: Store, revision: str) -> None:
    cfg = _alembic_config()
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def ensure_schema(store: Store) -> None:
    """Refuse to work on a database whose schema is not this version's head.

    Choice: a brand-new, empty SQLite file is upgraded automatically (the one-machine
    default should just work); PostgreSQL is never migrated behind the user's back."""
    with store.translated():
        current = current_revision(store)
        head = head_revision()
        if current == head:
            return
        if current is None:
            with store.engine.connect() as conn:
                tables = inspect(conn).get_table_names()
            if store.is_sqlite and not tables:
                upgrade(store)
                return
            raise SchemaError(f"the database {store.masked_url} has no renas-db schema: "
                              "run `renas-db db upgrade`")
        scripts = ScriptDirectory.from_config(_alembic_config())
        known = {s.revision for s in scripts.walk_revisions()}
        if current not in known:
            raise SchemaError(f"the database schema ({current}) is newer than this renas-db "
                              f"({head}): upgrade renas-db")
        raise SchemaError(f"the database schema is outdated ({current}, need {head}): "
                          "run `renas-db db upgrade`")
