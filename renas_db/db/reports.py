"""Read-only reports: search details, live status, and the search invariants in SQL."""
from __future__ import annotations

import math
from typing import Any

from sqlalchemy import func, select

from renas_db.checkpoints import open_store
from renas_db.db.admin import get_search
from renas_db.db.models import (
    ControllerSnapshot,
    Episode,
    Event,
    Individual,
    Job,
    Worker,
    db_now,
)
from renas_db.db.session import Store
from renas_db.jobs import PENDING_STATES, JobKind, JobState, Origin

UNFIT_SHOWN = 10  # status lists the newest unfit workers of a search, at most this many
INIT, STEP, RETRAIN = JobKind.INIT, JobKind.STEP, JobKind.RETRAIN
QUEUED, RUNNING, DONE, DEAD = JobState.QUEUED, JobState.RUNNING, JobState.DONE, JobState.DEAD

# What `check_invariants` tests, by the number its findings start with (docs/design.md).
INVARIANTS = {
    1: "as many individuals are alive as init jobs are done, at most P; exactly P once "
       "steps start",
    2: "every child has one parent; no individual dies twice; every step removes exactly "
       "one victim",
    3: "a job's result is applied at most once",
    4: "every alive individual's checkpoint exists and matches its sha256",
    5: "steps created never exceed E; controller versions are contiguous; each episode is "
       "consumed once",
}


def explain(problem: str) -> str:
    """'2: detail' -> 'invariant 2 (its text): detail'."""
    number, _, detail = problem.partition(": ")
    text = INVARIANTS.get(int(number)) if number.isdigit() else None
    return f"invariant {number} ({text}): {detail}" if text else problem


def _individual(i: Individual) -> dict[str, Any]:
    return {"id": i.id, "origin": i.origin, "parent_id": i.parent_id, "fitness": i.fitness,
            "genotype": i.genotype, "n_params": i.n_params, "alive": i.alive}


def describe_search(store: Store, name: str) -> dict[str, Any]:
    with store.transaction(write=False) as s:
        search = get_search(s, name)
        best = s.scalars(select(Individual).where(
            Individual.search_id == search.id, Individual.alive.is_(True),
            Individual.origin != Origin.RETRAIN)
            .order_by(Individual.fitness.desc(), Individual.id)
            .limit(5)).all()
        return {"name": search.name, "status": search.status, "seed": search.seed,
                "checkpoint_root": search.checkpoint_root,
                "created_at": search.created_at.isoformat(sep=" ", timespec="seconds"),
                "finished_at": search.finished_at.isoformat(sep=" ", timespec="seconds")
                if search.finished_at else None,
                "config": search.config, "best": [_individual(i) for i in best]}


def expected_examples(cfg: dict[str, Any], kind: str) -> int | None:
    """The examples a job of this kind trains on, where the config alone says (the
    executor's arithmetic: init trains init_epochs over the subset, a step fine-tunes on
    finetune_examples or the subset); None where it takes the dataset's size."""
    subset = cfg.get("train_subset")
    if kind == INIT:
        return max(1, round(float(cfg.get("init_epochs", 1.0)) * subset)) if subset else None
    if kind == STEP:
        return cfg.get("finetune_examples") or subset
    return None


def _waiting(s: Any, search: Any, counts: dict[str, int], steps_done: int, init_done: int,
             running: int) -> dict[str, Any]:
    """Workers waiting for work, and why the search has none for them. Waiting: running,
    holding no job, and seen (an empty claim renews workers.heartbeat_at) within the
    search's lease; workers are not tied to one search, so every search counts them."""
    cfg = search.config
    lease = float(cfg.get("lease_seconds", 120.0))
    busy = select(Job.worker_id).where(Job.state == RUNNING, Job.worker_id.is_not(None))
    n = s.scalar(select(func.count()).where(
        Worker.state == "running", Worker.heartbeat_at >= db_now(-lease),
        Worker.id.not_in(busy)))
    population, steps = int(cfg.get("population", 0)), int(cfg.get("steps", 0))
    last = s.scalar(select(func.max(Job.step_index)).where(Job.search_id == search.id,
                                                           Job.kind == STEP))
    created = 0 if last is None else last + 1
    backoff = s.scalar(select(func.count()).where(
        Job.search_id == search.id, Job.state == QUEUED, Job.not_before > db_now()))
    ready = counts.get(QUEUED, 0) - int(backoff or 0)
    if search.status not in ("created", "running"):
        why = f"the search is {search.status}"
    elif ready:
        why = "none: a claim would hand out work"
    elif backoff:
        why = f"{backoff} queued jobs wait out their retry backoff"
    elif init_done < population:
        why = (f"the initial population is being trained ({init_done}/{population} done): "
               "steps start once it is complete")
    elif created >= steps:
        why = f"all {steps} steps created, {running} still running"
    elif cfg.get("victim") == "claim" and running >= population - int(cfg.get("sample", 0)) + 1:
        why = (f"{running} steps in flight reserve their victims (victim = claim): at most "
               "P - S + 1 at once")
    else:
        why = "none: a claim would hand out work"
    return {"count": int(n or 0), "why": why}


def search_status(store: Store, name: str) -> dict[str, Any]:
    """Everything `renas-db status` shows, in one read transaction."""
    with store.transaction(write=False) as s:
        search = get_search(s, name)
        sid = search.id
        cfg = search.config
        counts: dict[str, int] = dict(s.execute(select(Job.state, func.count()).where(
            Job.search_id == sid, Job.kind != RETRAIN).group_by(Job.state)).tuples().all())
        steps_done = s.scalar(select(func.count()).where(
            Job.search_id == sid, Job.kind == STEP, Job.state == DONE))
        init_done = s.scalar(select(func.count()).where(
            Job.search_id == sid, Job.kind == INIT, Job.state == DONE))
        fit = [f for f in s.scalars(select(Individual.fitness).where(
            Individual.search_id == sid, Individual.alive.is_(True),
            Individual.origin != Origin.RETRAIN)) if f is not None]
        mean = std = None
        if fit:
            mean = sum(fit) / len(fit)
            std = math.sqrt(sum((f - mean) ** 2 for f in fit) / len(fit))
        models, examples = s.execute(select(func.count(), func.coalesce(
            func.sum(Individual.examples_seen), 0)).where(
            Individual.search_id == sid, Individual.origin != Origin.RETRAIN)).one()
        snap = s.execute(select(ControllerSnapshot.version, ControllerSnapshot.mean_reward,
                                ControllerSnapshot.baseline)
                         .where(ControllerSnapshot.search_id == sid)
                         .order_by(ControllerSnapshot.version.desc()).limit(1)).first()
        running = s.execute(select(Job.id, Job.kind, Job.step_index, Job.attempt, Worker.id,
                                   Worker.host, Worker.pid, Worker.device, Job.heartbeat_at,
                                   Job.progress)
                            .join(Worker, Worker.id == Job.worker_id)
                            .where(Job.search_id == sid, Job.state == RUNNING)
                            .order_by(Job.id)).all()
        failures = s.scalar(select(func.count()).where(
            Event.search_id == sid,
            Event.kind.in_(("job failed", "lease expired", "job stalled"))))
        episodes = s.scalar(select(func.count()).where(Episode.search_id == sid))
        # the newest `worker unfit` event of each worker for this search
        newest = (select(func.max(Event.id)).where(Event.search_id == sid,
                                                   Event.kind == "worker unfit")
                  .group_by(Event.worker_id))
        unfit = s.execute(select(Worker.id, Worker.host, Worker.pid, Worker.device,
                                 Worker.state, Event.message)
                          .join(Worker, Worker.id == Event.worker_id)
                          .where(Event.id.in_(newest)).order_by(Event.id.desc())
                          .limit(UNFIT_SHOWN)).all()
        waiting = _waiting(s, search, counts, steps_done or 0, init_done or 0, len(running))
        quarantined = list(s.scalars(select(Individual.id).where(
            Individual.search_id == sid, Individual.quarantined.is_(True),
            Individual.alive.is_(True)).order_by(Individual.id)))
        return {
            "name": search.name, "status": search.status, "mutator": cfg.get("mutator"),
            "population": cfg.get("population"), "init_done": init_done,
            "steps_done": steps_done, "steps": cfg.get("steps"),
            "jobs": {k: counts.get(k, 0) for k in JobState},
            "alive": len(fit), "best_fitness": max(fit) if fit else None,
            "mean_fitness": mean, "std_fitness": std,
            "controller_version": snap[0] if snap else None,
            "controller_mean_reward": snap[1] if snap else None,
            "episodes": episodes,
            "models_trained": models, "examples": int(examples),
            # a count: the mean rounded to whole examples (v_cost has the exact mean)
            "examples_per_model": round(int(examples) / models) if models else None,
            "failures": failures,
            "quarantined": quarantined,
            "waiting": waiting,
            "workers": [{"job": r[0], "kind": r[1], "index": r[2], "attempt": r[3],
                         "worker": r[4], "host": r[5], "pid": r[6], "device": r[7],
                         "examples_done": r[9], "examples_total": expected_examples(cfg, r[1])}
                        for r in running],
            "unfit_workers": [{"worker": r[0], "host": r[1], "pid": r[2], "device": r[3],
                               "state": r[4],
                               "why": r[5].split(f"cannot serve search {search.name} ", 1)[-1]}
                              for r in unfit],
        }


def check_invariants(store: Store, name: str, checkpoint_root: str | None = None
                     ) -> list[str]:
    """The invariants of INVARIANTS checked with SQL (and the checkpoint files): one
    finding per violation, starting with the invariant's number; [] = all hold."""
    problems: list[str] = []
    with store.transaction(write=False) as s:
        search = get_search(s, name)
        sid, cfg = search.id, search.config
        P = cfg["population"]
        init_done = s.scalar(select(func.count()).where(
            Job.search_id == sid, Job.kind == INIT, Job.state == DONE))
        alive = s.scalar(select(func.count()).where(
            Individual.search_id == sid, Individual.alive.is_(True),
            Individual.origin != Origin.RETRAIN))
        # at every phase: a step adds one individual and kills one, so as many are alive
        # as init jobs committed, never more than P, and steps only once all P are in
        steps_made = s.scalar(select(func.count()).where(Job.search_id == sid,
                                                          Job.kind == STEP))
        if init_done == P and alive != P:
            problems.append(f"1: {alive} individuals alive, expected P={P}")
        elif init_done > P:
            problems.append(f"1: {init_done} init jobs done, more than P={P}")
        elif init_done < P:
            if alive != init_done:
                problems.append(f"1: {alive} individuals alive during the initial "
                                f"population, expected {init_done} (one per init job done)")
            if steps_made:
                problems.append(f"1: {steps_made} steps created with only {init_done} of "
                                f"P={P} initial individuals")
        # 2. every child has one parent; every step removes exactly one victim
        orphans = s.scalar(select(func.count()).where(
            Individual.search_id == sid, Individual.origin == Origin.CHILD,
            Individual.parent_id.is_(None)))
        if orphans:
            problems.append(f"2: {orphans} children without a parent")
        steps_done = s.scalar(select(func.count()).where(
            Job.search_id == sid, Job.kind == STEP, Job.state == DONE))
        removed = s.scalar(select(func.count()).where(
            Individual.search_id == sid, Individual.removed_by_job_id.is_not(None)))
        dead = s.scalar(select(func.count()).where(
            Individual.search_id == sid, Individual.alive.is_(False),
            Individual.origin != Origin.RETRAIN))
        if removed != steps_done or dead != steps_done:
            problems.append(f"2: {steps_done} steps done but {removed} removals, {dead} dead")
        double = s.scalar(select(func.count()).select_from(
            select(Individual.removed_by_job_id).where(
                Individual.search_id == sid, Individual.removed_by_job_id.is_not(None))
            .group_by(Individual.removed_by_job_id).having(func.count() > 1).subquery()))
        if double:
            problems.append(f"2: {double} steps removed more than one individual")
        # 3. a job's result applied at most once
        per_job = s.scalar(select(func.count()).select_from(
            select(Individual.job_id).where(Individual.search_id == sid)
            .group_by(Individual.job_id).having(func.count() > 1).subquery()))
        done_without = s.scalar(select(func.count()).where(
            Job.search_id == sid, Job.state == DONE,
            ~select(Individual.id).where(Individual.job_id == Job.id).exists()))
        if per_job or done_without:
            problems.append(f"3: {per_job} jobs applied twice, {done_without} done jobs "
                            "without a result")
        # 5. steps never exceed E; versions contiguous; episodes consumed once
        last = s.scalar(select(func.max(Job.step_index)).where(
            Job.search_id == sid, Job.kind == STEP))
        if last is not None and last + 1 > cfg["steps"]:
            problems.append(f"5: {last + 1} steps created, E={cfg['steps']}")
        versions = list(s.scalars(select(ControllerSnapshot.version).where(
            ControllerSnapshot.search_id == sid).order_by(ControllerSnapshot.version)))
        if versions and versions != list(range(len(versions))):
            problems.append(f"5: controller versions not contiguous: {versions[:10]}...")
        bad = s.scalar(select(func.count()).where(
            Episode.search_id == sid, Episode.consumed_in_version.is_not(None),
            ~Episode.consumed_in_version.in_(versions or [-1])))
        if bad:
            problems.append(f"5: {bad} episodes consumed by a version that does not exist")
        rows = s.execute(select(Individual.id, Individual.checkpoint_uri,
                                Individual.checkpoint_sha256, Individual.quarantined).where(
            Individual.search_id == sid, Individual.alive.is_(True),
            Individual.origin != Origin.RETRAIN)).all()
        root = checkpoint_root or search.checkpoint_root
    store_ = open_store(root)  # a folder or s3://: objects are hashed like files
    for ind_id, uri, sha, quarantined in rows:
        if not uri or not sha or not store_.verify(uri, sha):
            note = "; quarantined: never a parent, removable as a victim" if quarantined \
                else ""
            problems.append(f"4: checkpoint of alive individual {ind_id} missing or "
                            f"not matching its sha256 ({uri}{note})")
    return problems


def retrain_report(store: Store, name: str) -> dict[str, Any]:
    """Retrained networks ranked by validation accuracy; the best is the derived cell."""
    with store.transaction(write=False) as s:
        search = get_search(s, name)
        rows = s.execute(select(Individual, Job.params).join(Job, Job.id == Individual.job_id)
                         .where(Individual.search_id == search.id,
                                Individual.origin == Origin.RETRAIN)
                         .order_by(Individual.fitness.desc(), Individual.id)).all()
        pending = s.scalar(select(func.count()).where(
            Job.search_id == search.id, Job.kind == RETRAIN, Job.state.in_(PENDING_STATES)))
        source_fitness: dict[int, float] = {}
        ids = [i.parent_id for i, _ in rows if i.parent_id]
        if ids:
            source_fitness = {i: f for i, f in s.execute(
                select(Individual.id, Individual.fitness).where(Individual.id.in_(ids)))
                if f is not None}
        ranked = [{"rank": k + 1, "id": i.id, "source_id": i.parent_id,
                   "search_fitness": source_fitness.get(i.parent_id),
                   "val_accuracy": i.fitness, "test_accuracy": i.test_accuracy,
                   "n_params": i.n_params, "mult_adds": i.mult_adds,
                   "epochs": (params or {}).get("epochs"),
                   "dataset": (params or {}).get("dataset") or search.config.get("dataset"),
                   "train_seconds": i.train_seconds, "genotype": i.genotype}
                  for k, (i, params) in enumerate(rows)]
        return {"search": name, "pending": pending, "ranked": ranked,
                "derived": ranked[0] if ranked else None}
