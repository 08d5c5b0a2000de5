"""The coordination protocol: claim, heartbeat, commit, fail, release, sweep, recover.

Each function is one short transaction. Claims are serialised per search
(pg_advisory_xact_lock on PostgreSQL, BEGIN IMMEDIATE on SQLite); commits are fenced
by the job's lease token and need no search lock. The statements live in
renas_db/db/statements.py.
"""
from __future__ import annotations

import uuid
from typing import Any, cast

from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection, CursorResult, Row

from renas_db.config import SearchConfig
from renas_db.db.admin import get_search
from renas_db.db.models import Job, Worker, db_now
from renas_db.db.session import Store
from renas_db.db.statements import HOT, PARENT_COLUMNS
from renas_db.errors import LeaseLost, StateError
from renas_db.evolution import Candidate, step_rng, tournament
from renas_db.jobs import (
    ACTIVE_STATUSES,
    ORIGIN_OF_KIND,
    ClaimedJob,
    JobKind,
    JobResult,
    JobState,
    Origin,
    ParentInfo,
    SearchStatus,
)

_configs: dict[int, tuple[dict[str, Any], SearchConfig]] = {}


def _config_of(search_id: int, raw: dict[str, Any]) -> SearchConfig:
    """SearchConfig.from_dict, remembered per search while its stored dict is unchanged."""
    hit = _configs.get(search_id)
    if hit is None or hit[0] != raw:
        hit = _configs[search_id] = (raw, SearchConfig.from_dict(raw))
    return hit[1]


def _lock(conn: Connection) -> tuple[str, ...]:
    """The statement that serialises claims on a search, to run first (PostgreSQL only:
    on SQLite the write transaction's BEGIN IMMEDIATE already does)."""
    return ("lock",) if conn.dialect.name == "postgresql" else ()


def _lock_search(conn: Connection, search_id: int) -> None:
    for key in _lock(conn):
        HOT.run(conn, key, {"sid": search_id})


def _event(conn: Connection, kind: str, message: str, search_id: int, *,
           worker_id: int | None = None, job_id: int | None = None) -> None:
    HOT.run(conn, "event", {"kind": kind, "message": message[:2000], "search_id": search_id,
                            "worker_id": worker_id, "job_id": job_id})


# -- heartbeat ----------------------------------------------------------------------------
def heartbeat(store: Store, job_id: int, lease_token: str, worker_id: int) -> bool:
    """Renew the lease; False means it was lost (another worker may own the job)."""
    with store.transaction() as s:
        # Session.execute is typed as Result; a bulk UPDATE's is a CursorResult
        n = cast(CursorResult[Any], s.execute(
            update(Job).where(Job.id == job_id, Job.state == JobState.RUNNING,
                              Job.lease_token == lease_token)
            .values(heartbeat_at=db_now())
            .execution_options(synchronize_session=False))).rowcount
        s.execute(update(Worker).where(Worker.id == worker_id)
                  .values(heartbeat_at=db_now()).execution_options(synchronize_session=False))
        return bool(n == 1)


# -- claim --------------------------------------------------------------------------------
def claim(store: Store, search_id: int, worker_id: int) -> ClaimedJob | None:
    """Sweep expired leases, then hand out the oldest queued job, else a new step."""
    with store.connection() as conn:
        # the lease length lives in the search's config: remembered from the last claim
        cached = _configs.get(search_id)
        params = {"sid": search_id, "age": -cached[1].lease_seconds if cached else 0.0}
        # the search lock and the state read in one round trip on PostgreSQL
        state = HOT.run(conn, "state", params, before=_lock(conn)).first()
        if state is None:
            return None
        config = _config_of(search_id, state.config)
        if params["age"] != -config.lease_seconds or state.expired:
            params["age"] = -config.lease_seconds
            if _sweep(conn, search_id, config.lease_seconds):
                state = HOT.run(conn, "state", params).one()  # a dead init job fails it
        if state.status not in (*ACTIVE_STATUSES, SearchStatus.FINISHED):
            return None
        # a finished search still hands out the retrain jobs queued on it
        active = state.status in ACTIVE_STATUSES
        queued = state.queued if active else state.queued_retrain
        token = uuid.uuid4().hex
        job: ClaimedJob | None
        if queued is not None:
            job = _take(conn, queued, search_id, state, config, token, worker_id)
        elif not active:
            return None
        else:
            job = _create_step(conn, search_id, state, config, token, worker_id)
            if job is None:
                _finish_if_complete(conn, search_id, config)
                return None
        if state.status == SearchStatus.CREATED:
            HOT.run(conn, "start", {"sid": search_id})
        return job


def _take(conn: Connection, job_id: int, search_id: int, state: Any, config: SearchConfig,
          token: str, worker_id: int) -> ClaimedJob:
    """Hand out a queued job under a new lease."""
    row = HOT.run(conn, "job", {"jid": job_id}).one()
    HOT.run(conn, "take", {"jid": row.id, "tok": token, "wid": worker_id})
    job = ClaimedJob(id=row.id, search_id=search_id, search_name=state.name, kind=row.kind,
                     step_index=row.step_index, attempt=row.attempt + 1, lease_token=token,
                     config=config, checkpoint_root=state.checkpoint_root,
                     genotype=row.genotype, victim_id=row.victim_id, sample=row.sample,
                     params=row.params)
    if row.parent_id is not None:
        job.parent = ParentInfo(row.parent_id, *row[PARENT_COLUMNS])
    return job


def _create_step(conn: Connection, search_id: int, state: Any, config: SearchConfig,
                 token: str, worker_id: int) -> ClaimedJob | None:
    """A new step, created already claimed: S of the alive individuals not reserved as
    another pending step's victim; the tournament is drawn from the step's own seed."""
    if state.init_pending:
        return None
    step_index = 0 if state.last_step is None else state.last_step + 1
    if step_index >= config.steps:
        return None
    rows = HOT.run(conn, "unreserved", {"sid": search_id}).all()
    if len(rows) < config.sample:
        return None  # too many steps in flight for this population: wait for a commit
    t = tournament([Candidate(r[0], r[1]) for r in rows], config.sample, config.removal,
                   step_rng(config.seed, step_index))
    step = HOT.run(conn, "new_step", {
        "search_id": search_id, "kind": JobKind.STEP, "state": JobState.RUNNING,
        "parent_id": t.parent_id, "victim_id": t.victim_id, "sample": list(t.sample),
        "step_index": step_index, "attempt": 1, "max_attempts": config.max_attempts,
        "lease_token": token, "worker_id": worker_id}, before=("insert_step",)).one()
    return ClaimedJob(id=step[0], search_id=search_id, search_name=state.name,
                      kind=JobKind.STEP, step_index=step_index, attempt=1, lease_token=token,
                      config=config, checkpoint_root=state.checkpoint_root,
                      victim_id=t.victim_id, sample=list(t.sample),
                      parent=ParentInfo(t.parent_id, *step[1:]))


def _finish_if_complete(conn: Connection, search_id: int, config: SearchConfig) -> None:
    if HOT.run(conn, "finish", {"sid": search_id, "steps": config.steps}).rowcount:
        _event(conn, "search finished", f"{config.steps} steps created", search_id)


# -- sweep --------------------------------------------------------------------------------
def _sweep(conn: Connection, search_id: int, lease_seconds: float) -> int:
    """Expired leases back to the queue, or dead after max_attempts; the rare branch of a
    claim. Returns how many jobs it moved."""
    expired = HOT.run(conn, "expired", {"sid": search_id, "age": -lease_seconds}).all()
    moved = 0
    for job in expired:
        why = f"lease expired (worker {job.worker_id}, attempt {job.attempt})"
        moved += _requeue_or_kill(conn, search_id, job, "lease expired", why)
    return moved


def _requeue_or_kill(conn: Connection, search_id: int, job: Any, kind: str, why: str) -> int:
    """One running job back to the queue, or dead after max_attempts (and then, for an
    init job, the search failed). Guarded by the lease token read: 0 if it moved on."""
    dead = job.attempt >= job.max_attempts
    n = HOT.run(conn, "requeue", {"jid": job.id, "tok": job.lease_token, "why": why,
                                  "new_state": JobState.DEAD if dead else JobState.QUEUED,
                                  "dead": dead}).rowcount
    if not n:
        return 0
    _event(conn, kind, f"job {job.id} ({job.kind} {job.step_index}): {why}; "
           + ("dead after max attempts" if dead else "requeued"), search_id,
           worker_id=job.worker_id, job_id=job.id)
    if dead and job.kind == JobKind.INIT:
        # The population could never be complete: fail loudly rather than wait forever.
        HOT.run(conn, "fail_search", {"sid": search_id})
        _event(conn, "search failed", f"init job {job.id} is dead: {why}", search_id)
    return 1


# -- results ------------------------------------------------------------------------------
def commit_job(store: Store, job: ClaimedJob, result: JobResult, worker_id: int) -> int:
    """Apply a finished job exactly once: child alive, victim dead, job done, episode.
    A retry after a lost acknowledgement finds its own result and returns it."""
    # No per-search lock here: the fenced job row (locked by its UPDATE) and the victim's
    # reservation by this running job are all a commit needs, so commits run in parallel
    # with claims. Nor a finish check: the search is marked finished by the next claim
    # that finds nothing left to do, which every worker makes after its commit.
    with store.connection() as conn:
        row = HOT.run(conn, "done", {"jid": job.id, "tok": job.lease_token}).first()
        if row is None:
            state, attempt, token, victim, child_id = HOT.run(conn, "applied",
                                                              {"jid": job.id}).one()
            if token == job.lease_token and child_id is not None:
                return int(child_id)
            if token == job.lease_token and state == JobState.RUNNING:
                raise StateError(f"job {job.id}: victim {victim} is not alive")
            raise LeaseLost(f"job {job.id}: lease lost (now {state}, attempt {attempt})")
        origin = ORIGIN_OF_KIND[JobKind(row.kind)]
        before: tuple[str, ...] = ("worker_done",)
        if row.kind == JobKind.STEP:
            before += ("kill",)
            if result.log_prob is not None and result.reward is not None:
                before += ("episode",)
        # one round trip on PostgreSQL: the counter, the kill, the episode, the child
        child_id = HOT.run(conn, "child", {
            "search_id": job.search_id, "job_id": job.id, "origin": origin,
            "parent_id": row.parent_id, "genotype": result.genotype,
            "arch_hash": result.arch_hash, "alive": origin != Origin.RETRAIN,
            "fitness": result.fitness, "val_loss": result.val_loss,
            "test_accuracy": result.test_accuracy, "n_params": result.n_params,
            "mult_adds": result.mult_adds, "checkpoint_uri": result.checkpoint_uri,
            "checkpoint_sha256": result.checkpoint_sha256,
            "examples_seen": result.examples_seen, "train_seconds": result.train_seconds,
            "controller_version": result.controller_version,
            "mutation": result.mutation, "actions": result.mutation or [],
            "log_prob": result.log_prob, "reward": result.reward,
            "wid": worker_id, "vid": row.victim_id, "jid": job.id}, before=before).scalar_one()
        return int(child_id)


def _fenced_job(conn: Connection, job: ClaimedJob) -> Row[Any]:
    row = conn.execute(select(Job.__table__).where(Job.id == job.id).with_for_update()).one()
    if row.state != JobState.RUNNING or row.lease_token != job.lease_token:
        raise LeaseLost(f"job {job.id}: lease lost (now {row.state}, attempt {row.attempt})")
    return row


def fail_job(store: Store, job: ClaimedJob, error: str) -> str:
    """A training error: requeue (attempt counted) or dead after max_attempts. Returns the
    job's new state."""
    with store.connection() as conn:
        _lock_search(conn, job.search_id)
        row = _fenced_job(conn, job)
        _requeue_or_kill(conn, job.search_id, row, "job failed", error)
        return str(JobState.DEAD if row.attempt >= row.max_attempts else JobState.QUEUED)


def release_job(store: Store, job: ClaimedJob) -> None:
    """The worker was told to stop: give the job back without counting an attempt."""
    with store.connection() as conn:
        row = _fenced_job(conn, job)
        conn.execute(update(Job).where(Job.id == job.id).values(
            state=JobState.QUEUED, lease_token=None, attempt=Job.attempt - 1))
        _event(conn, "job released", f"job {job.id} released by its worker (stop signal)",
               job.search_id, worker_id=row.worker_id, job_id=job.id)


def recover(store: Store, name: str) -> dict[str, int]:
    """Run the claim's sweep on demand: expired leases back to the queue (or dead)."""
    with store.transaction() as s:
        search = get_search(s, name)
        conn = s.connection()
        _lock_search(conn, search.id)
        config = SearchConfig.from_dict(search.config)
        swept = _sweep(conn, search.id, config.lease_seconds)
        # a no-op unless the search is still created or running (the UPDATE checks)
        _finish_if_complete(conn, search.id, config)
        counts = dict(s.execute(select(Job.state, func.count()).where(
            Job.search_id == search.id, Job.state.in_((JobState.QUEUED, JobState.RUNNING)))
            .group_by(Job.state)).tuples().all())
        return {"requeued_or_dead": swept, "queued": counts.get(JobState.QUEUED, 0),
                "running": counts.get(JobState.RUNNING, 0)}
