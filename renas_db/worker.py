"""The worker loop: claim, run, commit, update the controller, repeat.

Any number of these run against one database; none is special."""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from renas_db.db import queries, snapshots
from renas_db.db.queries import STEP, ClaimedJob, JobResult
from renas_db.db.session import Store
from renas_db.errors import (ConflictError, DatabaseUnavailable, LeaseLost, RenasError,
                             TrainingStopped)
from renas_db.executor import DryRunExecutor, Timings, TrainingExecutor, search_folder

log = logging.getLogger("renas_db.worker")
GC_EVERY = 10  # scan for orphaned checkpoint files every this many commits


@dataclass
class WorkerOptions:
    search: str | None = None
    device: str | None = None
    threads: int | None = None
    max_jobs: int | None = None
    checkpoint_root: str | None = None
    poll_seconds: float = 1.0
    idle_exit_seconds: float | None = None  # exit when no work for this long
    stats_json: str | None = None
    dry_run_seconds: float | None = None    # no training (tests, benchmarks)


@dataclass
class WorkerSummary:
    worker_id: int
    jobs_done: int = 0
    jobs_failed: int = 0
    leases_lost: int = 0
    controller_updates: int = 0
    wall_seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    # per job: kind, wall seconds from the start of its claim to the end of its commit,
    # and the seconds of each phase (the overhead accounting of bench/worker_overhead.py)
    jobs: list[dict[str, float | str]] = field(default_factory=list)


class Heartbeat:
    """Renews the lease every interval from its own connection. Zero rows updated means
    the lease is lost: `lost` and the training stop flag are set."""

    def __init__(self, store: Store, job: ClaimedJob, worker_id: int, interval: float,
                 stop_training: threading.Event) -> None:
        self.store = store
        self.job, self.worker_id, self.interval = job, worker_id, interval
        self.stop_training = stop_training
        self.lost = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            try:
                if not queries.heartbeat(self.store, self.job.id, self.job.lease_token,
                                         self.worker_id):
                    log.warning("job %d: lease lost (another worker owns it now)", self.job.id)
                    self.lost.set()
                    self.stop_training.set()
                    return
            except (DatabaseUnavailable, ConflictError) as exc:
                log.warning("heartbeat failed, will retry: %s", exc)
            except Exception as exc:  # keep the thread alive whatever happens
                log.warning("heartbeat error, will retry: %s", exc)


def retrying(fn: Callable, what: str, *, attempts: int = 60, stop: threading.Event | None = None):  # type: ignore[no-untyped-def]
    """Call fn, retrying database outages and conflicts with capped exponential backoff."""
    delay = 0.2
    for i in range(attempts):
        try:
            return fn()
        except (DatabaseUnavailable, ConflictError) as exc:
            if i == attempts - 1:
                raise
            log.warning("%s: %s; retrying in %.1fs", what, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


class Worker:
    def __init__(self, store: Store, options: WorkerOptions,
                 progress_factory: Callable[[ClaimedJob], Callable[[int, int], None] | None]
                 | None = None) -> None:
        self.store = store
        # the heartbeat thread's own engine: a stuck main connection cannot starve it
        self.heartbeat_store = Store(store.url, pool_size=1)
        self.options = options
        self.timings = Timings()
        self.stop_requested = threading.Event()
        self.stop_training = threading.Event()
        self.progress_factory = progress_factory
        if options.dry_run_seconds is not None:
            self.executor: TrainingExecutor = DryRunExecutor(
                store, options.checkpoint_root, self.timings, options.dry_run_seconds)
        else:
            self.executor = TrainingExecutor(store, options.device, options.threads,
                                             options.checkpoint_root, self.timings)
        device = options.device or "cpu"
        self.worker_id = retrying(lambda: queries.register_worker(
            store, socket.gethostname(), os.getpid(), device), "register")
        self.summary = WorkerSummary(self.worker_id)
        self._signals = 0

    # -- signals ---------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals += 1
        if self._signals > 1:
            os._exit(128 + signum)  # second signal: exit at once
        log.warning("signal %d: releasing the current job and stopping", signum)
        self.stop_requested.set()
        self.stop_training.set()

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> WorkerSummary:
        start = time.perf_counter()
        idle_since = time.monotonic()
        reason = "finished"
        try:
            while not self.stop_requested.is_set():
                if self.options.max_jobs is not None and \
                        self.summary.jobs_done + self.summary.jobs_failed >= self.options.max_jobs:
                    reason = "max jobs reached"
                    break
                t0 = time.perf_counter()
                before = dict(self.timings.phases)
                with self.timings.timed("claim"):
                    job, more = self._claim()
                if job is None:
                    if not more:
                        reason = "no running searches"
                        break
                    idle = self.options.idle_exit_seconds
                    if idle is not None and time.monotonic() - idle_since > idle:
                        reason = "idle"
                        break
                    self.stop_requested.wait(self.options.poll_seconds)
                    continue
                self._run_job(job)
                idle_since = time.monotonic()
                after = self.timings.phases
                self.summary.jobs.append({"kind": job.kind, "wall": time.perf_counter() - t0,
                                          **{k: v - before.get(k, 0.0) for k, v in after.items()}})
            else:
                reason = "stop signal"
        finally:
            self.summary.wall_seconds = time.perf_counter() - start
            self.summary.timings = dict(self.timings.phases)
            try:
                queries.worker_stopped(self.store, self.worker_id, reason)
            except RenasError:
                pass
            if self.options.stats_json:
                with open(self.options.stats_json, "w") as fh:
                    json.dump(self.summary.__dict__, fh, indent=2)
            log.info("worker %d stopped (%s): %d done, %d failed, %d leases lost",
                     self.worker_id, reason, self.summary.jobs_done, self.summary.jobs_failed,
                     self.summary.leases_lost)
        return self.summary

    def _claim(self) -> tuple[ClaimedJob | None, bool]:
        """(job, whether any search may still have work)."""
        ids = retrying(lambda: queries.active_search_ids(self.store, self.options.search),
                       "list searches")
        active = False
        for sid in ids:
            job = retrying(lambda: queries.claim(self.store, sid, self.worker_id), "claim")
            if job is not None:
                return job, True
            # a paused, finished or failed search has no more work for us: exit
            active = active or retrying(lambda: queries.has_work(self.store, sid),
                                        "search state")
        return None, active

    def _run_job(self, job: ClaimedJob) -> None:
        self.stop_training.clear()
        if self.stop_requested.is_set():
            self.stop_training.set()
        log.info("job %d: %s %d of %s (attempt %d)", job.id, job.kind, job.step_index,
                 job.search_name, job.attempt)
        interval = min(job.config.lease_seconds / 4, 10.0)
        progress = self.progress_factory(job) if self.progress_factory else None
        with Heartbeat(self.heartbeat_store, job, self.worker_id, interval,
                       self.stop_training) as beat:
            try:
                result = self.executor.run(job, progress, self.stop_training)
            except TrainingStopped:
                if beat.lost.is_set():
                    self.summary.leases_lost += 1
                    log.warning("job %d: lease lost; nothing committed", job.id)
                else:
                    retrying(lambda: _ignore_lost(queries.release_job, self.store, job),
                             "release")
                    log.warning("job %d released", job.id)
                return
            except (DatabaseUnavailable, ConflictError) as exc:
                reason = f"database unavailable during the job: {exc}"
                log.warning("job %d: %s", job.id, reason)
                retrying(lambda: _ignore_lost(queries.fail_job, self.store, job, reason),
                         "fail")
                self.summary.jobs_failed += 1
                return
            except Exception as exc:
                text = f"{type(exc).__name__}: {exc}"
                log.error("job %d failed: %s", job.id, text, exc_info=log.isEnabledFor(logging.DEBUG))
                retrying(lambda: _ignore_lost(queries.fail_job, self.store, job, text[:2000]),
                         "fail")
                self.summary.jobs_failed += 1
                return
            if beat.lost.is_set():
                self.summary.leases_lost += 1
                log.warning("job %d: lease lost; nothing committed", job.id)
                self.executor.checkpoints(job).delete(result.checkpoint_uri)
                return
        self._commit(job, result)

    def _commit(self, job: ClaimedJob, result: JobResult) -> None:
        try:
            with self.timings.timed("commit"):
                child_id = retrying(lambda: queries.commit_job(self.store, job, result,
                                                               self.worker_id), "commit")
        except LeaseLost as exc:
            self.summary.leases_lost += 1
            log.warning("job %d: commit rejected: %s", job.id, exc)
            if result.checkpoint_uri:
                self.executor.checkpoints(job).delete(result.checkpoint_uri)
            return
        self.summary.jobs_done += 1
        parent = f" (parent {job.parent.fitness:.4f})" if job.parent else ""
        log.info("job %d: individual %d fitness %.4f%s", job.id, child_id, result.fitness, parent)
        if job.kind == STEP and job.config.mutator == "renas":
            with self.timings.timed("controller"):
                self._update_controller(job)
        with self.timings.timed("gc"):
            self._collect(job)

    def _update_controller(self, job: ClaimedJob) -> None:
        """Fold every unconsumed episode into snapshot version+1. Optimistic: a worker
        that loses the race re-reads and retries until nothing is left."""
        from renas_db.controller import Episode
        from renas_db import space
        for _ in range(20):
            episodes = retrying(lambda: snapshots.unconsumed_episodes(self.store, job.search_id),
                                "episodes")
            if not episodes:
                return
            # the executor's in-memory snapshot, reloaded only if another worker moved on
            trainer = retrying(lambda: self.executor.controller(job), "snapshot")
            version = trainer.version
            ok = False
            try:
                stats = trainer.update([Episode(space.parse(e.parent_genotype),
                                                space.actions_from_json(e.actions),
                                                e.log_prob, e.fitness) for e in episodes])
                ok = retrying(lambda: snapshots.save_update(
                    self.store, job.search_id, version, trainer.to_bytes(),
                    [e.id for e in episodes], episodes_seen=trainer.episodes_seen,
                    mean_reward=stats["mean_reward"], baseline=stats["baseline"],
                    stats=stats), "controller update")
            finally:
                if not ok:
                    # the update changed the cached copy only: drop it, re-read, retry
                    self.executor.forget_controller(job.search_id)
            if ok:
                self.summary.controller_updates += 1
                log.info("controller v%d: %d episodes, mean reward %.3f", version + 1,
                         len(episodes), stats["mean_reward"])
                return

    def _collect(self, job: ClaimedJob) -> None:
        store = self.executor.checkpoints(job)
        candidates = [i for i in (job.victim_id, job.parent.id if job.parent else None) if i]
        gone = retrying(lambda: queries.collectable_checkpoints(self.store, job.search_id,
                                                                candidates), "gc")
        for _, uri in gone:
            store.delete(uri)
        if gone:
            retrying(lambda: queries.mark_collected(self.store, [i for i, _ in gone]), "gc")
        if self.summary.jobs_done % GC_EVERY == 0:
            keep = retrying(lambda: queries.live_checkpoints(self.store, job.search_id), "gc")
            store.collect(search_folder(job), keep, grace_seconds=2 * job.config.lease_seconds)


def _ignore_lost(fn: Callable, *args: object) -> None:
    try:
        fn(*args)
    except LeaseLost as exc:
        log.warning("%s", exc)
