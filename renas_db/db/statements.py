"""The hot path's statements: claim and commit, built once as Core statements.

Claim and commit run once per child on every worker. On PostgreSQL each statement is
prepared once per connection (renas_db/db/prepared.py): a step's claim is 3 round trips
and a commit 2, plus their COMMITs, and no ORM objects are made. renas_db/db/protocol.py
runs them.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import (
    Boolean,
    Float,
    Integer,
    Table,
    bindparam,
    case,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)

from renas_db.db.models import Base, Episode, Event, Individual, Job, Search, Worker, db_now
from renas_db.db.prepared import Statements
from renas_db.jobs import ACTIVE_STATUSES, PENDING_STATES, JobKind, JobState, Origin, SearchStatus

ADVISORY_NAMESPACE = 7_457_001  # pg_advisory_xact_lock(namespace, search id)



def _table(model: type[Base]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


jobs_t, individuals_t, searches_t = _table(Job), _table(Individual), _table(Search)
workers_t, events_t, episodes_t = _table(Worker), _table(Event), _table(Episode)
parents_t = individuals_t.alias("parent")
search_id = bindparam("sid", type_=Integer)
job_id = bindparam("jid", type_=Integer)
lease_token = bindparam("tok", type_=jobs_t.c.lease_token.type)
# a job handed out by a claim, and the parent it mutates (columns 9-12)
CLAIMABLE = (jobs_t.c.id, jobs_t.c.kind, jobs_t.c.step_index, jobs_t.c.attempt,
             jobs_t.c.genotype, jobs_t.c.victim_id, jobs_t.c.sample, jobs_t.c.params,
             jobs_t.c.parent_id, parents_t.c.genotype, parents_t.c.fitness,
             parents_t.c.checkpoint_uri, parents_t.c.checkpoint_sha256)
PARENT_COLUMNS = slice(9, 13)


def _of_search(column: Any, *where: Any) -> Any:
    return select(column).where(jobs_t.c.search_id == search_id, *where).scalar_subquery()


def _stale() -> Any:
    """A running job to sweep: its lease expired (heartbeat older than `age` seconds ago,
    a negative offset) or its progress stood still since `stall` (docs/design.md 3.5)."""
    return or_(jobs_t.c.heartbeat_at < db_now(bindparam("age", type_=Float)),
               func.coalesce(jobs_t.c.progress_at, jobs_t.c.claimed_at)
               < db_now(bindparam("stall", type_=Float)))


def _expired() -> Any:
    return (jobs_t.c.search_id == search_id, jobs_t.c.state == JobState.RUNNING, _stale())


# a queued job whose retry backoff is over
_READY = or_(jobs_t.c.not_before.is_(None), jobs_t.c.not_before <= db_now())


HOT = Statements("renas", {
    # claims are serialised per search (PostgreSQL; SQLite's BEGIN IMMEDIATE does it there)
    "lock": select(func.pg_advisory_xact_lock(ADVISORY_NAMESPACE, search_id)),
    # its shared form: waits for the claims in flight (the checkpoint collector's reads)
    "lock_shared": select(func.pg_advisory_xact_lock_shared(ADVISORY_NAMESPACE, search_id)),
    # Everything a claim decides on, in one statement. Each subquery stays on the
    # (search_id, state, kind) or (search_id, kind, step_index) index: none grows with
    # the history.
    "state": select(
        searches_t.c.status, searches_t.c.name, searches_t.c.config,
        searches_t.c.checkpoint_root,
        exists().where(*_expired()).label("expired"),
        _of_search(func.min(jobs_t.c.id), jobs_t.c.state == JobState.QUEUED, _READY)
        .label("queued"),
        _of_search(func.min(jobs_t.c.id), jobs_t.c.state == JobState.QUEUED, _READY,
                   jobs_t.c.kind == JobKind.RETRAIN).label("queued_retrain"),
        # the job a retried claim already holds under its client-made token (fault 8)
        _of_search(func.min(jobs_t.c.id), jobs_t.c.state == JobState.RUNNING,
                   jobs_t.c.lease_token == lease_token).label("mine"),
        _of_search(func.count(), jobs_t.c.kind == JobKind.INIT,
                   jobs_t.c.state.in_(PENDING_STATES)).label("init_pending"),
        _of_search(func.max(jobs_t.c.step_index), jobs_t.c.kind == JobKind.STEP)
        .label("last_step"),
    ).where(searches_t.c.id == search_id),
    "expired": select(jobs_t.c.id, jobs_t.c.kind, jobs_t.c.step_index, jobs_t.c.attempt,
                      jobs_t.c.max_attempts, jobs_t.c.worker_id, jobs_t.c.lease_token,
                      (jobs_t.c.heartbeat_at < db_now(bindparam("age", type_=Float)))
                      .label("lease_expired"))
    .where(*_expired()).order_by(jobs_t.c.id)
    # a row locked by a committer (frozen, or just committing) is left to a later sweep:
    # never wait on it (PostgreSQL; SQLite has no row locks and ignores the clause)
    .with_for_update(skip_locked=True),
    "job": select(*CLAIMABLE).select_from(
        jobs_t.outerjoin(parents_t, parents_t.c.id == jobs_t.c.parent_id))
    .where(jobs_t.c.id == job_id),
    "take": update(jobs_t).where(jobs_t.c.id == job_id).values(
        state=JobState.RUNNING, lease_token=lease_token,
        worker_id=bindparam("wid", type_=Integer), attempt=jobs_t.c.attempt + 1,
        heartbeat_at=db_now(), claimed_at=db_now(), not_before=None, progress=None,
        progress_at=None),
    # the tournament's candidates: alive, not reserved as a pending step's victim
    "unreserved": select(individuals_t.c.id, individuals_t.c.fitness,
                         individuals_t.c.quarantined).where(
        individuals_t.c.search_id == search_id, individuals_t.c.alive.is_(True),
        individuals_t.c.origin != Origin.RETRAIN,
        individuals_t.c.id.not_in(select(jobs_t.c.victim_id).where(
            jobs_t.c.search_id == search_id, jobs_t.c.kind == JobKind.STEP,
            jobs_t.c.state.in_(PENDING_STATES), jobs_t.c.victim_id.is_not(None)))),
    "insert_step": (insert(jobs_t).values(heartbeat_at=db_now(), claimed_at=db_now(),
                                          created_at=db_now()),
                    ("search_id", "kind", "state", "parent_id", "victim_id", "sample",
                     "step_index", "attempt", "max_attempts", "lease_token", "worker_id")),
    # the step just inserted (found by its unique key) and its parent, in the insert's
    # round trip
    "new_step": select(jobs_t.c.id, parents_t.c.genotype, parents_t.c.fitness,
                       parents_t.c.checkpoint_uri, parents_t.c.checkpoint_sha256)
    .select_from(jobs_t.join(parents_t, parents_t.c.id == jobs_t.c.parent_id))
    .where(jobs_t.c.search_id == bindparam("search_id", type_=Integer),
           jobs_t.c.kind == JobKind.STEP,
           jobs_t.c.step_index == bindparam("step_index", type_=Integer)),
    "start": update(searches_t).where(searches_t.c.id == search_id,
                                      searches_t.c.status == SearchStatus.CREATED)
    .values(status=SearchStatus.RUNNING),
    # finished: every step created, no init or step job pending (a dead init job fails
    # the search instead, so nothing pending means the population was complete)
    "finish": update(searches_t).where(
        searches_t.c.id == search_id, searches_t.c.status.in_(ACTIVE_STATUSES),
        ~exists().where(jobs_t.c.search_id == search_id,
                        jobs_t.c.kind.in_((JobKind.INIT, JobKind.STEP)),
                        jobs_t.c.state.in_(PENDING_STATES)),
        func.coalesce(_of_search(func.max(jobs_t.c.step_index) + 1,
                                 jobs_t.c.kind == JobKind.STEP), 0)
        >= bindparam("steps", type_=Integer))
    .values(status=SearchStatus.FINISHED, finished_at=db_now()),
    "event": (insert(events_t).values(created_at=db_now()),
              ("kind", "message", "search_id", "worker_id", "job_id")),
    # an expired lease back to the queue or dead; guarded by the state and token the
    # sweep read and by the lease still being stale (age/stall; a failure passes offsets
    # that always hold), so neither a commit nor a heartbeat that landed in between is
    # undone. A retry waits until not_before (`delay` seconds from now).
    "requeue": update(jobs_t).where(
        jobs_t.c.id == job_id, jobs_t.c.state == JobState.RUNNING,
        jobs_t.c.lease_token == lease_token, _stale()).values(
        state=bindparam("new_state", type_=jobs_t.c.state.type), lease_token=None,
        error=bindparam("why", type_=jobs_t.c.error.type),
        not_before=db_now(bindparam("delay", type_=Float)),
        finished_at=case((bindparam("dead", type_=Boolean), db_now()), else_=None)),
    "fail_search": update(searches_t).where(searches_t.c.id == search_id)
    .values(status=SearchStatus.FAILED, finished_at=db_now()),
    # the lease fence, the victim check and the state change in one statement: with the
    # job row locked by it and the victim reserved by this job, the kill that follows
    # cannot miss
    "done": update(jobs_t).where(
        jobs_t.c.id == job_id, jobs_t.c.state == JobState.RUNNING,
        jobs_t.c.lease_token == lease_token,
        or_(jobs_t.c.victim_id.is_(None),
            exists().where(individuals_t.c.id == jobs_t.c.victim_id,
                           individuals_t.c.alive.is_(True))))
    .values(state=JobState.DONE, finished_at=db_now(), error=None)
    .returning(jobs_t.c.kind, jobs_t.c.parent_id, jobs_t.c.victim_id, jobs_t.c.sample),
    "applied": select(jobs_t.c.state, jobs_t.c.attempt, jobs_t.c.lease_token,
                      jobs_t.c.victim_id, individuals_t.c.id)
    .select_from(jobs_t.outerjoin(individuals_t, individuals_t.c.job_id == jobs_t.c.id))
    .where(jobs_t.c.id == job_id),
    "child": (insert(individuals_t).values(created_at=db_now()).returning(individuals_t.c.id),
              ("search_id", "job_id", "origin", "parent_id", "genotype", "arch_hash", "alive",
               "fitness", "val_loss", "test_accuracy", "n_params", "mult_adds",
               "checkpoint_uri", "checkpoint_sha256", "examples_seen", "train_seconds",
               "controller_version", "mutation")),
    # a victim chosen at commit, recorded on its step
    "set_victim": update(jobs_t).where(jobs_t.c.id == job_id).values(
        victim_id=bindparam("vid", type_=Integer)),
    "kill": update(individuals_t).where(individuals_t.c.id == bindparam("vid", type_=Integer),
                                        individuals_t.c.alive.is_(True)).values(
        alive=False, died_at=db_now(), removed_by_job_id=job_id),
    # sent with the child's INSERT, whose parameters it shares (controller_version may
    # be None there; an episode's is 0 then)
    "episode": (insert(episodes_t).values(controller_version=func.coalesce(
        bindparam("controller_version", type_=Integer), 0)),
        ("search_id", "job_id", "actions", "log_prob", "reward", "fitness")),
    "idle": update(workers_t).where(workers_t.c.id == bindparam("wid", type_=Integer))
    .values(heartbeat_at=db_now()),
    "worker_done": update(workers_t).where(workers_t.c.id == bindparam("wid", type_=Integer))
    .values(jobs_done=workers_t.c.jobs_done + 1, heartbeat_at=db_now()),
})
