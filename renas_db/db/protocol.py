"""The coordination protocol: claim, heartbeat, commit, fail, release, sweep, recover.

Each function is one short transaction. Claims are serialised per search
(pg_advisory_xact_lock on PostgreSQL, BEGIN IMMEDIATE on SQLite); commits are fenced
by the job's lease token and need no search lock. The statements live in
renas_db/db/statements.py.
"""
from __future__ import annotations

import random
import uuid
from typing import Any, cast

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection, CursorResult, Row

from renas_db import faults
from renas_db.config import SearchConfig
from renas_db.db.admin import get_search
from renas_db.db.models import Job, Worker, db_now
from renas_db.db.session import Store
from renas_db.db.statements import HOT, PARENT_COLUMNS, individuals_t, jobs_t, searches_t
from renas_db.errors import ConflictError, IntegrityViolation, LeaseLost, StateError
from renas_db.evolution import Candidate, Tournament, step_rng, tournament
from renas_db.jobs import (
    ACTIVE_STATUSES,
    ORIGIN_OF_KIND,
    PENDING_STATES,
    ClaimedJob,
    JobKind,
    JobResult,
    JobState,
    Origin,
    ParentInfo,
    SearchStatus,
)
from renas_db.space import random_genotype

# offsets for the requeue's staleness guard that always hold: a failure or a stall seen
# by the job's own worker moves the job whatever its heartbeat says
ALWAYS = 1e9

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
def heartbeat(store: Store, job_id: int, lease_token: str, worker_id: int,
              progress: int | None = None) -> bool:
    """Renew the lease; False means it was lost (another worker may own the job).
    `progress` (examples done), when given, is news: it moves progress_at, the clock of
    the stall rule."""
    values: dict[str, Any] = {"heartbeat_at": db_now()}
    if progress is not None:
        values.update(progress=progress, progress_at=db_now())
    with store.transaction() as s:
        # Session.execute is typed as Result; a bulk UPDATE's is a CursorResult
        n = cast(CursorResult[Any], s.execute(
            update(Job).where(Job.id == job_id, Job.state == JobState.RUNNING,
                              Job.lease_token == lease_token)
            .values(**values)
            .execution_options(synchronize_session=False))).rowcount
        s.execute(update(Worker).where(Worker.id == worker_id)
                  .values(heartbeat_at=db_now()).execution_options(synchronize_session=False))
        return bool(n == 1)


# -- claim --------------------------------------------------------------------------------
def claim(store: Store, search_id: int, worker_id: int,
          token: str | None = None) -> ClaimedJob | None:
    """Sweep expired leases, then hand out the oldest queued job, else a new step.

    `token` is the lease token the caller made for this claim: a retry of a claim whose
    acknowledgement was lost passes the same one and gets back the job it already holds,
    with no attempt used up."""
    token = token or uuid.uuid4().hex
    job = _claim(store, search_id, worker_id, token)
    faults.point("claim_committed", job)
    if job is None:
        # a worker waiting for work is seen alive (status counts the waiting workers)
        with store.connection() as conn:
            HOT.run(conn, "idle", {"wid": worker_id})
    return job


def _claim(store: Store, search_id: int, worker_id: int, token: str) -> ClaimedJob | None:
    with store.connection() as conn:
        # the lease and stall lengths live in the search's config: remembered from the
        # last claim
        cached = _configs.get(search_id)
        params = {"sid": search_id, "tok": token,
                  "age": -cached[1].lease_seconds if cached else 0.0,
                  "stall": -cached[1].stall_seconds if cached else 0.0}
        # the search lock and the state read in one round trip on PostgreSQL
        state = HOT.run(conn, "state", params, before=_lock(conn)).first()
        if state is None:
            return None
        config = _config_of(search_id, state.config)
        if (params["age"], params["stall"]) != (-config.lease_seconds,
                                                -config.stall_seconds) or state.expired:
            params.update(age=-config.lease_seconds, stall=-config.stall_seconds)
            if _sweep(conn, search_id, config):
                state = HOT.run(conn, "state", params).one()
        if state.mine is not None:
            # an earlier try of this very claim committed: the same job, the same lease
            return _claimed(HOT.run(conn, "job", {"jid": state.mine}).one(), search_id,
                            state, config, token, attempt_delta=0)
        if state.status not in (*ACTIVE_STATUSES, SearchStatus.FINISHED):
            return None
        # a finished search still hands out the retrain jobs queued on it
        active = state.status in ACTIVE_STATUSES
        queued = state.queued if active else state.queued_retrain
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
    return _claimed(row, search_id, state, config, token, attempt_delta=1)


def _claimed(row: Any, search_id: int, state: Any, config: SearchConfig, token: str, *,
             attempt_delta: int) -> ClaimedJob:
    job = ClaimedJob(id=row.id, search_id=search_id, search_name=state.name, kind=row.kind,
                     step_index=row.step_index, attempt=row.attempt + attempt_delta,
                     lease_token=token, config=config, checkpoint_root=state.checkpoint_root,
                     genotype=row.genotype, victim_id=row.victim_id, sample=row.sample,
                     params=row.params)
    if row.parent_id is not None:
        job.parent = ParentInfo(row.parent_id, *row[PARENT_COLUMNS])
    return job


def _create_step(conn: Connection, search_id: int, state: Any, config: SearchConfig,
                 token: str, worker_id: int) -> ClaimedJob | None:
    """A new step, created already claimed: S of the alive individuals not reserved as
    another pending step's victim; the tournament is drawn from the step's own seed. Its
    victim is chosen at its commit (`victim = commit`, nothing reserved, so a step can
    always be created), or reserved now (`victim = claim`)."""
    if state.init_pending:
        return None
    step_index = 0 if state.last_step is None else state.last_step + 1
    if step_index >= config.steps:
        return None
    rows = HOT.run(conn, "unreserved", {"sid": search_id}).all()
    if len(rows) < config.sample:
        return None  # too many steps in flight for this population: wait for a commit
    t = _draw(rows, config, step_index)
    if t is None:
        return None  # every draw sampled only quarantined individuals: wait for a commit
    victim = t.victim_id if config.victim == "claim" else None
    step = HOT.run(conn, "new_step", {
        "search_id": search_id, "kind": JobKind.STEP, "state": JobState.RUNNING,
        "parent_id": t.parent_id, "victim_id": victim, "sample": list(t.sample),
        "step_index": step_index, "attempt": 1, "max_attempts": config.max_attempts,
        "lease_token": token, "worker_id": worker_id}, before=("insert_step",)).one()
    job = ClaimedJob(id=step[0], search_id=search_id, search_name=state.name,
                     kind=JobKind.STEP, step_index=step_index, attempt=1, lease_token=token,
                     config=config, checkpoint_root=state.checkpoint_root,
                     victim_id=victim, sample=list(t.sample),
                     parent=ParentInfo(t.parent_id, *step[1:]))
    faults.point("step_drawn", job)  # tests: the claim's transaction is still open
    return job


REDRAWS = 10


def _draw(rows: Any, config: SearchConfig, step_index: int) -> Tournament | None:
    """The step's tournament from its own seed; if it sampled only quarantined
    individuals, up to REDRAWS more from derived seeds (deterministic as well)."""
    candidates = [Candidate(r[0], r[1], bool(r[2])) for r in rows]
    for k in range(REDRAWS + 1):
        t = tournament(candidates, config.sample, config.removal,
                       step_rng(config.seed, step_index, k))
        if t is not None:
            return t
    return None


def _finish_if_complete(conn: Connection, search_id: int, config: SearchConfig) -> None:
    if HOT.run(conn, "finish", {"sid": search_id, "steps": config.steps}).rowcount:
        _event(conn, "search finished", f"{config.steps} steps created", search_id)


# -- sweep --------------------------------------------------------------------------------
def _sweep(conn: Connection, search_id: int, config: SearchConfig) -> int:
    """Expired leases and stalled jobs back to the queue, or dead after max_attempts; the
    rare branch of a claim. Returns how many jobs it moved."""
    stale = {"age": -config.lease_seconds, "stall": -config.stall_seconds}
    expired = HOT.run(conn, "expired", {"sid": search_id, **stale}).all()
    moved = 0
    for job in expired:
        faults.point("sweep_read", conn, job)
        if job.lease_expired:
            kind, why = "lease expired", \
                f"lease expired (worker {job.worker_id}, attempt {job.attempt})"
        else:
            kind, why = "job stalled", (f"no progress for {config.stall_seconds:g} s "
                                        f"(worker {job.worker_id}, attempt {job.attempt})")
        moved += _requeue_or_kill(conn, search_id, job, kind, why, config, **stale)
    return moved


def retry_delay(config: SearchConfig, attempt: int) -> float:
    """Seconds a job that failed its `attempt`-th attempt waits: retry_backoff_seconds
    doubling per attempt, capped at retry_backoff_max_seconds."""
    return min(config.retry_backoff_seconds * 2.0 ** max(attempt - 1, 0),
               config.retry_backoff_max_seconds)


def _requeue_or_kill(conn: Connection, search_id: int, job: Any, kind: str, why: str,
                     config: SearchConfig, *, age: float = ALWAYS, stall: float = ALWAYS,
                     delay: float = 0.0) -> int:
    """One running job back to the queue (claimable after `delay` seconds), or dead
    after max_attempts (a dead init job is replaced). Guarded by the lease token read
    and, for the sweep, by the lease still being stale: 0 if it moved on."""
    dead = job.attempt >= job.max_attempts
    n = HOT.run(conn, "requeue", {"jid": job.id, "tok": job.lease_token, "why": why,
                                  "new_state": JobState.DEAD if dead else JobState.QUEUED,
                                  "dead": dead, "age": age, "stall": stall,
                                  "delay": 0.0 if dead else delay}).rowcount
    if not n:
        return 0
    _event(conn, kind, f"job {job.id} ({job.kind} {job.step_index}): {why}; "
           + ("dead after max attempts" if dead else
              f"requeued (next try in {delay:g} s)" if delay else "requeued"), search_id,
           worker_id=job.worker_id, job_id=job.id)
    if dead and job.kind == JobKind.INIT:
        _replace_init(conn, search_id, config, job.id, why)
    return 1


def _replace_init(conn: Connection, search_id: int, config: SearchConfig, dead_id: int,
                  why: str) -> None:
    """A dead init job is replaced by a fresh random genotype, so that the population can
    still be completed; after P replacements the cause is not the genotype and the
    search fails (`renas-db search resume` once it is fixed)."""
    jobs = jobs_t
    dead, last = conn.execute(select(
        func.count().filter(jobs.c.state == JobState.DEAD), func.max(jobs.c.step_index))
        .where(jobs.c.search_id == search_id, jobs.c.kind == JobKind.INIT)).one()
    if dead > config.population:
        HOT.run(conn, "fail_search", {"sid": search_id})
        _event(conn, "search failed", f"init job {dead_id} is dead ({why}), and {dead} init "
               "jobs died: fix the cause, then `renas-db search requeue` and "
               "`renas-db search resume`", search_id)
        return
    index = (last or 0) + 1
    genotype = random_genotype(config.blocks, random.Random(
        f"renas-init:{config.population_seed}:replacement:{index}"))
    new_id = conn.execute(insert(jobs).values(
        search_id=search_id, kind=JobKind.INIT, state=JobState.QUEUED,
        genotype=genotype.to_text(), step_index=index, attempt=0,
        max_attempts=config.max_attempts, created_at=db_now())
        .returning(jobs.c.id)).scalar_one()
    _event(conn, "init job replaced", f"init job {dead_id} is dead ({why}): replaced by "
           f"job {new_id} with a fresh random genotype", search_id, job_id=new_id)


# -- results ------------------------------------------------------------------------------
def commit_job(store: Store, job: ClaimedJob, result: JobResult, worker_id: int) -> int:
    """Apply a finished job exactly once: child alive, victim dead, job done, episode.
    A retry after a lost acknowledgement finds its own result and returns it."""
    # No per-search lock here: the fenced job row (locked by its UPDATE) and the victim's
    # row lock (or its reservation by this running job, victim = claim) are all a commit
    # needs, so commits run in parallel with claims. Nor a finish check: the search is
    # marked finished by the next claim that finds nothing left to do, which every worker
    # makes after its commit.
    try:
        return _commit(store, job, result, worker_id)
    except IntegrityViolation as exc:
        # the job's individual exists already (the unique individuals.job_id): the result
        # of another lease. Never retried as a conflict; this one is not committed.
        if "job_id" not in str(exc):
            raise
        raise LeaseLost(f"job {job.id}: lease lost (its result exists: {exc})") from None


def _commit(store: Store, job: ClaimedJob, result: JobResult, worker_id: int) -> int:
    with store.connection() as conn:
        row = HOT.run(conn, "done", {"jid": job.id, "tok": job.lease_token}).first()
        if row is None:
            state, attempt, token, victim, child_id = HOT.run(conn, "applied",
                                                              {"jid": job.id}).one()
            # applied only if done under this very token: a job requeued and taken again
            # keeps the old child but is not done by this lease
            if state == JobState.DONE and token == job.lease_token and child_id is not None:
                job.victim_id = victim
                return int(child_id)
            if token == job.lease_token and state == JobState.RUNNING:
                raise StateError(f"job {job.id}: victim {victim} is not alive")
            raise LeaseLost(f"job {job.id}: lease lost (now {state}, attempt {attempt})")
        origin = ORIGIN_OF_KIND[JobKind(row.kind)]
        before: tuple[str, ...] = ("worker_done",)
        victim = row.victim_id
        if row.kind == JobKind.STEP:
            if victim is None:
                victim = _victim_at_commit(conn, job, row.parent_id, row.sample)
                before += ("set_victim",)
            job.victim_id = victim  # the collector's candidate
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
            "wid": worker_id, "vid": victim, "jid": job.id}, before=before).scalar_one()
        return int(child_id)


def _victim_at_commit(conn: Connection, job: ClaimedJob, parent_id: int,
                      sample: list[int]) -> int:
    """The victim of a step whose victim is chosen at commit (docs/design.md 3.4): the
    worst of its sample still alive and not being removed by another commit, never its
    parent; if none is left, the worst of a fresh sample (up to REDRAWS, from seeds of
    the step); then the worst alive. removal=oldest: the oldest alive. The row is locked
    (PostgreSQL: FOR NO KEY UPDATE SKIP LOCKED, which a child's foreign key to it does
    not wait on), so two commits never pick one victim; SQLite's writer lock serialises
    commits anyway."""
    config = job.config
    inds = individuals_t
    base = select(inds.c.id).where(inds.c.search_id == job.search_id,
                                   inds.c.alive.is_(True), inds.c.origin != Origin.RETRAIN)

    def pick(ids: list[int] | None) -> int | None:
        q = base if ids is None else base.where(inds.c.id.in_(ids))
        if config.removal == "oldest":
            q = q.order_by(inds.c.id)
        else:
            q = q.where(inds.c.id != parent_id).order_by(inds.c.fitness, inds.c.id.desc())
        return cast("int | None", conn.execute(
            q.limit(1).with_for_update(skip_locked=True, key_share=True)).scalar())

    if config.removal == "oldest":
        found = pick(None)
    else:
        found = pick(list(sample))
        if found is None:
            alive = sorted(conn.execute(base).scalars())
            for k in range(1, REDRAWS + 1):
                rng = random.Random(f"renas-victim:{config.seed}:{job.step_index}:{k}")
                found = pick(rng.sample(alive, min(config.sample, len(alive))))
                if found is not None:
                    break
            else:
                found = pick(None)
    if found is None:  # every alive individual is being removed by another commit
        raise ConflictError(f"job {job.id}: no victim free to remove, retry")
    return found


def _fenced_job(conn: Connection, job: ClaimedJob) -> Row[Any]:
    row = conn.execute(select(Job.__table__).where(Job.id == job.id).with_for_update()).one()
    if row.state != JobState.RUNNING or row.lease_token != job.lease_token:
        raise LeaseLost(f"job {job.id}: lease lost (now {row.state}, attempt {row.attempt})")
    return row


def fail_job(store: Store, job: ClaimedJob, error: str, kind: str = "job failed") -> str:
    """A training error: requeue (attempt counted) after the retry backoff, or dead after
    max_attempts. Returns the job's new state."""
    with store.connection() as conn:
        _lock_search(conn, job.search_id)
        row = _fenced_job(conn, job)
        _requeue_or_kill(conn, job.search_id, row, kind, error, job.config,
                         delay=retry_delay(job.config, row.attempt))
        return str(JobState.DEAD if row.attempt >= row.max_attempts else JobState.QUEUED)


def quarantine_parent(store: Store, job: ClaimedJob, why: str) -> int | None:
    """The step's parent checkpoint is missing or damaged: the parent is quarantined
    (never a parent again, still a possible victim) and the step is drawn again under
    the same index, queued with no attempt used up. Returns the new parent's id (None:
    no draw found a parent; the step is dead)."""
    assert job.parent is not None
    jobs, inds = jobs_t, individuals_t
    with store.connection() as conn:
        _lock_search(conn, job.search_id)
        row = _fenced_job(conn, job)
        conn.execute(update(inds).where(inds.c.id == job.parent.id).values(quarantined=True))
        _event(conn, "parent quarantined", f"individual {job.parent.id}: {why}; never a "
               "parent again", job.search_id, worker_id=row.worker_id, job_id=job.id)
        # the candidates as at a claim, plus this step's own victim (reserved by itself)
        rows = list(HOT.run(conn, "unreserved", {"sid": job.search_id}).all())
        if row.victim_id is not None:
            rows += conn.execute(select(inds.c.id, inds.c.fitness, inds.c.quarantined).where(
                inds.c.id == row.victim_id, inds.c.alive.is_(True))).all()
        t = _draw(rows, job.config, job.step_index) if len(rows) >= job.config.sample \
            else None
        if t is None:
            conn.execute(update(jobs).where(jobs.c.id == job.id).values(
                state=JobState.DEAD, lease_token=None, finished_at=db_now(),
                error=f"{why}; no other parent could be drawn"))
            _event(conn, "job failed", f"job {job.id} (step {job.step_index}): no parent "
                   "could be drawn; dead", job.search_id, job_id=job.id)
            return None
        conn.execute(update(jobs).where(jobs.c.id == job.id).values(
            state=JobState.QUEUED, lease_token=None, attempt=jobs.c.attempt - 1,
            parent_id=t.parent_id, sample=list(t.sample), not_before=None, error=why,
            victim_id=t.victim_id if job.config.victim == "claim" else None))
        _event(conn, "step redrawn", f"job {job.id} (step {job.step_index}): parent "
               f"{t.parent_id}, victim {t.victim_id} instead of parent {job.parent.id}",
               job.search_id, job_id=job.id)
        return t.parent_id


def release_job(store: Store, job: ClaimedJob) -> None:
    """The worker was told to stop: give the job back without counting an attempt."""
    give_back_job(store, job, "job released",
                  f"job {job.id} released by its worker (stop signal)")


def give_back_job(store: Store, job: ClaimedJob, kind: str, message: str,
                  error: str | None = None) -> None:
    """The job back to the queue, claimable at once, with no attempt used up: a stop
    signal (`job released`), or an error of the worker's host, not of the job (`job
    given back`, the error kept in `jobs.error`)."""
    with store.connection() as conn:
        row = _fenced_job(conn, job)
        values: dict[str, Any] = {"state": JobState.QUEUED, "lease_token": None,
                                  "attempt": Job.attempt - 1}
        if error is not None:
            values.update(error=error[:2000], not_before=None)
        conn.execute(update(Job).where(Job.id == job.id).values(**values))
        _event(conn, kind, message, job.search_id, worker_id=row.worker_id, job_id=job.id)


def recover(store: Store, name: str) -> dict[str, int]:
    """Run the claim's sweep on demand: expired leases back to the queue (or dead)."""
    with store.transaction() as s:
        search = get_search(s, name)
        conn = s.connection()
        _lock_search(conn, search.id)
        config = SearchConfig.from_dict(search.config)
        swept = _sweep(conn, search.id, config)
        # a no-op unless the search is still created or running (the UPDATE checks)
        _finish_if_complete(conn, search.id, config)
        counts = dict(s.execute(select(Job.state, func.count()).where(
            Job.search_id == search.id, Job.state.in_((JobState.QUEUED, JobState.RUNNING)))
            .group_by(Job.state)).tuples().all())
        return {"requeued_or_dead": swept, "queued": counts.get(JobState.QUEUED, 0),
                "running": counts.get(JobState.RUNNING, 0)}


# -- a failed search and dead jobs, once the cause is fixed --------------------------------
def resume_failed(store: Store, name: str) -> None:
    """A failed search back to running (only from failed: a guarded UPDATE)."""
    with store.transaction() as s:
        search = get_search(s, name)
        conn = s.connection()
        _lock_search(conn, search.id)
        n = conn.execute(update(searches_t).where(
            searches_t.c.id == search.id,
            searches_t.c.status == SearchStatus.FAILED)
            .values(status=SearchStatus.RUNNING, finished_at=None)).rowcount
        if not n:
            raise StateError(f"search {name!r} is {search.status}, not failed")
        _event(conn, "search resumed", "failed -> running", search.id)


def requeue_dead(store: Store, name: str) -> dict[str, int]:
    """Dead jobs back to the queue with their attempts reset: dead init jobs as many as
    the population still lacks; dead steps whose victim is still alive and unreserved
    and whose parent still has a checkpoint; dead retrain jobs. A finished search with a
    step requeued runs again."""
    jobs, inds = jobs_t, individuals_t
    with store.transaction() as s:
        search = get_search(s, name)
        conn = s.connection()
        _lock_search(conn, search.id)
        config = SearchConfig.from_dict(search.config)
        dead = conn.execute(select(jobs.c.id, jobs.c.kind, jobs.c.parent_id, jobs.c.victim_id)
                            .where(jobs.c.search_id == search.id,
                                   jobs.c.state == JobState.DEAD).order_by(jobs.c.id)).all()
        init_live = conn.execute(select(func.count()).where(
            jobs.c.search_id == search.id, jobs.c.kind == JobKind.INIT,
            jobs.c.state != JobState.DEAD)).scalar_one()
        reserved = set(conn.execute(select(jobs.c.victim_id).where(
            jobs.c.search_id == search.id, jobs.c.state.in_(PENDING_STATES),
            jobs.c.victim_id.is_not(None))).scalars())
        ids, skipped, steps = [], 0, 0
        for job in dead:
            if job.kind == JobKind.INIT:
                ok = init_live < config.population
                init_live += ok
            elif job.kind == JobKind.STEP:
                # a victim chosen at commit (NULL) needs no check
                ok = job.victim_id not in reserved and conn.execute(select(func.count()).where(
                    ((inds.c.id == job.victim_id) & inds.c.alive.is_(True))
                    | ((inds.c.id == job.parent_id) & inds.c.checkpoint_uri.is_not(None)
                       & inds.c.quarantined.is_(False)))).scalar_one() \
                    == (1 if job.victim_id is None else 2)
                if ok:
                    if job.victim_id is not None:
                        reserved.add(job.victim_id)
                    steps += 1
            else:
                ok = True
            if ok:
                ids.append(job.id)
            else:
                skipped += 1
        if ids:
            conn.execute(update(jobs).where(jobs.c.id.in_(ids)).values(
                state=JobState.QUEUED, attempt=0, lease_token=None, not_before=None,
                finished_at=None))
            _event(conn, "jobs requeued", f"{len(ids)} dead jobs requeued "
                   f"({skipped} left dead)", search.id)
        if steps and search.status == SearchStatus.FINISHED:
            conn.execute(update(searches_t).where(searches_t.c.id == search.id)
                         .values(status=SearchStatus.RUNNING, finished_at=None))
        return {"requeued": len(ids), "left_dead": skipped}
