"""The worker loop: claim, run, commit, repeat; the controller update and the checkpoint
GC of each commit run in a thread beside the next job (`_after_commit`).

Any number of these run against one database; none is special. This module speaks the
protocol only: the torch work is the executor's (renas_db/executor.py), the shared
controller's snapshot cache and update are renas_db/shared_controller.py's, and deleting
checkpoints is renas_db/collector.py's."""
from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from renas_db import faults, levers
from renas_db.checkpoints import CheckpointStorage, store_at
from renas_db.collector import CheckpointCollector
from renas_db.config import SearchConfig
from renas_db.db import admin, gc, protocol
from renas_db.db.session import Store
from renas_db.dry_run import DryRunExecutor
from renas_db.errors import (
    CheckpointError,
    CheckpointRootError,
    ConflictError,
    DatabaseUnavailable,
    DiskFullError,
    HostError,
    LeaseLost,
    MissingDependency,
    ObjectStoreError,
    RenasError,
    StorageError,
    TrainingStopped,
)
from renas_db.executor import Executor, TrainingExecutor
from renas_db.jobs import ClaimedJob, JobKind, JobResult, Progress
from renas_db.retry import retrying
from renas_db.shared_controller import SharedController
from renas_db.timings import Timings

log = logging.getLogger("renas_db.worker")
ProgressFactory = Callable[[ClaimedJob], "Progress | None"]


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
    # this host's dataset folders: "*" for every dataset, else per dataset name
    data_dirs: dict[str, str] = field(default_factory=dict)


class WorkerUnfit(HostError):
    """The worker stopped because it cannot serve the searches that still have work:
    its one line names each search, the cause and the fix."""


@dataclass
class WorkerSummary:
    worker_id: int
    jobs_done: int = 0
    jobs_failed: int = 0
    jobs_given_back: int = 0   # host errors: back to the queue, no attempt counted
    leases_lost: int = 0
    controller_updates: int = 0
    wall_seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    # per job: kind, wall seconds from the start of its claim to the end of its commit,
    # and the seconds of each phase (the overhead accounting of bench/worker_overhead.py)
    jobs: list[dict[str, float | str]] = field(default_factory=list)


def make_executor(options: WorkerOptions, timings: Timings) -> Executor:
    if options.dry_run_seconds is not None:
        return DryRunExecutor(options.checkpoint_root, options.dry_run_seconds,
                              options.data_dirs)
    return TrainingExecutor(options.device, options.threads, options.checkpoint_root,
                            timings, options.data_dirs)


class Heartbeat:
    """Renews the lease every interval from its own connection, with the job's progress
    when it moved. Zero rows updated means the lease is lost: `lost` and the training
    stop flag are set. Progress standing still for the search's stall_seconds gives the
    job up (`stalled`, `lost` and the stop flag set; the job requeued after its retry
    backoff): a training call that never returns cannot hold the job."""

    def __init__(self, store: Store, job: ClaimedJob, worker_id: int, interval: float,
                 stop_training: threading.Event) -> None:
        self.store = store
        self.job, self.worker_id, self.interval = job, worker_id, interval
        self.stop_training = stop_training
        self.lost = threading.Event()
        self.stalled = threading.Event()
        self._done = threading.Event()
        self._progress: int | None = None
        self._sent: int | None = None
        self._moved_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def progress(self, done: int, _total: int) -> None:
        """The executor's progress callback (examples done): news moves the stall clock."""
        if done != self._progress:
            self._progress = done
            self._moved_at = time.monotonic()

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            try:
                stall = self.job.config.stall_seconds
                if time.monotonic() - self._moved_at > stall:
                    self._give_up(stall)
                    return
                news = self._progress if self._progress != self._sent else None
                if not protocol.heartbeat(self.store, self.job.id, self.job.lease_token,
                                          self.worker_id, news):
                    log.warning("job %d: lease lost (another worker owns it now)", self.job.id)
                    self.lost.set()
                    self.stop_training.set()
                    return
                if news is not None:
                    self._sent = news
            except (DatabaseUnavailable, ConflictError) as exc:
                log.warning("heartbeat failed, will retry: %s", exc)
            except Exception as exc:  # keep the thread alive whatever happens
                log.warning("heartbeat error, will retry: %s", exc)

    def _give_up(self, stall: float) -> None:
        why = f"stalled: no progress for {stall:g} s (worker {self.worker_id})"
        log.error("job %d %s; giving it up", self.job.id, why)
        self.stalled.set()
        self.lost.set()
        self.stop_training.set()
        try:
            retrying("give up", _ignore_lost, protocol.fail_job, self.store, self.job, why,
                     "job stalled")
        except RenasError as exc:  # the sweep gives it up instead
            log.warning("job %d: could not give it up: %s", self.job.id, exc)


class Worker:
    def __init__(self, store: Store, options: WorkerOptions,
                 progress_factory: ProgressFactory | None = None,
                 executor: Executor | None = None) -> None:
        self.store = store
        # the heartbeat shares the pool: it checks out the one idle connection while the
        # job trains, or an overflow connection (closed after use) while the loop holds it
        self.heartbeat_store = store
        self.options = options
        self.timings = Timings()
        self.stop_requested = threading.Event()
        self.stop_training = threading.Event()
        self.progress_factory = progress_factory
        self.executor = executor or make_executor(options, self.timings)
        self.controllers = SharedController(store)
        self.collector = CheckpointCollector(store, options.checkpoint_root)
        device = options.device or "cpu"
        self.host = f"{socket.gethostname()}:{os.getpid()}"
        self.worker_id = retrying("register", admin.register_worker, store,
                                  socket.gethostname(), os.getpid(), device)
        self.summary = WorkerSummary(self.worker_id)
        self._signals = 0
        self._folded: set[int] = set()  # searches whose leftover episodes this worker folded
        self._fit: set[int] = set()          # searches this worker checked it can serve
        self._unfit: dict[int, str] = {}     # searches it cannot serve: the one line why
        # the controller update and GC of the last commit, running beside the next job
        self._after: threading.Thread | None = None
        self._after_failed: BaseException | None = None
        self._off_db = threading.Event()  # the loop is done with the database for now
        self._off_db.set()

    # -- signals ------------------------------------------------------------------------
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

    # -- the loop -----------------------------------------------------------------------
    def run(self) -> WorkerSummary:
        start = time.perf_counter()
        idle_since = time.monotonic()
        reason = "stop signal"
        try:
            while not self.stop_requested.is_set():
                if self.options.max_jobs is not None and \
                        self.summary.jobs_done + self.summary.jobs_failed >= self.options.max_jobs:
                    reason = "max jobs reached"
                    break
                t0 = time.perf_counter()
                before = dict(self.timings.phases)
                with self.timings("claim"):
                    job, more, blocked = self._claim()
                if job is None:
                    self._off_db.set()
                    if not more and blocked:
                        reason = "unfit"
                        raise WorkerUnfit(" | ".join(self._unfit[sid] for sid in blocked))
                    if not more:
                        reason = "no running searches"
                        break
                    idle = self.options.idle_exit_seconds
                    if idle is not None and time.monotonic() - idle_since > idle:
                        reason = "idle"
                        break
                    self.stop_requested.wait(self.options.poll_seconds)
                    continue
                self._serve(job)
                idle_since = time.monotonic()
                self.summary.jobs.append({"kind": job.kind, "wall": time.perf_counter() - t0,
                                          **self.timings.since(before)})
            self._join_after_commit()
        finally:
            self._join_after_commit(quiet=True)
            self._stopped(reason, time.perf_counter() - start)
        return self.summary

    def _stopped(self, reason: str, wall: float) -> None:
        self.summary.wall_seconds = wall
        self.summary.timings = dict(self.timings.phases)
        try:
            admin.worker_stopped(self.store, self.worker_id, reason)
        except RenasError as exc:
            log.warning("could not record the worker's stop: %s", exc)
        if self.options.stats_json:
            with open(self.options.stats_json, "w") as fh:
                json.dump(asdict(self.summary), fh, indent=2)
        # unfit: the WorkerUnfit raised is the one line a user sees
        log.log(logging.DEBUG if reason == "unfit" else logging.INFO,
                "worker %d stopped (%s): %d done, %d failed, %d given back, %d leases lost",
                self.worker_id, reason, self.summary.jobs_done, self.summary.jobs_failed,
                self.summary.jobs_given_back, self.summary.leases_lost)

    def _claim(self) -> tuple[ClaimedJob | None, bool, list[int]]:
        """(job, whether any search this worker can serve may still have work, the
        searches with work it cannot serve)."""
        ids = retrying("list searches", admin.active_search_ids, self.store,
                       self.options.search)
        active, blocked = False, []
        for sid in ids:
            if not self._can_serve(sid):
                if retrying("search state", admin.has_work, self.store, sid):
                    blocked.append(sid)
                continue
            # the token is made here, once per claim: a retry after a lost acknowledgement
            # gets back the job the first try took
            token = uuid.uuid4().hex
            job = retrying("claim", protocol.claim, self.store, sid, self.worker_id, token)
            if job is not None:
                return job, True, blocked
            # a paused, finished or failed search has no more work for us: exit
            active = active or retrying("search state", admin.has_work, self.store, sid)
        return None, active, blocked

    # -- fitness: can this host serve a search? -------------------------------------------
    def _can_serve(self, sid: int) -> bool:
        """Checked once per search, before the first claim from it: the device works and
        the dataset loads (the executor keeps it), the checkpoint root takes a probe
        write and shows the search's checkpoints. Unfit: one line, an event, the
        worker's row; this worker never claims from the search again."""
        if sid in self._fit:
            return True
        if sid in self._unfit:
            return False
        name, raw, root = retrying("search", admin.search_target, self.store, sid)
        config = SearchConfig.from_dict(raw)
        errors: list[HostError] = []
        for check in (lambda: self.executor.check(config),
                      lambda: self._check_checkpoints(sid, name, root)):
            try:
                check()
            except HostError as exc:
                errors.append(exc)
        if errors:
            self._mark_unfit(sid, name, errors)
            return False
        self._fit.add(sid)
        return True

    def _store_of(self, root: str) -> CheckpointStorage:
        return store_at(root, self.options.checkpoint_root)

    def _check_checkpoints(self, sid: int, name: str, root: str,
                           besides: str | None = None) -> None:
        """A probe write at the root, and (once the search has checkpoints) at least one
        of its newest alive individuals' files visible: an empty mount point is not the
        shared folder."""
        try:
            files = self._store_of(root)
            files.probe(name)  # the search's folder: every key of a search starts with it
        except StorageError as exc:  # an object store that refuses or stays away
            raise ObjectStoreError(str(exc)) from None
        except MissingDependency as exc:  # boto3 for an s3:// root
            missing = ObjectStoreError(str(exc))
            missing.fix = "install it on this host"
            raise missing from None
        uris = [u for u in retrying("checkpoints", gc.recent_checkpoints, self.store, sid)
                if u != besides]
        if uris and not any(files.exists(u) for u in uris):
            raise CheckpointRootError(
                f"checkpoint root {self.options.checkpoint_root or root} holds none of "
                f"search {name}'s newest checkpoints ({files.describe(uris[0])} and "
                f"{len(uris) - 1} more are missing): "
                "is the shared folder mounted on this host?")

    def _mark_unfit(self, sid: int, name: str, errors: list[HostError]) -> str:
        causes = ", ".join(dict.fromkeys(e.cause for e in errors))
        detail = " | ".join(f"{e}; {e.fix}" for e in errors)
        line = (f"worker {self.worker_id} ({self.host}) cannot serve search {name} "
                f"({causes}): {detail}")
        self._unfit[sid] = line
        self._fit.discard(sid)
        if self.options.search is None:  # serving others: say so now (else at exit)
            log.error("%s", line)
        retrying("unfit", admin.worker_unfit, self.store, self.worker_id, sid, line,
                 "\n".join(self._unfit.values()))
        return line

    def _serve(self, job: ClaimedJob) -> None:
        """Run one job and, if its lease held, commit it and update the controller."""
        log.info("job %d: %s %d of %s (attempt %d)", job.id, job.kind, job.step_index,
                 job.search_name, job.attempt)
        if job.kind == JobKind.STEP and self.controllers.trains(job) and \
                job.search_id not in self._folded:
            # episodes a committer left behind when it died before its controller update
            self._folded.add(job.search_id)
            self._update_controller(job)
        result = self._run(job)
        if result is None or not self._commit(job, result):
            return
        if job.kind == JobKind.STEP:
            faults.point("step_committed", job)  # tests: die before the controller update
        self._after_commit(job)

    def _update_controller(self, job: ClaimedJob, phase: str = "controller") -> None:
        """Fold the search's unconsumed episodes into the shared controller."""
        with self.timings(phase):
            if self.controllers.fold(job) is not None:
                self.summary.controller_updates += 1

    # -- after a commit: the controller update and the GC, beside the next job -----------
    def _after_commit(self, job: ClaimedJob) -> None:
        """Start the committed job's controller update and checkpoint GC in a thread, and
        go on to the next claim: neither is on the next job's critical path. One runs at
        a time (the next commit waits for it). It starts once the next job is training (its
        first progress report), after the loop's claim, snapshot, mutation and build: the
        two threads then rarely need two connections at once, and the update's Python
        runs while the loop's thread mostly waits in torch kernels.
        The next child of this worker is mutated with the snapshot before this update
        (one version staler, as any child of a many-worker search may be); the update
        itself is unchanged: one worker writes each version, each episode is folded
        once (docs/design.md 3.5)."""
        self._join_after_commit()
        fold = job.kind == JobKind.STEP and self.controllers.trains(job)
        if levers.old("overlap"):  # bench/worker_overhead.py's old path: in the loop
            self._after_commit_work(job, fold, "")
            self._join_after_commit()
            return
        self._off_db.clear()
        self._after = threading.Thread(target=self._after_commit_work,
                                       args=(job, fold, "background_"),
                                       name="after-commit", daemon=True)
        self._after.start()

    def _after_commit_work(self, job: ClaimedJob, fold: bool, phase: str) -> None:
        try:
            self._off_db.wait()
            if fold:
                self._update_controller(job, f"{phase}controller")
            faults.point("controller_folded", job)  # tests: the update done, GC not yet
            with self.timings(f"{phase}gc"):
                self.collector.after_commit(job)
        except BaseException as exc:  # raised again in the loop's thread
            self._after_failed = exc

    def _join_after_commit(self, quiet: bool = False) -> None:
        """Wait for the last commit's update and GC; raise what they raised (a database
        that stayed away makes the worker give up, as it would have in the loop), or
        with `quiet` (the loop is ending on another error) only log it."""
        thread, self._after = self._after, None
        if thread is not None:
            self._off_db.set()
            with self.timings("after_commit_wait"):
                thread.join()
        failed, self._after_failed = self._after_failed, None
        if failed is None:
            return
        if not quiet:
            raise failed
        log.error("the controller update or GC after the last commit failed: %s", failed)

    def _run(self, job: ClaimedJob) -> JobResult | None:
        """The job's result, or None when it was given back, failed or its lease lost."""
        self.stop_training.clear()
        if self.stop_requested.is_set():
            self.stop_training.set()
        interval = min(job.config.lease_seconds / 4, job.config.stall_seconds / 4, 10.0)
        shown = self.progress_factory(job) if self.progress_factory else None
        with Heartbeat(self.heartbeat_store, job, self.worker_id, interval,
                       self.stop_training) as beat:

            def progress(done: int, total: int) -> None:
                self._off_db.set()  # training: the after-commit thread's turn
                beat.progress(done, total)
                if shown is not None:
                    shown(done, total)
            try:
                mutator = None
                if job.kind == JobKind.STEP:
                    with self.timings("snapshot"):
                        mutator = self.controllers.mutator(job)
                result = self.executor.run(job, mutator, progress, self.stop_training)
            except Exception as exc:
                self._off_db.set()
                if beat.stalled.is_set():  # given up already: its retry is queued
                    self.summary.jobs_failed += 1
                    log.warning("job %d: given up as stalled (%s)", job.id,
                                type(exc).__name__)
                    return None
                self._after_error(job, exc, beat)
                return None
            self._off_db.set()
            if beat.stalled.is_set():
                self.summary.jobs_failed += 1
                self.collector.discard(job, result.checkpoint_uri)
                return None
            if beat.lost.is_set():
                self._lease_lost(job, result.checkpoint_uri, "nothing committed")
                return None
        return result

    def _after_error(self, job: ClaimedJob, exc: Exception, beat: Heartbeat) -> None:
        """Training raised: give the job back (stop signal), drop it (lease lost),
        quarantine its parent (parent checkpoint missing or damaged), or fail it."""
        if isinstance(exc, TrainingStopped):
            if beat.lost.is_set():
                self._lease_lost(job, None, "stopped training")
            else:
                retrying("release", _ignore_lost, protocol.release_job, self.store, job)
                log.warning("job %d released", job.id)
        elif isinstance(exc, (DatabaseUnavailable, ConflictError)):
            self._fail(job, f"database unavailable during the job: {exc}")
        elif isinstance(exc, HostError):
            self._give_back(job, exc)
        elif isinstance(exc, CheckpointError) and job.kind == JobKind.STEP \
                and self._parent_damaged(job):
            why = f"parent checkpoint missing or damaged: {exc}"
            log.error("job %d: %s; quarantining individual %s", job.id, why,
                      job.parent.id if job.parent else None)
            retrying("quarantine", _ignore_lost, protocol.quarantine_parent, self.store,
                     job, why)
        elif (host := self._host_fault(job, exc)) is not None:
            self._give_back(job, host)
        else:
            self._fail(job, f"{type(exc).__name__}: {exc}",
                       exc_info=log.isEnabledFor(logging.DEBUG))

    def _host_fault(self, job: ClaimedJob, exc: Exception) -> HostError | None:
        """Whether an error that is not plainly the host's was the host's after all: a
        full disk, or the checks of _can_serve failing now (a checkpoint root gone
        read-only or unmounted, a GPU broken). Otherwise it is the job's: None."""
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return DiskFullError(f"no space left on this host ({exc})")
        try:
            self.executor.check(job.config)
            self._check_checkpoints(job.search_id, job.search_name, job.checkpoint_root)
        except HostError as host:
            return host
        return None

    def _give_back(self, job: ClaimedJob, exc: HostError) -> None:
        """An error of this host: the job back to the queue with no attempt counted, and
        this worker unfit for its search (it claims nothing more from it)."""
        text = f"{exc.cause}: {exc}"
        log.error("job %d given back (an error of this host, not of the job): %s",
                  job.id, text)
        retrying("give back", _ignore_lost, protocol.give_back_job, self.store, job,
                 "job given back", f"job {job.id} ({job.kind} {job.step_index}) given back "
                 f"by worker {self.worker_id}, no attempt counted: {text}", text)
        self.summary.jobs_given_back += 1
        self._mark_unfit(job.search_id, job.search_name, [exc])

    def _parent_damaged(self, job: ClaimedJob) -> bool:
        """Whether the step's parent checkpoint is missing or does not match its digest,
        with the checkpoint store itself reachable (a store that is away is an outage,
        retried with backoff, not damage)."""
        parent = job.parent
        if parent is None:
            return False
        if not parent.checkpoint_uri:
            return True
        store = self.collector.checkpoints(job)
        if not store.damaged(parent.checkpoint_uri, parent.checkpoint_sha256):
            return False
        if store.exists(parent.checkpoint_uri):
            return True  # there, but not the bytes the database committed
        # lost, unless this host sees none of the search's other checkpoints either (an
        # empty mount point: the host's fault, found by _host_fault)
        try:
            self._check_checkpoints(job.search_id, job.search_name, job.checkpoint_root,
                                    besides=parent.checkpoint_uri)
        except HostError:
            return False
        return True

    def _fail(self, job: ClaimedJob, text: str, exc_info: bool = False) -> None:
        log.error("job %d failed: %s", job.id, text, exc_info=exc_info)
        retrying("fail", _ignore_lost, protocol.fail_job, self.store, job, text[:2000])
        self.summary.jobs_failed += 1

    def _lease_lost(self, job: ClaimedJob, uri: str | None, what: str) -> None:
        """Another worker owns the job now: count it, say so, drop our checkpoint."""
        self.summary.leases_lost += 1
        log.warning("job %d: lease lost; %s", job.id, what)
        self.collector.discard(job, uri)

    def _commit(self, job: ClaimedJob, result: JobResult) -> bool:
        try:
            with self.timings("commit"):
                child_id = retrying("commit", protocol.commit_job, self.store, job,
                                    result, self.worker_id)
        except LeaseLost as exc:
            self._lease_lost(job, result.checkpoint_uri, f"commit rejected: {exc}")
            return False
        self.summary.jobs_done += 1
        parent = f" (parent {job.parent.fitness:.4f})" if job.parent else ""
        log.info("job %d: individual %d fitness %.4f%s", job.id, child_id, result.fitness,
                 parent)
        return True


def _ignore_lost(fn: Callable[..., object], *args: object) -> None:
    try:
        fn(*args)
    except LeaseLost as exc:
        log.warning("%s", exc)
