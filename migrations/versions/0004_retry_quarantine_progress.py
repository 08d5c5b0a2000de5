"""retry backoff, progress and stall detection, quarantined parents, claim by token

Revision ID: 0004
Revises: 0003
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ADD COLUMN on both back ends (a batch rebuild on SQLite would trip over the
    # views of 0002 that read these tables)
    op.add_column("jobs", sa.Column("not_before", sa.DateTime))
    op.add_column("jobs", sa.Column("progress", sa.BigInteger))
    op.add_column("jobs", sa.Column("progress_at", sa.DateTime))
    op.add_column("individuals", sa.Column("quarantined", sa.Boolean, nullable=False,
                                           server_default=sa.false()))
    op.create_index("ix_jobs_lease_token", "jobs", ["lease_token"])


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    views = _history_views() if sqlite else None
    if views:
        for name in views:
            op.execute(f"DROP VIEW {name}")
    op.drop_index("ix_jobs_lease_token", "jobs")
    with op.batch_alter_table("individuals") as batch:
        batch.drop_column("quarantined")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("progress_at")
        batch.drop_column("progress")
        batch.drop_column("not_before")
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
