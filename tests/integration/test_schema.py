from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from renas_db.db.models import Base
from renas_db.db.schema import current_revision, downgrade, ensure_schema, head_revision, upgrade
from renas_db.db.session import Store
from renas_db.errors import SchemaError


def _diff(store: Store) -> list:
    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(ctx, Base.metadata)


def test_migrations_produce_exactly_the_models(store):
    assert current_revision(store) == head_revision()
    assert _diff(store) == []


def test_downgrade_upgrade_round_trip(store):
    downgrade(store, "base")
    with store.engine.connect() as conn:
        assert [t for t in sa.inspect(conn).get_table_names() if t != "alembic_version"] == []
    upgrade(store)
    assert _diff(store) == []
    ensure_schema(store)


def test_outdated_and_foreign_schemas_are_refused(store):
    downgrade(store, "base")
    if store.is_sqlite:
        # an empty SQLite file with only the version table is not "brand new": refuse
        with store.engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE other (x INTEGER)")
    with pytest.raises(SchemaError, match="renas-db db upgrade"):
        ensure_schema(store)
    upgrade(store)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(SchemaError, match="newer than this renas-db"):
        ensure_schema(store)


def test_brand_new_sqlite_file_is_upgraded_by_itself(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'new.sqlite'}")
    ensure_schema(store)
    assert current_revision(store) == head_revision()
