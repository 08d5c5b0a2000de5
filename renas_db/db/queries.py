"""Every state transition of searches, jobs, individuals and workers.

Each public function is one short transaction (`Store.transaction`). Status strings are
spelled only here. Claims are serialised per search: pg_advisory_xact_lock on PostgreSQL,
BEGIN IMMEDIATE on SQLite.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Sequence

from sqlalchemy import Float, Integer, bindparam, exists, func, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from renas_db.config import SearchConfig
from renas_db.db.models import Episode, Event, Individual, Job, Search, Worker, db_now
from renas_db.db.prepared import Statements
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


# -- the hot path: claim and commit ------------------------------------------------------
# Claim and commit run once per child on every worker. They are Core statements built once
# at import and, on PostgreSQL, prepared once per connection (renas_db/db/prepared.py): a
# step's claim is 3 round trips and a commit 2, plus their COMMITs, and no ORM objects. The
# rare branch (expired leases) uses the ORM helpers on the same connection.
_J, _I, _S = Job.__table__, Individual.__table__, Search.__table__
_W, _EV, _EP = Worker.__table__, Event.__table__, Episode.__table__
_PARENT = _I.alias("parent")
_SID = bindparam("sid", type_=Integer)
_PENDING = (QUEUED, CLAIMED)
_CLAIMABLE = (_J.c.id, _J.c.kind, _J.c.step_index, _J.c.attempt, _J.c.genotype,
              _J.c.victim_id, _J.c.sample, _J.c.params, _J.c.parent_id, _PARENT.c.genotype,
              _PARENT.c.fitness, _PARENT.c.checkpoint_uri, _PARENT.c.checkpoint_sha256)


def _scalar(column: Any, *where: Any) -> Any:
    return select(column).where(_J.c.search_id == _SID, *where).scalar_subquery()


_Q = Statements("renas", {
    # claims are serialised per search (PostgreSQL; SQLite's BEGIN IMMEDIATE does it there)
    "lock": select(func.pg_advisory_xact_lock(ADVISORY_NAMESPACE, _SID)),
    # Everything a claim decides on, in one statement. Each subquery stays on the
    # (search_id, state, kind) or (search_id, kind, step_index) index: none grows with
    # the history.
    "state": select(
        _S.c.status, _S.c.name, _S.c.config, _S.c.checkpoint_root,
        exists().where(_J.c.search_id == _SID, _J.c.state == CLAIMED,
                       _J.c.heartbeat_at < db_now(bindparam("age", type_=Float)))
        .label("expired"),
        _scalar(func.min(_J.c.id), _J.c.state == QUEUED).label("queued"),
        _scalar(func.min(_J.c.id), _J.c.state == QUEUED, _J.c.kind == RETRAIN)
        .label("queued_retrain"),
        _scalar(func.count(), _J.c.kind == INIT, _J.c.state.in_(_PENDING))
        .label("init_pending"),
        _scalar(func.max(_J.c.step_index), _J.c.kind == STEP).label("last_step"),
    ).where(_S.c.id == _SID),
    "expired": select(_J.c.id).where(
        _J.c.search_id == _SID, _J.c.state == CLAIMED,
        _J.c.heartbeat_at < db_now(bindparam("age", type_=Float))).order_by(_J.c.id),
    "job": select(*_CLAIMABLE).select_from(
        _J.outerjoin(_PARENT, _PARENT.c.id == _J.c.parent_id))
    .where(_J.c.id == bindparam("jid", type_=Integer)),
    "take": update(_J).where(_J.c.id == bindparam("jid", type_=Integer)).values(
        state=CLAIMED, lease_token=bindparam("tok", type_=_J.c.lease_token.type),
        worker_id=bindparam("wid", type_=Integer), attempt=_J.c.attempt + 1,
        heartbeat_at=db_now(), claimed_at=db_now()),
    # the tournament's candidates: alive, not reserved as a pending step's victim
    "unreserved": select(_I.c.id, _I.c.fitness).where(
        _I.c.search_id == _SID, _I.c.alive.is_(True), _I.c.origin != RETRAIN,
        _I.c.id.not_in(select(_J.c.victim_id).where(
            _J.c.search_id == _SID, _J.c.kind == STEP, _J.c.state.in_(_PENDING),
            _J.c.victim_id.is_not(None)))),
    "insert_step": (insert(_J).values(heartbeat_at=db_now(), claimed_at=db_now(),
                                      created_at=db_now()),
                    ("search_id", "kind", "state", "parent_id", "victim_id", "sample",
                     "step_index", "attempt", "max_attempts", "lease_token", "worker_id")),
    # the step just inserted (found by its unique key) and its parent, in the insert's
    # round trip
    "new_step": select(_J.c.id, _PARENT.c.genotype, _PARENT.c.fitness,
                       _PARENT.c.checkpoint_uri, _PARENT.c.checkpoint_sha256)
    .select_from(_J.join(_PARENT, _PARENT.c.id == _J.c.parent_id))
    .where(_J.c.search_id == bindparam("search_id", type_=Integer), _J.c.kind == STEP,
           _J.c.step_index == bindparam("step_index", type_=Integer)),
    "start": update(_S).where(_S.c.id == _SID, _S.c.status == CREATED).values(status=RUNNING),
    # finished: every step created, no init or step job pending (a dead init job fails
    # the search instead, so nothing pending means the population was complete)
    "finish": update(_S).where(
        _S.c.id == _SID, _S.c.status.in_(ACTIVE),
        ~exists().where(_J.c.search_id == _SID, _J.c.kind.in_((INIT, STEP)),
                        _J.c.state.in_(_PENDING)),
        func.coalesce(_scalar(func.max(_J.c.step_index) + 1, _J.c.kind == STEP), 0)
        >= bindparam("steps", type_=Integer))
    .values(status=FINISHED, finished_at=db_now()),
    "event": (insert(_EV).values(created_at=db_now()), ("kind", "message", "search_id")),
    # the lease fence, the victim check and the state change in one statement: with the
    # job row locked by it and the victim reserved by this job, the kill that follows
    # cannot miss
    "done": update(_J).where(
        _J.c.id == bindparam("jid", type_=Integer), _J.c.state == CLAIMED,
        _J.c.lease_token == bindparam("tok", type_=_J.c.lease_token.type),
        or_(_J.c.victim_id.is_(None),
            exists().where(_I.c.id == _J.c.victim_id, _I.c.alive.is_(True))))
    .values(state=DONE, finished_at=db_now(), error=None)
    .returning(_J.c.kind, _J.c.parent_id, _J.c.victim_id),
    "applied": select(_J.c.state, _J.c.attempt, _J.c.lease_token, _J.c.victim_id, _I.c.id)
    .select_from(_J.outerjoin(_I, _I.c.job_id == _J.c.id))
    .where(_J.c.id == bindparam("jid", type_=Integer)),
    "child": (insert(_I).values(created_at=db_now()).returning(_I.c.id),
              ("search_id", "job_id", "origin", "parent_id", "genotype", "arch_hash", "alive",
               "fitness", "val_loss", "test_accuracy", "n_params", "mult_adds",
               "checkpoint_uri", "checkpoint_sha256", "examples_seen", "train_seconds",
               "controller_version", "mutation")),
    "kill": update(_I).where(_I.c.id == bindparam("vid", type_=Integer),
                             _I.c.alive.is_(True)).values(
        alive=False, died_at=db_now(), removed_by_job_id=bindparam("jid", type_=Integer)),
    # sent with the child's INSERT, whose parameters it shares (controller_version may
    # be None there; an episode's is 0 then)
    "episode": (insert(_EP).values(controller_version=func.coalesce(
        bindparam("controller_version", type_=Integer), 0)),
        ("search_id", "job_id", "actions", "log_prob", "reward", "fitness")),
    "worker_done": update(_W).where(_W.c.id == bindparam("wid", type_=Integer))
    .values(jobs_done=_W.c.jobs_done + 1, heartbeat_at=db_now()),
})
_configs: dict[int, tuple[dict, SearchConfig]] = {}


def _config_of(search_id: int, raw: dict) -> SearchConfig:
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
        _Q.run(conn, key, {"sid": search_id})


def _sweep(conn: Connection, search_id: int, lease_seconds: float) -> int:
    """Expired leases back to the queue, or dead after max_attempts (the ORM writes the
    requeues and their events; this is the rare branch)."""
    expired = _Q.run(conn, "expired", {"sid": search_id, "age": -lease_seconds}).scalars().all()
    if not expired:
        return 0
    with Session(bind=conn) as s:
        _requeue_expired(s, s.get(Search, search_id), expired)
        s.flush()
    return len(expired)


def claim(store: Store, search_id: int, worker_id: int) -> ClaimedJob | None:
    """Sweep expired leases, then hand out the oldest queued job, else a new step."""
    with store.connection() as conn:
        # the lease length lives in the search's config: remembered from the last claim
        cached = _configs.get(search_id)
        params = {"sid": search_id, "age": -cached[1].lease_seconds if cached else 0.0}
        # the search lock and the state read in one round trip on PostgreSQL
        state = _Q.run(conn, "state", params, before=_lock(conn)).first()
        if state is None:
            return None
        config = _config_of(search_id, state.config)
        if params["age"] != -config.lease_seconds or state.expired:
            params["age"] = -config.lease_seconds
            if _sweep(conn, search_id, config.lease_seconds):
                state = _Q.run(conn, "state", params).one()  # a dead init job fails it
        if state.status not in ACTIVE + (FINISHED,):
            return None
        # a finished search still hands out the retrain jobs queued on it
        active = state.status in ACTIVE
        queued = state.queued if active else state.queued_retrain
        token = uuid.uuid4().hex
        if queued is not None:
            row = _Q.run(conn, "job", {"jid": queued}).one()
            _Q.run(conn, "take", {"jid": row.id, "tok": token, "wid": worker_id})
            job = ClaimedJob(id=row.id, search_id=search_id, search_name=state.name,
                             kind=row.kind, step_index=row.step_index, attempt=row.attempt + 1,
                             lease_token=token, config=config,
                             checkpoint_root=state.checkpoint_root, genotype=row.genotype,
                             victim_id=row.victim_id, sample=row.sample, params=row.params)
            if row.parent_id is not None:
                job.parent = ParentInfo(row.parent_id, *row[9:13])
        elif not active:
            return None
        else:
            job = _create_step(conn, search_id, state, config, token, worker_id)
            if job is None:
                _finish_if_complete(conn, search_id, config)
                return None
        if state.status == CREATED:
            _Q.run(conn, "start", {"sid": search_id})
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
    rows = _Q.run(conn, "unreserved", {"sid": search_id}).all()
    if len(rows) < config.sample:
        return None  # too many steps in flight for this population: wait for a commit
    t = tournament([Candidate(r[0], r[1]) for r in rows], config.sample, config.removal,
                   step_rng(config.seed, step_index))
    step = _Q.run(conn, "new_step", {
        "search_id": search_id, "kind": STEP, "state": CLAIMED, "parent_id": t.parent_id,
        "victim_id": t.victim_id, "sample": list(t.sample), "step_index": step_index,
        "attempt": 1, "max_attempts": config.max_attempts, "lease_token": token,
        "worker_id": worker_id}, before=("insert_step",)).one()
    return ClaimedJob(id=step[0], search_id=search_id, search_name=state.name, kind=STEP,
                      step_index=step_index, attempt=1, lease_token=token, config=config,
                      checkpoint_root=state.checkpoint_root, victim_id=t.victim_id,
                      sample=list(t.sample), parent=ParentInfo(t.parent_id, *step[1:]))


def _requeue_expired(s: Session, search: Search, job_ids: Sequence[int]) -> None:
    for job in s.scalars(select(Job).where(Job.id.in_(list(job_ids))).order_by(Job.id)):
        _requeue_or_kill(s, search, job, "lease expired",
                         f"lease expired (worker {job.worker_id}, attempt {job.attempt})")


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


def _finish_if_complete(conn: Connection, search_id: int, config: SearchConfig) -> None:
    if _Q.run(conn, "finish", {"sid": search_id, "steps": config.steps}).rowcount:
        _Q.run(conn, "event", {"kind": "search finished", "search_id": search_id,
                               "message": f"{config.steps} steps created"})


# -- results --------------------------------------------------------------------------
def _fenced_job(s: Session, job: ClaimedJob) -> Job:
    row = s.scalars(select(Job).where(Job.id == job.id).with_for_update()).one()
    if row.state != CLAIMED or row.lease_token != job.lease_token:
        raise LeaseLost(f"job {job.id}: lease lost (now {row.state}, attempt {row.attempt})")
    return row


def commit_job(store: Store, job: ClaimedJob, result: JobResult, worker_id: int) -> int:
    """Apply a finished job exactly once: child alive, victim dead, job done, episode.
    A retry after a lost acknowledgement finds its own result and returns it."""
    # No per-search lock here: the fenced job row (locked by its UPDATE) and the victim's
    # reservation by this running job are all a commit needs, so commits run in parallel
    # with claims. Nor a finish check: the search is marked finished by the next claim
    # that finds nothing left to do, which every worker makes after its commit.
    with store.connection() as conn:
        row = _Q.run(conn, "done", {"jid": job.id, "tok": job.lease_token}).first()
        if row is None:
            state, attempt, token, victim, child_id = _Q.run(conn, "applied",
                                                             {"jid": job.id}).one()
            if token == job.lease_token and child_id is not None:
                return child_id
            if token == job.lease_token and state == CLAIMED:
                raise StateError(f"job {job.id}: victim {victim} is not alive")
            raise LeaseLost(f"job {job.id}: lease lost (now {state}, attempt {attempt})")
        origin = {INIT: INIT, STEP: CHILD, RETRAIN: RETRAIN}[row.kind]
        before: tuple[str, ...] = ("worker_done",)
        if row.kind == STEP:
            before += ("kill",)
            if result.log_prob is not None and result.reward is not None:
                before += ("episode",)
        # one round trip on PostgreSQL: the counter, the kill, the episode, the child
        child_id = _Q.run(conn, "child", {
            "search_id": job.search_id, "job_id": job.id, "origin": origin,
            "parent_id": row.parent_id, "genotype": result.genotype,
            "arch_hash": result.arch_hash, "alive": origin != RETRAIN,
            "fitness": result.fitness, "val_loss": result.val_loss,
            "test_accuracy": result.test_accuracy, "n_params": result.n_params,
            "mult_adds": result.mult_adds, "checkpoint_uri": result.checkpoint_uri,
            "checkpoint_sha256": result.checkpoint_sha256,
            "examples_seen": result.examples_seen, "train_seconds": result.train_seconds,
            "controller_version": result.controller_version,
            "mutation": result.mutation, "actions": result.mutation or [],
            "log_prob": result.log_prob, "reward": result.reward,
            "wid": worker_id, "vid": row.victim_id, "jid": job.id}, before=before).scalar_one()
        return child_id


def fail_job(store: Store, job: ClaimedJob, error: str) -> str:
    """A training error: requeue (attempt counted) or dead after max_attempts."""
    with store.transaction() as s:
        _lock_search(s.connection(), job.search_id)
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
        _lock_search(s.connection(), search.id)
        config = SearchConfig.from_dict(search.config)
        swept = _sweep(s.connection(), search.id, config.lease_seconds)
        # a no-op unless the search is still created or running (the UPDATE checks)
        _finish_if_complete(s.connection(), search.id, config)
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
