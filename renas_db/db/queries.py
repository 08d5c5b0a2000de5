"""Every state transition of searches, jobs, individuals and workers.

Each public function is one short transaction (`Store.transaction`). Status strings are
spelled only here. Claims are serialised per search: pg_advisory_xact_lock on PostgreSQL,
BEGIN IMMEDIATE on SQLite.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Sequence

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from renas_db.config import SearchConfig
from renas_db.db.models import Event, Individual, Job, Search, Worker, db_now
from renas_db.db.session import Store
from renas_db.errors import LeaseLost, NotFoundError, StateError
from renas_db.evolution import Candidate, step_rng, tournament

# search status
CREATED, RUNNING, PAUSED, FINISHED, FAILED = "created", "running", "paused", "finished", "failed"
ACTIVE = (CREATED, RUNNING)
# job state
QUEUED, CLAIMED, DONE, DEAD = "queued", "running", "done", "dead"
# job kind / individual origin
INIT, STEP, RETRAIN = "init", "step", "retrain"
CHILD = "child"
ADVISORY_NAMESPACE = 7_457_001


@dataclass
class ParentInfo:
    id: int
    genotype: str
    fitness: float
    checkpoint_uri: str | None
    checkpoint_sha256: str | None


@dataclass
class ClaimedJob:
    id: int
    search_id: int
    search_name: str
    kind: str
    step_index: int
    attempt: int
    lease_token: str
    config: SearchConfig
    checkpoint_root: str
    genotype: str | None = None
    parent: ParentInfo | None = None
    victim_id: int | None = None
    sample: list[int] | None = None
    params: dict[str, Any] | None = None   # the retrain recipe


@dataclass
class JobResult:
    genotype: str
    arch_hash: str
    fitness: float
    val_loss: float | None
    checkpoint_uri: str | None
    checkpoint_sha256: str | None
    examples_seen: int
    train_seconds: float
    n_params: int | None = None
    mult_adds: int | None = None
    test_accuracy: float | None = None
    controller_version: int | None = None
    mutation: list | None = None
    # the episode (steps only)
    log_prob: float | None = None
    reward: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def event(session: Session, kind: str, message: str, *, search_id: int | None = None,
          worker_id: int | None = None, job_id: int | None = None) -> None:
    session.add(Event(kind=kind, message=message[:2000], search_id=search_id,
                      worker_id=worker_id, job_id=job_id, created_at=db_now()))


# -- searches -------------------------------------------------------------------------
def get_search(session: Session, name: str) -> Search:
    search = session.scalars(select(Search).where(Search.name == name)).one_or_none()
    if search is None:
        known = session.scalars(select(Search.name).order_by(Search.id).limit(5)).all()
        hint = f" (known: {', '.join(known)})" if known else " (no searches yet)"
        raise NotFoundError(f"no search named {name!r}{hint}")
    return search


def create_search(store: Store, name: str, config: SearchConfig, genotypes: Sequence[str],
                  snapshot0: bytes | None, study: str | None = None) -> int:
    """The search row, its P init jobs and (for renas) controller snapshot 0, at once."""
    from renas_db.db.snapshots import insert_snapshot
    from renas_db.errors import AlreadyExistsError
    with store.transaction() as s:
        if s.scalar(select(Search.id).where(Search.name == name)) is not None:
            raise AlreadyExistsError(f"a search named {name!r} exists already")
        search = Search(name=name, status=CREATED, config=config.to_dict(), seed=config.seed,
                        checkpoint_root=config.checkpoint_root, created_at=db_now(),
                        study=study)
        s.add(search)
        s.flush()
        for i, genotype in enumerate(genotypes):
            s.add(Job(search_id=search.id, kind=INIT, state=QUEUED, genotype=genotype,
                      step_index=i, attempt=0, max_attempts=config.max_attempts,
                      created_at=db_now()))
        if snapshot0 is not None:
            insert_snapshot(s, search.id, 0, snapshot0, episodes_seen=0)
        event(s, "search created", f"search {name} created with {len(genotypes)} init jobs",
              search_id=search.id)
        return search.id


def set_search_status(store: Store, name: str, status: str) -> str:
    """pause / resume. Returns the previous status."""
    allowed = {PAUSED: ACTIVE, RUNNING: (PAUSED, CREATED, RUNNING)}
    with store.transaction() as s:
        search = get_search(s, name)
        if search.status not in allowed[status]:
            raise StateError(f"search {name!r} is {search.status}; cannot "
                             f"{'pause' if status == PAUSED else 'resume'} it")
        old = search.status
        search.status = status
        event(s, "search " + ("paused" if status == PAUSED else "resumed"),
              f"{old} -> {status}", search_id=search.id)
        return old


def list_searches(store: Store) -> list[dict[str, Any]]:
    with store.transaction(write=False) as s:
        alive = (select(func.count()).where(Individual.search_id == Search.id,
                                            Individual.alive.is_(True),
                                            Individual.origin != RETRAIN)
                 .correlate(Search).scalar_subquery())
        best = (select(func.max(Individual.fitness))
                .where(Individual.search_id == Search.id, Individual.origin != RETRAIN)
                .correlate(Search).scalar_subquery())
        steps = (select(func.count()).where(Job.search_id == Search.id, Job.kind == STEP,
                                            Job.state == DONE)
                 .correlate(Search).scalar_subquery())
        rows = s.execute(select(Search, alive, best, steps).order_by(Search.id)).all()
        return [{"name": r[0].name, "status": r[0].status,
                 "mutator": r[0].config.get("mutator"), "alive": r[1], "best_fitness": r[2],
                 "steps_done": r[3], "steps": r[0].config.get("steps"),
                 "created_at": r[0].created_at.isoformat(sep=" ", timespec="seconds")}
                for r in rows]


# -- workers --------------------------------------------------------------------------
def register_worker(store: Store, host: str, pid: int, device: str) -> int:
    with store.transaction() as s:
        worker = Worker(host=host, pid=pid, device=device, started_at=db_now(),
                        heartbeat_at=db_now(), state="running", jobs_done=0)
        s.add(worker)
        s.flush()
        event(s, "worker started", f"{host} pid {pid} on {device}", worker_id=worker.id)
        return worker.id


def worker_stopped(store: Store, worker_id: int, reason: str) -> None:
    with store.transaction() as s:
        s.execute(update(Worker).where(Worker.id == worker_id)
                  .values(state="stopped", heartbeat_at=db_now()))
        event(s, "worker stopped", reason, worker_id=worker_id)


def heartbeat(store: Store, job_id: int, lease_token: str, worker_id: int) -> bool:
    """Renew the lease; False means it was lost (another worker may own the job)."""
    with store.transaction() as s:
        n = s.execute(update(Job).where(Job.id == job_id, Job.state == CLAIMED,
                                        Job.lease_token == lease_token)
                      .values(heartbeat_at=db_now())
                      .execution_options(synchronize_session=False)).rowcount
        s.execute(update(Worker).where(Worker.id == worker_id)
                  .values(heartbeat_at=db_now()).execution_options(synchronize_session=False))
        return n == 1


# -- claim ----------------------------------------------------------------------------
def active_search_ids(store: Store, name: str | None) -> list[int]:
    with store.transaction(write=False) as s:
        if name is not None:
            return [get_search(s, name).id]
        retrain = select(Job.search_id).where(Job.kind == RETRAIN,
                                              Job.state.in_((QUEUED, CLAIMED)))
        return list(s.scalars(select(Search.id).where(
            Search.status.in_(ACTIVE) | (Search.status == FINISHED) & Search.id.in_(retrain))
            .order_by(Search.id)))


def has_work(store: Store, search_id: int) -> bool:
    """Whether a search may still hand out jobs (running, or retrain jobs pending)."""
    with store.transaction(write=False) as s:
        status = s.scalar(select(Search.status).where(Search.id == search_id))
        if status in ACTIVE:
            return True
        if status != FINISHED:
            return False
        return bool(s.scalar(select(func.count()).where(
            Job.search_id == search_id, Job.kind == RETRAIN, Job.state.in_((QUEUED, CLAIMED)))))


def _lock_search(s: Session, search_id: int) -> None:
    if s.bind.dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:ns, :id)"),
                  {"ns": ADVISORY_NAMESPACE, "id": search_id})


def claim(store: Store, search_id: int, worker_id: int) -> ClaimedJob | None:
    """Sweep expired leases, then hand out the oldest queued job, else a new step."""
    with store.transaction() as s:
        _lock_search(s, search_id)
        search = s.get(Search, search_id)
        if search is None or search.status not in ACTIVE + (FINISHED,):
            return None
        config = SearchConfig.from_dict(search.config)
        _sweep(s, search, config)
        # a finished search still hands out the retrain jobs queued on it
        kinds = (INIT, STEP, RETRAIN) if search.status in ACTIVE else (RETRAIN,)
        if search.status not in ACTIVE + (FINISHED,):
            return None
        job = s.scalars(select(Job).where(Job.search_id == search_id, Job.state == QUEUED,
                                          Job.kind.in_(kinds))
                        .order_by(Job.id).limit(1)).first()
        if job is None and search.status in ACTIVE:
            job = _create_step(s, search, config)
        if job is None:
            _finish_if_complete(s, search, config)
            return None
        token = uuid.uuid4().hex
        s.execute(update(Job).where(Job.id == job.id).values(
            state=CLAIMED, lease_token=token, worker_id=worker_id, attempt=Job.attempt + 1,
            heartbeat_at=db_now(), claimed_at=db_now()).execution_options(
            synchronize_session=False))
        if search.status == CREATED:
            search.status = RUNNING
        claimed = ClaimedJob(id=job.id, search_id=search_id, search_name=search.name,
                             kind=job.kind, step_index=job.step_index,
                             attempt=job.attempt + 1, lease_token=token, config=config,
                             checkpoint_root=search.checkpoint_root, genotype=job.genotype,
                             victim_id=job.victim_id, sample=job.sample, params=job.params)
        if job.parent_id is not None:
            p = s.get(Individual, job.parent_id)
            claimed.parent = ParentInfo(p.id, p.genotype, p.fitness, p.checkpoint_uri,
                                        p.checkpoint_sha256)
        return claimed


def _sweep(s: Session, search: Search, config: SearchConfig) -> int:
    expired = s.scalars(select(Job).where(
        Job.search_id == search.id, Job.state == CLAIMED,
        Job.heartbeat_at < db_now(-config.lease_seconds))).all()
    for job in expired:
        _requeue_or_kill(s, search, job, "lease expired",
                         f"lease expired (worker {job.worker_id}, attempt {job.attempt})")
    return len(expired)


def _requeue_or_kill(s: Session, search: Search, job: Job, kind: str, why: str) -> None:
    dead = job.attempt >= job.max_attempts
    job.state = DEAD if dead else QUEUED
    job.lease_token = None
    job.error = why
    if dead:
        job.finished_at = db_now()
    event(s, kind, f"job {job.id} ({job.kind} {job.step_index}): {why}; "
          + ("dead after max attempts" if dead else "requeued"),
          search_id=search.id, worker_id=job.worker_id, job_id=job.id)
    if dead and job.kind == INIT:
        # The population could never be complete: fail loudly rather than wait forever.
        search.status = FAILED
        search.finished_at = db_now()
        event(s, "search failed", f"init job {job.id} is dead: {why}", search_id=search.id)


def _init_pending(s: Session, search_id: int) -> int:
    # state IN (...) keeps this on the (search_id, state) index: never a scan of history
    return s.scalar(select(func.count()).where(
        Job.search_id == search_id, Job.kind == INIT, Job.state.in_((QUEUED, CLAIMED))))


def _create_step(s: Session, search: Search, config: SearchConfig) -> Job | None:
    if _init_pending(s, search.id):
        return None
    last = s.scalar(select(func.max(Job.step_index)).where(
        Job.search_id == search.id, Job.kind == STEP))
    step_index = 0 if last is None else last + 1
    if step_index >= config.steps:
        return None
    reserved = select(Job.victim_id).where(Job.search_id == search.id, Job.kind == STEP,
                                           Job.state.in_((QUEUED, CLAIMED)),
                                           Job.victim_id.is_not(None))
    rows = s.execute(select(Individual.id, Individual.fitness).where(
        Individual.search_id == search.id, Individual.alive.is_(True),
        Individual.origin != RETRAIN, Individual.id.not_in(reserved))).all()
    if len(rows) < config.sample:
        return None  # too many steps in flight for this population: wait for a commit
    t = tournament([Candidate(r[0], r[1]) for r in rows], config.sample, config.removal,
                   step_rng(config.seed, step_index))
    job = Job(search_id=search.id, kind=STEP, state=QUEUED, parent_id=t.parent_id,
              victim_id=t.victim_id, sample=list(t.sample), step_index=step_index,
              attempt=0, max_attempts=config.max_attempts, created_at=db_now())
    s.add(job)
    s.flush()
    return job


def _finish_if_complete(s: Session, search: Search, config: SearchConfig) -> None:
    busy = s.scalar(select(func.count()).where(
        Job.search_id == search.id, Job.kind.in_((INIT, STEP)),
        Job.state.in_((QUEUED, CLAIMED))))
    if busy:
        return
    steps = s.scalar(select(func.max(Job.step_index)).where(
        Job.search_id == search.id, Job.kind == STEP))
    created = 0 if steps is None else steps + 1
    # busy == 0 and no dead init job (that fails the search): every init job is done
    if created >= config.steps:
        search.status = FINISHED
        search.finished_at = db_now()
        event(s, "search finished", f"{created} steps created", search_id=search.id)


# -- results --------------------------------------------------------------------------
def _fenced_job(s: Session, job: ClaimedJob) -> Job:
    row = s.scalars(select(Job).where(Job.id == job.id).with_for_update()).one()
    if row.state != CLAIMED or row.lease_token != job.lease_token:
        raise LeaseLost(f"job {job.id}: lease lost (now {row.state}, attempt {row.attempt})")
    return row


def commit_job(store: Store, job: ClaimedJob, result: JobResult, worker_id: int) -> int:
    """Apply a finished job exactly once: child alive, victim dead, job done, episode.
    A retry after a lost acknowledgement finds its own result and returns it."""
    from renas_db.db.models import Episode
    # No per-search lock here: the job row (FOR UPDATE + lease fence) and the victim's
    # reservation by this running job are all a commit needs, so commits run in parallel
    # with claims. A finish missed by two racing last commits is caught by the next claim.
    with store.transaction() as s:
        done = s.scalar(select(Individual.id).join(Job, Job.id == Individual.job_id).where(
            Individual.job_id == job.id, Job.lease_token == job.lease_token))
        if done is not None:
            return done
        row = _fenced_job(s, job)
        search = s.get(Search, job.search_id)
        origin = {INIT: INIT, STEP: CHILD, RETRAIN: RETRAIN}[row.kind]
        child = Individual(
            search_id=job.search_id, job_id=job.id, origin=origin, parent_id=row.parent_id,
            genotype=result.genotype, arch_hash=result.arch_hash, alive=origin != RETRAIN,
            fitness=result.fitness, val_loss=result.val_loss,
            test_accuracy=result.test_accuracy, n_params=result.n_params,
            mult_adds=result.mult_adds, checkpoint_uri=result.checkpoint_uri,
            checkpoint_sha256=result.checkpoint_sha256, examples_seen=result.examples_seen,
            train_seconds=result.train_seconds, controller_version=result.controller_version,
            mutation=result.mutation, created_at=db_now())
        s.add(child)
        s.flush()
        if row.kind == STEP:
            killed = s.execute(update(Individual).where(
                Individual.id == row.victim_id, Individual.alive.is_(True)).values(
                alive=False, died_at=db_now(), removed_by_job_id=job.id)
                .execution_options(synchronize_session=False)).rowcount
            if killed != 1:
                raise StateError(f"job {job.id}: victim {row.victim_id} is not alive")
            if result.log_prob is not None and result.reward is not None:
                s.add(Episode(search_id=job.search_id, job_id=job.id,
                              controller_version=result.controller_version or 0,
                              actions=result.mutation or [], log_prob=result.log_prob,
                              reward=result.reward, fitness=result.fitness))
        row.state = DONE
        row.finished_at = db_now()
        row.error = None
        s.execute(update(Worker).where(Worker.id == worker_id)
                  .values(jobs_done=Worker.jobs_done + 1, heartbeat_at=db_now()))
        s.flush()
        if row.kind != RETRAIN:
            _finish_if_complete(s, search, job.config)
        return child.id


def fail_job(store: Store, job: ClaimedJob, error: str) -> str:
    """A training error: requeue (attempt counted) or dead after max_attempts."""
    with store.transaction() as s:
        _lock_search(s, job.search_id)
        row = _fenced_job(s, job)
        search = s.get(Search, job.search_id)
        _requeue_or_kill(s, search, row, "job failed", error)
        return row.state


def release_job(store: Store, job: ClaimedJob) -> None:
    """The worker was told to stop: give the job back without counting an attempt."""
    with store.transaction() as s:
        row = _fenced_job(s, job)
        row.state = QUEUED
        row.lease_token = None
        row.attempt = row.attempt - 1
        event(s, "job released", f"job {job.id} released by its worker (stop signal)",
              search_id=job.search_id, worker_id=row.worker_id, job_id=job.id)


def recover(store: Store, name: str) -> dict[str, int]:
    """Run the claim's sweep on demand: expired leases back to the queue (or dead)."""
    with store.transaction() as s:
        search = get_search(s, name)
        _lock_search(s, search.id)
        config = SearchConfig.from_dict(search.config)
        swept = _sweep(s, search, config)
        if search.status in ACTIVE:
            _finish_if_complete(s, search, config)
        queued = s.scalar(select(func.count()).where(Job.search_id == search.id,
                                                     Job.state == QUEUED))
        running = s.scalar(select(func.count()).where(Job.search_id == search.id,
                                                      Job.state == CLAIMED))
        return {"requeued_or_dead": swept, "queued": queued, "running": running}


# -- checkpoints ------------------------------------------------------------------------
def collectable_checkpoints(store: Store, search_id: int,
                            candidates: Sequence[int]) -> list[tuple[int, str]]:
    """Of the given individuals, the dead ones whose checkpoint no queued or running job
    still needs as its parent."""
    if not candidates:
        return []
    with store.transaction(write=False) as s:
        needed = select(Job.parent_id).where(Job.search_id == search_id,
                                             Job.state.in_((QUEUED, CLAIMED)),
                                             Job.parent_id.is_not(None))
        rows = s.execute(select(Individual.id, Individual.checkpoint_uri).where(
            Individual.id.in_(list(candidates)), Individual.alive.is_(False),
            Individual.checkpoint_uri.is_not(None), Individual.id.not_in(needed))).all()
        return [(r[0], r[1]) for r in rows]


def live_checkpoints(store: Store, search_id: int) -> set[str]:
    """Every checkpoint the search keeps: alive individuals, retrained networks and the
    parents of pending jobs."""
    with store.transaction(write=False) as s:
        # three bounded lookups (alive index, retrain jobs, pending jobs), not one OR
        # that would scan the whole history
        alive = select(Individual.checkpoint_uri).where(
            Individual.search_id == search_id, Individual.alive.is_(True))
        retrained = select(Individual.checkpoint_uri).join(Job, Job.id == Individual.job_id) \
            .where(Job.search_id == search_id, Job.kind == RETRAIN)
        parents = select(Individual.checkpoint_uri).join(Job, Job.parent_id == Individual.id) \
            .where(Job.search_id == search_id, Job.state.in_((QUEUED, CLAIMED)))
        uris = set()
        for q in (alive, retrained, parents):
            uris.update(u for u in s.scalars(q) if u)
        return uris


def mark_collected(store: Store, ids: Sequence[int]) -> None:
    with store.transaction() as s:
        s.execute(update(Individual).where(Individual.id.in_(list(ids)),
                                           Individual.alive.is_(False))
                  .values(checkpoint_uri=None, checkpoint_sha256=None))


def describe_or_none(store: Store, name: str) -> dict[str, Any] | None:
    with store.transaction(write=False) as s:
        search = s.scalars(select(Search).where(Search.name == name)).one_or_none()
        return None if search is None else {"name": search.name, "status": search.status}


def queue_retrain(store: Store, name: str, sources: Sequence[tuple[int | None, str]],
                  params: dict[str, Any]) -> list[int]:
    """Queue one retrain job per (source individual id, genotype)."""
    with store.transaction() as s:
        search = get_search(s, name)
        if search.status == FAILED:
            raise StateError(f"search {name!r} failed; nothing to retrain")
        last = s.scalar(select(func.max(Job.step_index)).where(
            Job.search_id == search.id, Job.kind == RETRAIN))
        start = 0 if last is None else last + 1
        jobs = []
        for k, (source_id, genotype) in enumerate(sources):
            job = Job(search_id=search.id, kind=RETRAIN, state=QUEUED, genotype=genotype,
                      parent_id=source_id, step_index=start + k, attempt=0,
                      max_attempts=search.config.get("max_attempts", 3), params=params,
                      created_at=db_now())
            s.add(job)
            jobs.append(job)
        s.flush()
        event(s, "retrain queued", f"{len(jobs)} retrain jobs", search_id=search.id)
        return [j.id for j in jobs]


def retrain_sources(store: Store, name: str, top: int | None) -> list[tuple[int, str]]:
    """The alive population best first (top K, or all of it)."""
    with store.transaction(write=False) as s:
        search = get_search(s, name)
        q = (select(Individual.id, Individual.genotype).where(
            Individual.search_id == search.id, Individual.alive.is_(True),
            Individual.origin != RETRAIN).order_by(Individual.fitness.desc(), Individual.id))
        if top is not None:
            q = q.limit(top)
        return [(r[0], r[1]) for r in s.execute(q).all()]


def create_retrain_search(store: Store, name: str, config: SearchConfig) -> int:
    """A search with no evolution, only to hold retrain jobs of a given genotype."""
    with store.transaction() as s:
        if s.scalar(select(Search.id).where(Search.name == name)) is not None:
            from renas_db.errors import AlreadyExistsError
            raise AlreadyExistsError(f"a search named {name!r} exists already")
        search = Search(name=name, status=FINISHED, config=config.to_dict(), seed=config.seed,
                        checkpoint_root=config.checkpoint_root, created_at=db_now(),
                        finished_at=db_now())
        s.add(search)
        s.flush()
        event(s, "search created", f"retrain-only search {name}", search_id=search.id)
        return search.id


def study_searches(store: Store, study: str) -> list[dict[str, Any]]:
    with store.transaction(write=False) as s:
        rows = s.scalars(select(Search).where(Search.study == study).order_by(Search.id)).all()
        if not rows:
            raise NotFoundError(f"no study named {study!r}")
        return [{"id": r.id, "name": r.name, "status": r.status, "config": r.config}
                for r in rows]
