"""retrain recipes on jobs and studies on searches

Revision ID: 0003
Revises: 0002
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("params", sa.JSON))
    with op.batch_alter_table("searches") as batch:
        batch.add_column(sa.Column("study", sa.String(200)))
    op.create_index("ix_searches_study", "searches", ["study"])


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    # SQLite drops a column by rebuilding the table, which views that read it forbid:
    # take 0002's views down and put them back around the rebuild.
    views = _history_views() if sqlite else None
    if views:
        for name in views:
            op.execute(f"DROP VIEW {name}")
    op.drop_index("ix_searches_study", "searches")
    with op.batch_alter_table("searches") as batch:
        batch.drop_column("study")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("params")
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
