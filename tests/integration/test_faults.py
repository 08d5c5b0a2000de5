"""Issue 15's faults, in-process on both back ends: deterministic interleavings made with
the library's injection points (renas_db/faults.py) and forced database states."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select, text, update

from renas_db import faults, searches
from renas_db.checkpoints import CheckpointStore
from renas_db.config import SearchConfig
from renas_db.db import admin, gc, protocol, snapshots
from renas_db.db.models import Episode, Event, Individual, Job, Search, db_now
from renas_db.db.reports import check_invariants, search_status
from renas_db.db.session import Store
from renas_db.dry_run import HANG_FILE
from renas_db.errors import ConflictError, DatabaseUnavailable, LeaseLost, StateError
from renas_db.shared_controller import SharedController, fold_leftovers
from renas_db.testing import fake_result_for
from renas_db.worker import Worker, WorkerOptions


def _config(tmp_path, **kw):
    base = dict(population=4, sample=2, steps=3, mutator="random", blocks=3,
                lease_seconds=30.0, checkpoint_root=str(tmp_path / "ck"))
    base.update(kw)
    return SearchConfig(**base)


def _fill(store, sid, wid, n=4):
    for k in range(n):
        job = protocol.claim(store, sid, wid)
        assert job.kind == "init"
        protocol.commit_job(store, job, fake_result_for(job, 0.1 * (k + 1)), wid)


def _events(store, kind):
    with store.transaction(write=False) as s:
        return s.scalar(select(func.count()).where(Event.kind == kind))


def _job(store, job_id):
    with store.transaction(write=False) as s:
        return s.get(Job, job_id)


@pytest.fixture
def hooks():
    yield faults.HOOKS
    faults.HOOKS.clear()


# -- fault 1 ------------------------------------------------------------------------------
def test_sweep_spares_a_job_whose_heartbeat_lands_between_its_read_and_write(
        store, tmp_path, hooks):
    """SQLite: the renewal lands inside the claim, between the sweep's read and its write;
    the guarded requeue must spare the job. PostgreSQL: the sweep's SELECT ... FOR UPDATE
    SKIP LOCKED holds the row, so a concurrent renewal cannot land in between at all (it
    waits; here it gives up after 200 ms) and the requeue is consistent: the old owner's
    heartbeat and commit then see their lease lost. Without either protection the
    renewal lands and the requeue undoes it."""
    sid = searches.create(store, "s", _config(tmp_path))
    w1 = admin.register_worker(store, "h", 1, "cpu")
    w2 = admin.register_worker(store, "h", 2, "cpu")
    job = protocol.claim(store, sid, w1)
    with store.transaction() as s:   # its lease looks expired to the next claim's sweep
        s.execute(update(Job).where(Job.id == job.id).values(heartbeat_at=db_now(-600)))
    beat = Store(store.url)
    blocked = []

    def heartbeat_lands(conn, row):
        if row.id != job.id:
            return
        if store.is_sqlite:   # one writer at a time: the renewal runs inside the claim
            conn.execute(update(Job.__table__).where(Job.__table__.c.id == job.id)
                         .values(heartbeat_at=db_now()))
            return
        with pytest.raises(ConflictError, match="lock"), beat.connection() as c:
            c.exec_driver_sql("SET LOCAL lock_timeout = '200ms'")
            c.execute(update(Job.__table__).where(Job.__table__.c.id == job.id)
                      .values(heartbeat_at=db_now()))
        blocked.append(True)
    hooks["sweep_read"] = heartbeat_lands
    protocol.claim(store, sid, w2)
    if store.is_sqlite:
        row = _job(store, job.id)
        assert (row.state, row.lease_token, row.attempt) == ("running", job.lease_token, 1)
        assert _events(store, "lease expired") == 0
        protocol.commit_job(store, job, fake_result_for(job, 0.5), w1)
        assert _job(store, job.id).state == "done"
    else:
        assert blocked == [True]
        assert _job(store, job.id).lease_token != job.lease_token   # requeued (and retaken)
        assert not protocol.heartbeat(beat, job.id, job.lease_token, w1)
        with pytest.raises(LeaseLost):
            protocol.commit_job(store, job, fake_result_for(job, 0.5), w1)
    beat.dispose()


def test_applied_only_when_done_and_unique_violations_are_not_retried(store, tmp_path):
    sid = searches.create(store, "s", _config(tmp_path))
    wid = admin.register_worker(store, "h", 1, "cpu")
    _fill(store, sid, wid)
    # a done init job forced back to running under a second lease (what an unguarded
    # sweep did): the second owner's child would break the unique job_id
    init_id = 1
    with store.transaction() as s:
        s.execute(update(Job).where(Job.id == init_id).values(state="running",
                                                              lease_token="b" * 32))
        init = s.get(Job, init_id)
    from renas_db.jobs import ClaimedJob
    cfg = _config(tmp_path)
    second = ClaimedJob(id=init.id, search_id=sid, search_name="s", kind="init",
                        step_index=init.step_index, attempt=2, lease_token="b" * 32,
                        config=cfg, checkpoint_root=cfg.checkpoint_root,
                        genotype=init.genotype)
    with pytest.raises(LeaseLost, match="its result exists"):   # not a retried conflict
        protocol.commit_job(store, second, fake_result_for(second, 0.5), wid)
    with store.transaction() as s:
        assert s.get(Job, init_id).state == "running"   # nothing of it was written
        s.execute(update(Job).where(Job.id == init_id).values(state="done"))
    # a done step forced back to running under a second lease: its victim is dead, and
    # the old child is not this lease's result
    step = protocol.claim(store, sid, wid)
    protocol.commit_job(store, step, fake_result_for(step, 0.9), wid)
    with store.transaction() as s:
        s.execute(update(Job).where(Job.id == step.id).values(state="running",
                                                              lease_token="c" * 32))
    again = ClaimedJob(**{**step.__dict__, "lease_token": "c" * 32})
    with pytest.raises(StateError, match="not alive"):
        protocol.commit_job(store, again, fake_result_for(again, 0.9), wid)


# -- fault 2 ------------------------------------------------------------------------------
def test_retry_waits_for_its_backoff(store, tmp_path):
    cfg = _config(tmp_path, retry_backoff_seconds=600.0)
    sid = searches.create(store, "s", cfg)
    wid = admin.register_worker(store, "h", 1, "cpu")
    job = protocol.claim(store, sid, wid)
    assert protocol.fail_job(store, job, "CUDA out of memory") == "queued"
    nxt = protocol.claim(store, sid, wid)
    assert nxt.id != job.id                     # not taken straight back
    with store.transaction(write=False) as s:
        waiting = s.scalar(select(Job.not_before > db_now()).where(Job.id == job.id))
    assert waiting
    # the defaults: five attempts, 3 s doubling: the retries span 45 s > a 30 s outage
    d = SearchConfig()
    assert d.max_attempts == 5
    assert sum(protocol.retry_delay(d, a) for a in range(1, d.max_attempts)) > 30


def test_dead_init_job_is_replaced_then_failed_search_resumed_and_requeued(store, tmp_path):
    cfg = _config(tmp_path, population=2, max_attempts=1, retry_backoff_seconds=0.0)
    sid = searches.create(store, "s", cfg)
    wid = admin.register_worker(store, "h", 1, "cpu")
    first = protocol.claim(store, sid, wid)
    assert protocol.fail_job(store, first, "boom") == "dead"
    assert search_status(store, "s")["status"] == "running"
    assert _events(store, "init job replaced") == 1
    with store.transaction(write=False) as s:
        queued = s.scalars(select(Job).where(Job.search_id == sid, Job.state == "queued")
                           .order_by(Job.id)).all()
    assert [j.kind for j in queued] == ["init", "init"]
    assert queued[-1].genotype != first.genotype
    # P + 1 deaths: the cause is not the genotype; the search fails
    for _ in range(2):
        protocol.fail_job(store, protocol.claim(store, sid, wid), "boom")
    assert search_status(store, "s")["status"] == "failed"
    # once the cause is fixed: requeue gives back as many dead init jobs as the
    # population lacks (one: job 4 is still queued), and resume runs the search again
    assert protocol.requeue_dead(store, "s") == {"requeued": 1, "left_dead": 2}
    protocol.resume_failed(store, "s")
    with pytest.raises(StateError, match="not failed"):
        protocol.resume_failed(store, "s")
    st = search_status(store, "s")
    assert st["status"] == "running"
    # requeue gave back as many dead init jobs as the population lacks: 2 in all
    assert st["jobs"]["queued"] == 2
    _fill(store, sid, wid, n=2)
    assert protocol.claim(store, sid, wid).kind == "step"
    assert [p for p in check_invariants(store, "s") if not p.startswith("4:")] == []


# -- fault 8 ------------------------------------------------------------------------------
def test_a_retried_claim_gets_back_the_job_it_holds(store, tmp_path, hooks):
    searches.create(store, "s", _config(tmp_path))
    worker = Worker(store, WorkerOptions(search="s", dry_run_seconds=0.0))
    lost = []

    def ack_lost(job):
        if not lost:
            lost.append(job)
            raise DatabaseUnavailable("connection reset after COMMIT (injected)")
    hooks["claim_committed"] = ack_lost
    job, _, _ = worker._claim()
    assert lost and lost[0] is not None
    assert (job.id, job.lease_token, job.attempt) == \
        (lost[0].id, lost[0].lease_token, 1)
    with store.transaction(write=False) as s:
        running = s.scalars(select(Job.id).where(Job.state == "running")).all()
        assert running == [job.id]
        assert s.get(Job, job.id).attempt == 1    # no attempt used up
    worker.heartbeat_store.dispose()


# -- fault 10 -----------------------------------------------------------------------------
def test_sweep_gives_up_a_job_whose_progress_stands_still(store, tmp_path):
    sid = searches.create(store, "s", _config(tmp_path, stall_seconds=60.0))
    w1 = admin.register_worker(store, "h", 1, "cpu")
    w2 = admin.register_worker(store, "h", 2, "cpu")
    moving, stuck = protocol.claim(store, sid, w1), protocol.claim(store, sid, w1)
    with store.transaction() as s:   # both claimed 10 minutes ago
        s.execute(update(Job).where(Job.id.in_([moving.id, stuck.id]))
                  .values(claimed_at=db_now(-600)))
    # both heartbeats are fresh; only one reports progress
    assert protocol.heartbeat(store, moving.id, moving.lease_token, w1, 1280)
    assert protocol.heartbeat(store, stuck.id, stuck.lease_token, w1)
    taken = protocol.claim(store, sid, w2)
    assert taken.id == stuck.id and taken.attempt == 2
    assert _job(store, moving.id).lease_token == moving.lease_token
    assert _events(store, "job stalled") == 1


def test_a_hung_job_is_given_up_by_its_own_worker(store, tmp_path, monkeypatch):
    hang = tmp_path / "hang"
    hang.touch()
    monkeypatch.setenv(HANG_FILE, str(hang))
    searches.create(store, "s", _config(tmp_path, population=2, steps=0, stall_seconds=0.5,
                                        retry_backoff_seconds=0.0))
    worker = Worker(store, WorkerOptions(search="s", dry_run_seconds=0.05,
                                         poll_seconds=0.05))
    summary = {}
    t = threading.Thread(target=lambda: summary.update(done=worker.run()), daemon=True)
    t.start()
    deadline = 600
    while _events(store, "job stalled") == 0 and deadline:
        deadline -= 1
        t.join(0.1)
    hang.unlink()   # the hung call returns at last: its result must not be committed
    t.join(120)
    assert not t.is_alive()
    assert summary["done"].jobs_failed == 1 and summary["done"].jobs_done == 2
    st = search_status(store, "s")
    assert st["status"] == "finished" and st["alive"] == 2
    with store.transaction(write=False) as s:
        assert s.scalar(select(func.max(Job.attempt))) == 2
        assert "stalled" in s.scalar(select(Event.message).where(Event.kind == "job stalled"))


# -- fault 3 ------------------------------------------------------------------------------
@pytest.mark.parametrize("lost", ["file", "uri"])
def test_a_lost_parent_checkpoint_is_quarantined_and_the_step_drawn_again(store, tmp_path,
                                                                         lost):
    """The file gone, or its row's URI gone (a parent collected under a step drawn from
    it, as before the collector waited for claims in flight): the same redraw, never a
    failed attempt."""
    # S = P: every tournament samples the whole population, so the best is the parent
    cfg = _config(tmp_path, population=4, sample=4, steps=5, max_attempts=2,
                  retry_backoff_seconds=0.0)
    sid = searches.create(store, "s", cfg)
    Worker(store, WorkerOptions(search="s", dry_run_seconds=0.0, max_jobs=4)).run()
    with store.transaction(write=False) as s:
        best = s.scalars(select(Individual).where(Individual.search_id == sid)
                         .order_by(Individual.fitness.desc(), Individual.id)).first()
    (Path(cfg.checkpoint_root) / best.checkpoint_uri).unlink()
    if lost == "uri":
        with store.transaction() as s:
            s.execute(update(Individual).where(Individual.id == best.id).values(
                checkpoint_uri=None, checkpoint_sha256=None))
    summary = Worker(store, WorkerOptions(search="s", dry_run_seconds=0.0)).run()
    assert summary.jobs_failed == 0
    st = search_status(store, "s")
    assert st["status"] == "finished" and st["steps_done"] == 5 and st["jobs"]["dead"] == 0
    assert st["quarantined"] == [best.id]
    with store.transaction(write=False) as s:
        assert s.get(Individual, best.id).quarantined
        parents = set(s.scalars(select(Individual.parent_id).where(
            Individual.origin == "child")))
        assert best.id not in parents
        assert s.scalar(select(func.max(Job.step_index)).where(Job.kind == "step")) == 4
    assert _events(store, "parent quarantined") == 1
    assert _events(store, "step redrawn") == 1
    problems = check_invariants(store, "s")
    assert len(problems) == 1 and "quarantined" in problems[0] and \
        problems[0].startswith("4:")


def test_the_collector_waits_for_a_claim_in_flight_that_drew_a_dying_parent(
        pg_url, tmp_path, hooks):
    """PostgreSQL: a claim draws parent P and, before it commits, another worker's commit
    kills P (a victim chosen at commit takes no claim lock) and that worker's collector
    asks what it may delete. It must wait for the claim and keep P's checkpoint: without
    the wait it answers P, deletes the file the step just handed out needs, and the step
    is redrawn with P quarantined (5 to 10 times in 1600 steps of 8 dry-run workers)."""
    store, other, watch = Store(pg_url), Store(pg_url), Store(pg_url)
    sid = searches.create(store, "s", _config(tmp_path, steps=10))
    wid = admin.register_worker(store, "h", 1, "cpu")
    _fill(store, sid, wid)
    seen: dict = {}

    def kill_then_collect(job):
        parent = job.parent.id
        with other.transaction() as s:      # the other commit: P its victim, committed
            s.execute(update(Individual).where(Individual.id == parent).values(alive=False))

        def collect():
            seen["collectable"] = gc.collectable_checkpoints(other, sid, [parent])
            seen["live"] = gc.live_checkpoints(other, sid)
        seen["thread"] = t = threading.Thread(target=collect)
        t.start()
        # until the collector is done (no wait: the bug) or waits on the claims' lock
        while t.is_alive():
            with watch.transaction(write=False) as s:
                if s.scalar(select(func.count()).select_from(text("pg_locks")).where(
                        text("locktype = 'advisory' AND NOT granted"))):
                    break
            t.join(timeout=0.02)
    hooks["step_drawn"] = kill_then_collect
    job = protocol.claim(store, sid, wid)
    seen["thread"].join(timeout=60)
    assert seen["collectable"] == []            # the step that needs P is seen
    assert job.parent.checkpoint_uri in seen["live"]
    for s in (store, other, watch):
        s.dispose()


def test_checkpoint_root_is_stored_absolute(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    searches.create(store, "s", _config(tmp_path, checkpoint_root="ck"))
    with store.transaction(write=False) as s:
        search = s.scalars(select(Search)).one()
    assert search.checkpoint_root == str(tmp_path / "ck") == search.config["checkpoint_root"]
    assert os.path.isabs(search.checkpoint_root)


# -- smaller ------------------------------------------------------------------------------
def test_leftover_episodes_are_folded_at_the_next_claim_and_in_recover(store, tmp_path,
                                                                        hooks):
    cfg = _config(tmp_path, mutator="renas", steps=5, blocks=2)
    sid = searches.create(store, "s", cfg)

    class Died(Exception):
        """The worker killed after its step's commit, before its controller update."""

    def die(job):
        raise Died()
    hooks["step_committed"] = die

    def run_until_death():
        with pytest.raises(Died):
            Worker(store, WorkerOptions(search="s", dry_run_seconds=0.0)).run()
        with store.transaction(write=False) as s:
            return dict(s.execute(select(Episode.job_id, Episode.consumed_in_version)).all())
    first = run_until_death()            # fills the population, commits one step, dies
    assert list(first.values()) == [None]
    second = run_until_death()           # folds the leftover before its own step
    assert [second[j] for j in first] == [1]
    assert sorted(second.values(), key=str) == [1, None]
    assert fold_leftovers(store, "s") == 1   # recover folds what the second one left
    assert snapshots.unconsumed_episodes(store, sid) == []
    assert snapshots.latest_version(store, sid) == 2


def test_the_next_step_runs_while_the_last_commits_controller_update_is_in_flight(
        store, tmp_path, hooks, monkeypatch):
    """Issue 16: the controller update is off the next job's critical path. The first
    step's fold is held until the worker has committed its second step (a fold in the
    loop's thread would wait for itself and time out); then every episode is folded
    exactly once and the worker's updates are the snapshot versions."""
    sid = searches.create(store, "s", _config(tmp_path, mutator="renas", steps=4, blocks=2))
    real = SharedController.fold_search
    steps_committed = threading.Event()
    held: list[int] = []

    def fold_held(self, search_id, config):
        # the first update with an episode to fold (the first step's)
        if not held and snapshots.unconsumed_episodes(store, search_id):
            held.append(1)
            assert steps_committed.wait(20), "the next step waited for the update"
        return real(self, search_id, config)
    monkeypatch.setattr(SharedController, "fold_search", fold_held)
    commits: list[int] = []

    def committed(job):
        commits.append(job.id)
        if len(commits) == 2:
            steps_committed.set()
    hooks["step_committed"] = committed
    summary = Worker(store, WorkerOptions(search="s", dry_run_seconds=0.0)).run()
    assert summary.jobs_done == 8 and summary.jobs_failed == 0
    with store.transaction(write=False) as s:
        episodes = s.execute(select(Episode.job_id, Episode.controller_version,
                                    Episode.consumed_in_version).order_by(Episode.id)).all()
    assert len(episodes) == 4 and all(e.consumed_in_version is not None for e in episodes)
    # the second step was mutated with the snapshot before the first one's update
    assert episodes[1].controller_version == episodes[0].controller_version == 0
    assert episodes[0].consumed_in_version == episodes[1].consumed_in_version == 1
    assert summary.controller_updates == snapshots.latest_version(store, sid)
    assert search_status(store, "s")["status"] == "finished"


def test_a_controller_update_that_fails_in_the_background_ends_the_worker_with_its_error(
        store, tmp_path, monkeypatch):
    """A database that stays away during the update ends the worker as it did when the
    update ran in the loop; the episode stays for the next worker to fold."""
    sid = searches.create(store, "s", _config(tmp_path, mutator="renas", steps=3, blocks=2))

    def gone(self, search_id, config):
        raise DatabaseUnavailable("database unavailable: the server went away")
    monkeypatch.setattr(SharedController, "fold_search", gone)
    with pytest.raises(DatabaseUnavailable, match="went away"):
        Worker(store, WorkerOptions(search="s", dry_run_seconds=0.0)).run()
    monkeypatch.undo()
    Worker(store, WorkerOptions(search="s", dry_run_seconds=0.0)).run()
    assert snapshots.unconsumed_episodes(store, sid) == []
    assert search_status(store, "s")["status"] == "finished"


def test_an_io_error_during_gc_does_not_end_the_worker(store, tmp_path, monkeypatch):
    def refuse(self, uri):
        raise PermissionError(13, "Permission denied", str(self.path(uri)))
    monkeypatch.setattr(CheckpointStore, "delete", refuse)
    searches.create(store, "s", _config(tmp_path, population=3, sample=2, steps=4))
    summary = Worker(store, WorkerOptions(search="s", dry_run_seconds=0.0)).run()
    assert summary.jobs_done == 7 and summary.jobs_failed == 0
    assert search_status(store, "s")["status"] == "finished"
    with store.transaction(write=False) as s:   # the undeleted files keep their URIs
        kept = s.scalar(select(func.count()).where(Individual.alive.is_(False),
                                                   Individual.checkpoint_uri.is_not(None)))
    assert kept == 4
