"""workers.unfit: the searches a worker cannot serve, and why

Revision ID: 0005
Revises: 0004
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a plain ADD COLUMN on both back ends (no batch rebuild: the views of 0002 read
    # the workers table)
    op.add_column("workers", sa.Column("unfit", sa.Text))


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    views = _history_views() if sqlite else None
    if views:
        for name in views:
            op.execute(f"DROP VIEW {name}")
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("unfit")
    if views:
        for name, body in views.items():
            op.execute(f"CREATE VIEW {name} AS {body}")


def _history_views() -> dict[str, str]:
    import importlib.util
    from pathlib import Path
    path = Path(__file__).with_name("0002_history_views.py")
    spec = importlib.util.spec_from_file_location("renas_migration_0002", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module._sql("sqlite")
