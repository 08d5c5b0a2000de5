"""initial schema: the seven tables of renas-db (docs/design.md)

Revision ID: 0001
Revises:
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    op.create_table(
        "searches",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("seed", sa.Integer, nullable=False),
        sa.Column("checkpoint_root", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime),
        sa.PrimaryKeyConstraint("id", name="pk_searches"),
        sa.UniqueConstraint("name", name="uq_searches_name"),
    )
    op.create_table(
        "workers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("device", sa.String(50), nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("heartbeat_at", sa.DateTime, nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("jobs_done", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_workers"),
    )
    # jobs <-> individuals reference each other: on PostgreSQL the jobs -> individuals
    # keys are added after both tables exist; SQLite accepts them inline.
    job_fks = [
        sa.ForeignKeyConstraint(["parent_id"], ["individuals.id"],
                                name="fk_jobs_parent_id_individuals"),
        sa.ForeignKeyConstraint(["victim_id"], ["individuals.id"],
                                name="fk_jobs_victim_id_individuals"),
    ] if sqlite else []
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("search_id", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("genotype", sa.Text),
        sa.Column("parent_id", sa.Integer),
        sa.Column("victim_id", sa.Integer),
        sa.Column("sample", sa.JSON),
        sa.Column("step_index", sa.Integer, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("lease_token", sa.String(64)),
        sa.Column("worker_id", sa.Integer),
        sa.Column("heartbeat_at", sa.DateTime),
        sa.Column("claimed_at", sa.DateTime),
        sa.Column("finished_at", sa.DateTime),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("error", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
        sa.ForeignKeyConstraint(["search_id"], ["searches.id"], ondelete="CASCADE",
                                name="fk_jobs_search_id_searches"),
        sa.ForeignKeyConstraint(["worker_id"], ["workers.id"],
                                name="fk_jobs_worker_id_workers"),
        sa.UniqueConstraint("search_id", "kind", "step_index",
                            name="uq_jobs_search_id_kind_step_index"),
        *job_fks,
    )
    op.create_index("ix_jobs_search_id_state_kind", "jobs", ["search_id", "state", "kind"])
    op.create_table(
        "individuals",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("search_id", sa.Integer, nullable=False),
        sa.Column("job_id", sa.Integer, nullable=False),
        sa.Column("origin", sa.String(10), nullable=False),
        sa.Column("parent_id", sa.Integer),
        sa.Column("genotype", sa.Text, nullable=False),
        sa.Column("arch_hash", sa.String(64), nullable=False),
        sa.Column("alive", sa.Boolean, nullable=False),
        sa.Column("fitness", sa.Float, nullable=False),
        sa.Column("val_loss", sa.Float),
        sa.Column("test_accuracy", sa.Float),
        sa.Column("n_params", sa.Integer),
        sa.Column("mult_adds", sa.Integer),
        sa.Column("checkpoint_uri", sa.Text),
        sa.Column("checkpoint_sha256", sa.String(64)),
        sa.Column("examples_seen", sa.Integer, nullable=False),
        sa.Column("train_seconds", sa.Float, nullable=False),
        sa.Column("controller_version", sa.Integer),
        sa.Column("mutation", sa.JSON),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("died_at", sa.DateTime),
        sa.Column("removed_by_job_id", sa.Integer),
        sa.PrimaryKeyConstraint("id", name="pk_individuals"),
        sa.ForeignKeyConstraint(["search_id"], ["searches.id"], ondelete="CASCADE",
                                name="fk_individuals_search_id_searches"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_individuals_job_id_jobs"),
        sa.ForeignKeyConstraint(["parent_id"], ["individuals.id"],
                                name="fk_individuals_parent_id_individuals"),
        sa.ForeignKeyConstraint(["removed_by_job_id"], ["jobs.id"],
                                name="fk_individuals_removed_by_job_id_jobs"),
        sa.UniqueConstraint("job_id", name="uq_individuals_job_id"),
    )
    op.create_index("ix_individuals_search_id_alive", "individuals", ["search_id", "alive"])
    op.create_index("ix_individuals_search_id_arch_hash", "individuals",
                    ["search_id", "arch_hash"])
    op.create_index("ix_individuals_parent_id", "individuals", ["parent_id"])
    if not sqlite:
        op.create_foreign_key("fk_jobs_parent_id_individuals", "jobs", "individuals",
                              ["parent_id"], ["id"])
        op.create_foreign_key("fk_jobs_victim_id_individuals", "jobs", "individuals",
                              ["victim_id"], ["id"])
    op.create_table(
        "episodes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("search_id", sa.Integer, nullable=False),
        sa.Column("job_id", sa.Integer, nullable=False),
        sa.Column("controller_version", sa.Integer, nullable=False),
        sa.Column("actions", sa.JSON, nullable=False),
        sa.Column("log_prob", sa.Float, nullable=False),
        sa.Column("reward", sa.Float, nullable=False),
        sa.Column("fitness", sa.Float, nullable=False),
        sa.Column("consumed_in_version", sa.Integer),
        sa.PrimaryKeyConstraint("id", name="pk_episodes"),
        sa.ForeignKeyConstraint(["search_id"], ["searches.id"], ondelete="CASCADE",
                                name="fk_episodes_search_id_searches"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_episodes_job_id_jobs"),
        sa.UniqueConstraint("job_id", name="uq_episodes_job_id"),
    )
    op.create_index("ix_episodes_search_id_consumed_in_version", "episodes",
                    ["search_id", "consumed_in_version"])
    op.create_table(
        "controller_snapshots",
        sa.Column("search_id", sa.Integer, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("state", sa.LargeBinary),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("episodes_seen", sa.Integer, nullable=False),
        sa.Column("mean_reward", sa.Float),
        sa.Column("baseline", sa.Float),
        sa.Column("stats", sa.JSON),
        sa.PrimaryKeyConstraint("search_id", "version", name="pk_controller_snapshots"),
        sa.ForeignKeyConstraint(["search_id"], ["searches.id"], ondelete="CASCADE",
                                name="fk_controller_snapshots_search_id_searches"),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("search_id", sa.Integer),
        sa.Column("worker_id", sa.Integer),
        sa.Column("job_id", sa.Integer),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
        sa.ForeignKeyConstraint(["search_id"], ["searches.id"], ondelete="CASCADE",
                                name="fk_events_search_id_searches"),
        sa.ForeignKeyConstraint(["worker_id"], ["workers.id"],
                                name="fk_events_worker_id_workers"),
    )
    op.create_index("ix_events_search_id_id", "events", ["search_id", "id"])


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint("fk_jobs_parent_id_individuals", "jobs", type_="foreignkey")
        op.drop_constraint("fk_jobs_victim_id_individuals", "jobs", type_="foreignkey")
    for table in ("events", "controller_snapshots", "episodes", "individuals", "jobs",
                  "workers", "searches"):
        op.drop_table(table)
