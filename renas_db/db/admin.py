"""Search administration: searches, workers, retrain and study queueing, the events log."""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import func, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from renas_db import store_roots
from renas_db.config import SearchConfig
from renas_db.db.models import Event, Individual, Job, Search, Worker, db_now
from renas_db.db.session import Store
from renas_db.db.snapshots import insert_snapshot
from renas_db.errors import AlreadyExistsError, NotFoundError, StateError
from renas_db.jobs import ACTIVE_STATUSES, PENDING_STATES, JobKind, JobState, Origin, SearchStatus


def event(session: Session, kind: str, message: str, *, search_id: int | None = None,
          worker_id: int | None = None, job_id: int | None = None) -> None:
    session.add(Event(kind=kind, message=message[:2000], search_id=search_id,
                      worker_id=worker_id, job_id=job_id, created_at=db_now()))


# -- searches -----------------------------------------------------------------------------
def get_search(session: Session, name: str) -> Search:
    search = session.scalars(select(Search).where(Search.name == name)).one_or_none()
    if search is None:
        known = session.scalars(select(Search.name).order_by(Search.id).limit(5)).all()
        hint = f" (known: {', '.join(known)})" if known else " (no searches yet)"
        raise NotFoundError(f"no search named {name!r}{hint}")
    return search


def absolute_root(config: SearchConfig) -> SearchConfig:
    """The config with checkpoint_root made absolute against this process's folder (a
    relative root would be resolved against each worker's own current folder). An
    s3:// root is kept as it is."""
    if store_roots.is_uri(config.checkpoint_root):
        return config
    root = os.path.abspath(os.path.expanduser(config.checkpoint_root))
    return config if root == config.checkpoint_root else config.replace(checkpoint_root=root)


def _refuse_existing(s: Session, name: str) -> None:
    if s.scalar(select(Search.id).where(Search.name == name)) is not None:
        raise AlreadyExistsError(f"a search named {name!r} exists already")


def create_search(store: Store, name: str, config: SearchConfig, genotypes: Sequence[str],
                  snapshot0: bytes | None, study: str | None = None) -> int:
    """The search row, its P init jobs and (for renas) controller snapshot 0, at once.
    The checkpoint root is stored absolute: every worker resolves it the same way."""
    config = absolute_root(config)
    with store.transaction() as s:
        _refuse_existing(s, name)
        search = Search(name=name, status=SearchStatus.CREATED, config=config.to_dict(),
                        seed=config.seed, checkpoint_root=config.checkpoint_root,
                        created_at=db_now(), study=study)
        s.add(search)
        s.flush()
        for i, genotype in enumerate(genotypes):
            s.add(Job(search_id=search.id, kind=JobKind.INIT, state=JobState.QUEUED,
                      genotype=genotype, step_index=i, attempt=0,
                      max_attempts=config.max_attempts, created_at=db_now()))
        if snapshot0 is not None:
            insert_snapshot(s, search.id, 0, snapshot0, episodes_seen=0)
        event(s, "search created", f"search {name} created with {len(genotypes)} init jobs",
              search_id=search.id)
        return search.id


def create_retrain_search(store: Store, name: str, config: SearchConfig) -> int:
    """A search with no evolution, only to hold retrain jobs of a given genotype."""
    config = absolute_root(config)
    with store.transaction() as s:
        _refuse_existing(s, name)
        search = Search(name=name, status=SearchStatus.FINISHED, config=config.to_dict(),
                        seed=config.seed, checkpoint_root=config.checkpoint_root,
                        created_at=db_now(), finished_at=db_now())
        s.add(search)
        s.flush()
        event(s, "search created", f"retrain-only search {name}", search_id=search.id)
        return search.id


def set_search_status(store: Store, name: str, status: SearchStatus) -> str:
    """pause / resume. Returns the previous status. The transition is one UPDATE guarded
    by the status read, so a status that changed meanwhile (a dead init job failing the
    search, the last claim finishing it) is never overwritten: the call is refused."""
    allowed = {SearchStatus.PAUSED: ACTIVE_STATUSES,
               SearchStatus.RUNNING: (SearchStatus.PAUSED, SearchStatus.CREATED,
                                      SearchStatus.RUNNING)}
    verb = "pause" if status == SearchStatus.PAUSED else "resume"
    with store.transaction() as s:
        search = get_search(s, name)
        old = search.status
        # Session.execute is typed as Result; a bulk UPDATE's is a CursorResult
        moved = cast(CursorResult[Any], s.execute(update(Search).where(
            Search.id == search.id, Search.status == old,
            Search.status.in_(allowed[status])).values(status=status)
            .execution_options(synchronize_session=False))).rowcount
        if moved != 1:
            now = s.scalar(select(Search.status).where(Search.id == search.id)
                           .execution_options(populate_existing=True))
            raise StateError(f"search {name!r} is {now}; cannot {verb} it")
        event(s, f"search {verb}d", f"{old} -> {status}", search_id=search.id)
        return str(old)


def list_searches(store: Store) -> list[dict[str, Any]]:
    with store.transaction(write=False) as s:
        alive = (select(func.count()).where(Individual.search_id == Search.id,
                                            Individual.alive.is_(True),
                                            Individual.origin != Origin.RETRAIN)
                 .correlate(Search).scalar_subquery())
        best = (select(func.max(Individual.fitness))
                .where(Individual.search_id == Search.id, Individual.origin != Origin.RETRAIN)
                .correlate(Search).scalar_subquery())
        steps = (select(func.count()).where(Job.search_id == Search.id,
                                            Job.kind == JobKind.STEP,
                                            Job.state == JobState.DONE)
                 .correlate(Search).scalar_subquery())
        rows = s.execute(select(Search, alive, best, steps).order_by(Search.id)).all()
        return [{"name": r[0].name, "status": r[0].status,
                 "mutator": r[0].config.get("mutator"), "alive": r[1], "best_fitness": r[2],
                 "steps_done": r[3], "steps": r[0].config.get("steps"),
                 "created_at": r[0].created_at.isoformat(sep=" ", timespec="seconds")}
                for r in rows]


def describe_or_none(store: Store, name: str) -> dict[str, Any] | None:
    with store.transaction(write=False) as s:
        search = s.scalars(select(Search).where(Search.name == name)).one_or_none()
        return None if search is None else {"name": search.name, "status": search.status}


def active_search_ids(store: Store, name: str | None) -> list[int]:
    """The searches a worker may claim from: the named one, else every active search and
    every finished one with retrain jobs pending."""
    with store.transaction(write=False) as s:
        if name is not None:
            return [get_search(s, name).id]
        retrain = select(Job.search_id).where(Job.kind == JobKind.RETRAIN,
                                              Job.state.in_(PENDING_STATES))
        return list(s.scalars(select(Search.id).where(
            Search.status.in_(ACTIVE_STATUSES)
            | (Search.status == SearchStatus.FINISHED) & Search.id.in_(retrain))
            .order_by(Search.id)))


def checkpoint_roots(store: Store, search_ids: Sequence[int]) -> list[str]:
    """The checkpoint roots of these searches, each once."""
    with store.transaction(write=False) as s:
        return sorted(set(s.scalars(select(Search.checkpoint_root).where(
            Search.id.in_(list(search_ids))))))


def has_work(store: Store, search_id: int) -> bool:
    """Whether a search may still hand out jobs (running, or retrain jobs pending)."""
    with store.transaction(write=False) as s:
        status = s.scalar(select(Search.status).where(Search.id == search_id))
        if status in ACTIVE_STATUSES:
            return True
        if status != SearchStatus.FINISHED:
            return False
        return bool(s.scalar(select(func.count()).where(
            Job.search_id == search_id, Job.kind == JobKind.RETRAIN,
            Job.state.in_(PENDING_STATES))))


# -- workers ------------------------------------------------------------------------------
def register_worker(store: Store, host: str, pid: int, device: str) -> int:
    with store.transaction() as s:
        worker = Worker(host=host, pid=pid, device=device, started_at=db_now(),
                        heartbeat_at=db_now(), state="running", jobs_done=0)
        s.add(worker)
        s.flush()
        event(s, "worker started", f"{host} pid {pid} on {device}", worker_id=worker.id)
        return worker.id


def search_target(store: Store, search_id: int) -> tuple[str, dict[str, Any], str]:
    """(name, config, checkpoint_root) of a search: what a worker's fitness check needs."""
    with store.transaction(write=False) as s:
        row = s.execute(select(Search.name, Search.config, Search.checkpoint_root)
                        .where(Search.id == search_id)).one()
        return row[0], row[1], row[2]


def worker_unfit(store: Store, worker_id: int, search_id: int, message: str,
                 unfit: str) -> None:
    """The worker cannot serve the search: a `worker unfit` event (the search's), and
    the worker's row's `unfit`, every search it cannot serve with why, one per line."""
    with store.transaction() as s:
        s.execute(update(Worker).where(Worker.id == worker_id)
                  .values(unfit=unfit[:4000], heartbeat_at=db_now())
                  .execution_options(synchronize_session=False))
        event(s, "worker unfit", message, search_id=search_id, worker_id=worker_id)


def worker_stopped(store: Store, worker_id: int, reason: str) -> None:
    with store.transaction() as s:
        s.execute(update(Worker).where(Worker.id == worker_id)
                  .values(state="stopped", heartbeat_at=db_now()))
        event(s, "worker stopped", reason, worker_id=worker_id)


# -- retrain and studies ------------------------------------------------------------------
def queue_retrain(store: Store, name: str, sources: Sequence[tuple[int | None, str]],
                  params: dict[str, Any]) -> list[int]:
    """Queue one retrain job per (source individual id, genotype)."""
    with store.transaction() as s:
        search = get_search(s, name)
        if search.status == SearchStatus.FAILED:
            raise StateError(f"search {name!r} failed; nothing to retrain")
        last = s.scalar(select(func.max(Job.step_index)).where(
            Job.search_id == search.id, Job.kind == JobKind.RETRAIN))
        start = 0 if last is None else last + 1
        jobs = []
        for k, (source_id, genotype) in enumerate(sources):
            job = Job(search_id=search.id, kind=JobKind.RETRAIN, state=JobState.QUEUED,
                      genotype=genotype, parent_id=source_id, step_index=start + k,
                      attempt=0, max_attempts=search.config.get("max_attempts", 3),
                      params=params, created_at=db_now())
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
            Individual.origin != Origin.RETRAIN)
            .order_by(Individual.fitness.desc(), Individual.id))
        if top is not None:
            q = q.limit(top)
        return [(r[0], r[1]) for r in s.execute(q).all()]


def study_searches(store: Store, study: str) -> list[dict[str, Any]]:
    """The searches of a study, each with the mean fitness of its initial population."""
    with store.transaction(write=False) as s:
        rows = s.scalars(select(Search).where(Search.study == study).order_by(Search.id)).all()
        if not rows:
            raise NotFoundError(f"no study named {study!r}")
        initial = dict(s.execute(select(Individual.search_id, func.avg(Individual.fitness))
                                 .where(Individual.search_id.in_([r.id for r in rows]),
                                        Individual.origin == Origin.INIT)
                                 .group_by(Individual.search_id)).tuples().all())
        return [{"id": r.id, "name": r.name, "status": r.status, "config": r.config,
                 "initial_mean": initial.get(r.id)} for r in rows]
