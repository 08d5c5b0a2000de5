"""SQLAlchemy 2.0 models of the seven tables (docs/design.md describes each column).

Timestamps are never taken from the worker's clock: every write uses `db_now()`.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    literal,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class db_now(FunctionElement):
    """The database's clock, optionally shifted by `seconds` (a bound parameter, so
    statements with different offsets share one cache entry but not one value)."""

    type = DateTime()
    inherit_cache = True
    name = "db_now"

    def __init__(self, seconds: float | ColumnElement = 0.0) -> None:
        # a bind parameter (the hot path's prebuilt statements) or a number
        super().__init__(seconds if isinstance(seconds, ColumnElement)
                         else literal(float(seconds)))


@compiles(db_now, "postgresql")
def _now_pg(element: db_now, compiler: Any, **kw: Any) -> str:
    # clock_timestamp(), not now(): the time of the write, not of the transaction's start
    # (a claim that waited for the search lock would write a lease already old). In UTC
    # whatever the session's time zone (PGTZ, ALTER ROLE ... SET timezone, DST), as the
    # columns are timestamp without time zone.
    offset = compiler.process(element.clauses, **kw)
    return f"(timezone('UTC', clock_timestamp()) + {offset} * interval '1 second')"


@compiles(db_now, "sqlite")
def _now_sqlite(element: db_now, compiler: Any, **kw: Any) -> str:
    # SQLite stores DateTime as text; pad milliseconds to microseconds so that string
    # order is time order and SQLAlchemy parses the value back.
    offset = compiler.process(element.clauses, **kw)
    return f"(strftime('%Y-%m-%d %H:%M:%f', 'now', {offset} || ' seconds') || '000')"


class Search(Base):
    __tablename__ = "searches"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    status: Mapped[str] = mapped_column(String(20))
    config: Mapped[dict] = mapped_column(JSON)
    seed: Mapped[int] = mapped_column(Integer)
    checkpoint_root: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    study: Mapped[str | None] = mapped_column(String(200), index=True)


class Worker(Base):
    __tablename__ = "workers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(50))
    started_at: Mapped[datetime] = mapped_column(DateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime)
    state: Mapped[str] = mapped_column(String(20))
    jobs_done: Mapped[int] = mapped_column(Integer, default=0)
    # migration 0005: the searches it cannot serve and why (one line each), else NULL
    unfit: Mapped[str | None] = mapped_column(Text)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("search_id", "kind", "step_index"),
        # state before kind: the claim path filters state IN (queued, running) and kind;
        # with only (search_id, state) PostgreSQL preferred the unique (search_id, kind,
        # ...) index and scanned the whole history of a kind (bench/history_scaling.py)
        Index("ix_jobs_search_id_state_kind", "search_id", "state", "kind"),
        # a retried claim finds the job it already holds by its token (migration 0004)
        Index("ix_jobs_lease_token", "lease_token"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    search_id: Mapped[int] = mapped_column(ForeignKey("searches.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(10))
    state: Mapped[str] = mapped_column(String(10))
    genotype: Mapped[str | None] = mapped_column(Text)
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("individuals.id", use_alter=True))
    victim_id: Mapped[int | None] = mapped_column(
        ForeignKey("individuals.id", use_alter=True))
    sample: Mapped[list | None] = mapped_column(JSON)
    step_index: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    lease_token: Mapped[str | None] = mapped_column(String(64))
    worker_id: Mapped[int | None] = mapped_column(ForeignKey("workers.id"))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime)
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    error: Mapped[str | None] = mapped_column(Text)
    params: Mapped[dict | None] = mapped_column(JSON)  # the retrain recipe
    # migration 0004: a failed job is not claimed before not_before (retry backoff);
    # progress is the examples done as the last heartbeat reported, at progress_at
    not_before: Mapped[datetime | None] = mapped_column(DateTime)
    progress: Mapped[int | None] = mapped_column(BigInteger)
    progress_at: Mapped[datetime | None] = mapped_column(DateTime)


class Individual(Base):
    __tablename__ = "individuals"
    __table_args__ = (
        Index("ix_individuals_search_id_alive", "search_id", "alive"),
        Index("ix_individuals_search_id_arch_hash", "search_id", "arch_hash"),
        Index("ix_individuals_parent_id", "parent_id"),
        Index("ix_individuals_removed_by_job_id", "removed_by_job_id"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    search_id: Mapped[int] = mapped_column(ForeignKey("searches.id", ondelete="CASCADE"))
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), unique=True)
    origin: Mapped[str] = mapped_column(String(10))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("individuals.id"))
    genotype: Mapped[str] = mapped_column(Text)
    arch_hash: Mapped[str] = mapped_column(String(64))
    alive: Mapped[bool] = mapped_column(Boolean)
    fitness: Mapped[float] = mapped_column(Float)
    val_loss: Mapped[float | None] = mapped_column(Float)
    test_accuracy: Mapped[float | None] = mapped_column(Float)
    n_params: Mapped[int | None] = mapped_column(Integer)
    mult_adds: Mapped[int | None] = mapped_column(Integer)
    checkpoint_uri: Mapped[str | None] = mapped_column(Text)
    checkpoint_sha256: Mapped[str | None] = mapped_column(String(64))
    examples_seen: Mapped[int] = mapped_column(Integer, default=0)
    train_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    controller_version: Mapped[int | None] = mapped_column(Integer)
    mutation: Mapped[list | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    died_at: Mapped[datetime | None] = mapped_column(DateTime)
    removed_by_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    # migration 0004: its checkpoint was found missing or damaged; never a parent again
    quarantined: Mapped[bool] = mapped_column(Boolean, server_default=false())


class Episode(Base):
    __tablename__ = "episodes"
    __table_args__ = (Index("ix_episodes_search_id_consumed_in_version",
                            "search_id", "consumed_in_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    search_id: Mapped[int] = mapped_column(ForeignKey("searches.id", ondelete="CASCADE"))
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), unique=True)
    controller_version: Mapped[int] = mapped_column(Integer)
    actions: Mapped[list] = mapped_column(JSON)
    log_prob: Mapped[float] = mapped_column(Float)
    reward: Mapped[float] = mapped_column(Float)
    fitness: Mapped[float] = mapped_column(Float)
    consumed_in_version: Mapped[int | None] = mapped_column(Integer)


class ControllerSnapshot(Base):
    __tablename__ = "controller_snapshots"
    search_id: Mapped[int] = mapped_column(
        ForeignKey("searches.id", ondelete="CASCADE"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    episodes_seen: Mapped[int] = mapped_column(Integer)
    mean_reward: Mapped[float | None] = mapped_column(Float)
    baseline: Mapped[float | None] = mapped_column(Float)
    stats: Mapped[dict | None] = mapped_column(JSON)


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_search_id_id", "search_id", "id"),
                      Index("ix_events_worker_id", "worker_id"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    search_id: Mapped[int | None] = mapped_column(
        ForeignKey("searches.id", ondelete="CASCADE"))
    worker_id: Mapped[int | None] = mapped_column(ForeignKey("workers.id"))
    job_id: Mapped[int | None] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(40))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)
