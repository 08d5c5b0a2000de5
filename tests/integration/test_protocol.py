"""The claim/commit protocol in-process, on both back ends."""
from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from renas_db import searches
from renas_db.config import SearchConfig
from renas_db.db import admin, gc, protocol, snapshots
from renas_db.db.models import Job
from renas_db.db.reports import check_invariants, search_status
from renas_db.errors import AlreadyExistsError, LeaseLost, NotFoundError, StateError
from renas_db.jobs import ClaimedJob
from renas_db.testing import fake_result_for


def _config(tmp_path, **kw):
    base = dict(population=4, sample=2, steps=3, mutator="random", blocks=3,
                lease_seconds=30.0, checkpoint_root=str(tmp_path / "ck"))
    base.update(kw)
    return SearchConfig(**base)


def _fill_population(store, sid, wid, fits=(0.1, 0.2, 0.3, 0.4)):
    for f in fits:
        job = protocol.claim(store, sid, wid)
        assert job.kind == "init"
        protocol.commit_job(store, job, fake_result_for(job, f), wid)


def test_create_search_and_duplicates(store, tmp_path):
    sid = searches.create(store, "s", _config(tmp_path))
    with pytest.raises(AlreadyExistsError):
        searches.create(store, "s", _config(tmp_path))
    rows = admin.list_searches(store)
    assert rows[0]["name"] == "s" and rows[0]["status"] == "created"
    with store.transaction() as s:
        jobs = s.scalars(select(Job).where(Job.search_id == sid)).all()
        assert [j.kind for j in jobs] == ["init"] * 4
    # the same seed gives the same initial population
    assert searches.initial_genotypes(_config(tmp_path)) == \
        [j.genotype for j in jobs]
    with pytest.raises(NotFoundError, match="no search named 'nope'"):
        admin.set_search_status(store, "nope", "paused")


def test_full_search_lifecycle_and_invariants(store, tmp_path):
    sid = searches.create(store, "s", _config(tmp_path))
    wid = admin.register_worker(store, "h", 1, "cpu")
    _fill_population(store, sid, wid)
    for step in range(3):
        job = protocol.claim(store, sid, wid)
        assert job.kind == "step" and job.step_index == step
        assert job.parent.id in job.sample and job.victim_id is None  # chosen at commit
        protocol.commit_job(store, job, fake_result_for(job, 0.9), wid)
        assert job.victim_id in job.sample and job.victim_id != job.parent.id
    assert protocol.claim(store, sid, wid) is None
    st = search_status(store, "s")
    assert st["status"] == "finished" and st["steps_done"] == 3 and st["alive"] == 4
    problems = check_invariants(store, "s")
    assert [p for p in problems if not p.startswith("4:")] == []  # fake checkpoints


def test_commit_is_fenced_and_applied_once(store, tmp_path):
    sid = searches.create(store, "s", _config(tmp_path))
    wid = admin.register_worker(store, "h", 1, "cpu")
    job = protocol.claim(store, sid, wid)
    child = protocol.commit_job(store, job, fake_result_for(job, 0.5), wid)
    # a retry after a lost acknowledgement finds the applied result
    assert protocol.commit_job(store, job, fake_result_for(job, 0.5), wid) == child
    other = protocol.claim(store, sid, wid)
    stale = ClaimedJob(**{**other.__dict__, "lease_token": "f" * 32})
    with pytest.raises(LeaseLost):
        protocol.commit_job(store, stale, fake_result_for(other, 0.5), wid)
    assert not protocol.heartbeat(store, other.id, "f" * 32, wid)
    assert protocol.heartbeat(store, other.id, other.lease_token, wid)


def test_expired_lease_is_requeued_then_dead(store, tmp_path):
    sid = searches.create(store, "s", _config(tmp_path, lease_seconds=1.0, max_attempts=2))
    wid = admin.register_worker(store, "h", 1, "cpu")
    first = protocol.claim(store, sid, wid)
    time.sleep(1.3)
    second = protocol.claim(store, sid, wid)   # the sweep requeues it; the oldest is taken
    assert second.id == first.id and second.attempt == 2
    with pytest.raises(LeaseLost):
        protocol.commit_job(store, first, fake_result_for(first, 0.5), wid)
    time.sleep(1.3)
    assert protocol.recover(store, "s")["requeued_or_dead"] == 1
    with store.transaction() as s:
        state = s.scalar(select(Job.state).where(Job.id == first.id))
    assert state == "dead"   # an init job dead after max attempts is replaced
    st = search_status(store, "s")
    assert st["status"] == "running" and st["jobs"]["queued"] == 4
    with store.transaction() as s:
        kinds = s.scalars(select(Job.kind).where(Job.search_id == sid,
                                                 Job.state == "queued")).all()
    assert kinds == ["init"] * 4


def test_fail_and_release(store, tmp_path):
    sid = searches.create(store, "s", _config(tmp_path, max_attempts=3,
                                              retry_backoff_seconds=0.0))
    wid = admin.register_worker(store, "h", 1, "cpu")
    job = protocol.claim(store, sid, wid)
    assert protocol.fail_job(store, job, "boom") == "queued"
    again = protocol.claim(store, sid, wid)
    assert again.id == job.id and again.attempt == 2
    protocol.release_job(store, again)
    third = protocol.claim(store, sid, wid)
    assert third.id == job.id and third.attempt == 2     # a release is not an attempt
    with store.transaction() as s:
        assert s.scalar(select(Job.error).where(Job.id == job.id)) is not None


def _assert_victims_reserved(steps):
    """`steps`: pending steps in the order they were claimed. A step's victim is reserved
    from its claim on: no step claimed later may sample it, so no two share a victim and
    none can mutate an individual another is about to remove."""
    for n, earlier in enumerate(steps):
        for later in steps[n + 1:]:
            assert earlier.victim_id not in later.sample, \
                (f"step {later.step_index} sampled {later.sample}, which holds the victim "
                 f"{earlier.victim_id} reserved by pending step {earlier.step_index}")
    assert len({s.victim_id for s in steps}) == len(steps)


def test_pause_resume_and_victim_reservation(store, tmp_path):
    sid = searches.create(store, "s", _config(tmp_path, population=4, sample=2, steps=10,
                                              victim="claim"))
    wid = admin.register_worker(store, "h", 1, "cpu")
    _fill_population(store, sid, wid)
    admin.set_search_status(store, "s", "paused")
    assert protocol.claim(store, sid, wid) is None
    with pytest.raises(StateError):
        admin.set_search_status(store, "s", "paused")
    admin.set_search_status(store, "s", "running")
    # P=4, S=2: the first step draws from 4, the second from the 3 left unreserved, the
    # third from the 2 left; then 1 is left, fewer than S
    a = protocol.claim(store, sid, wid)
    b = protocol.claim(store, sid, wid)
    c = protocol.claim(store, sid, wid)
    assert None not in (a, b, c)
    _assert_victims_reserved([a, b, c])
    assert protocol.claim(store, sid, wid) is None


def test_controller_update_is_optimistic(store, tmp_path):
    cfg = _config(tmp_path, mutator="renas")
    sid = searches.create(store, "s", cfg)
    wid = admin.register_worker(store, "h", 1, "cpu")
    _fill_population(store, sid, wid)
    job = protocol.claim(store, sid, wid)
    result = fake_result_for(job, 0.7, mutation=[[0, "op1", 1]], controller_version=0,
                             log_prob=-3.0, reward=1.9)
    protocol.commit_job(store, job, result, wid)
    eps = snapshots.unconsumed_episodes(store, sid)
    assert len(eps) == 1 and eps[0].parent_genotype == job.parent.genotype
    version, state, _ = snapshots.latest_snapshot(store, sid)
    assert version == 0
    assert snapshots.save_update(store, sid, 0, state, [eps[0].id], episodes_seen=1,
                                 mean_reward=1.9, baseline=1.9, stats={})
    # a loser writing the same version, or consuming a consumed episode, changes nothing
    assert not snapshots.save_update(store, sid, 0, state, [eps[0].id], episodes_seen=1,
                                     mean_reward=1.9, baseline=1.9, stats={})
    assert not snapshots.save_update(store, sid, 1, state, [eps[0].id], episodes_seen=1,
                                     mean_reward=1.9, baseline=1.9, stats={})
    assert snapshots.latest_version(store, sid) == 1
    assert snapshots.unconsumed_episodes(store, sid) == []


def test_gc_candidates_exclude_parents_of_pending_jobs(store, tmp_path):
    sid = searches.create(store, "s", _config(tmp_path, steps=10))
    wid = admin.register_worker(store, "h", 1, "cpu")
    _fill_population(store, sid, wid)
    a = protocol.claim(store, sid, wid)
    protocol.commit_job(store, a, fake_result_for(a, 0.95), wid)
    assert gc.collectable_checkpoints(store, sid, [a.victim_id]) == \
        [(a.victim_id, f"s/{a.victim_id}.pt")]
    gc.mark_collected(store, [a.victim_id])
    assert gc.collectable_checkpoints(store, sid, [a.victim_id]) == []
    live = gc.live_checkpoints(store, sid)
    assert len(live) == 4


def test_workers_stop_on_a_paused_search_and_resume_later(store, tmp_path):
    from renas_db.worker import Worker, WorkerOptions
    searches.create(store, "s", _config(tmp_path, population=2, sample=2, steps=2))
    admin.set_search_status(store, "s", "paused")
    opts = WorkerOptions(search="s", dry_run_seconds=0.0, poll_seconds=0.05)
    summary = Worker(store, opts).run()          # returns at once: nothing to do
    assert summary.jobs_done == 0
    admin.set_search_status(store, "s", "running")
    assert Worker(store, opts).run().jobs_done == 4
    assert search_status(store, "s")["status"] == "finished"


def test_victims_at_commit_any_number_of_steps_in_flight(store, tmp_path):
    """victim = commit: nothing is reserved, so P=4 S=2 hands out 7 steps at once (3
    with reservation). Each commit removes one alive member of its sample, never its
    parent, while one is left; then the worst of a fresh sample; never one twice."""
    from renas_db.db.models import Individual
    sid = searches.create(store, "s", _config(tmp_path, population=4, sample=2, steps=7))
    wid = admin.register_worker(store, "h", 1, "cpu")
    _fill_population(store, sid, wid)
    steps = [protocol.claim(store, sid, wid) for _ in range(7)]
    assert None not in steps and {j.victim_id for j in steps} == {None}
    idle = admin.register_worker(store, "h", 2, "cpu")
    assert protocol.claim(store, sid, idle) is None     # every step created: it waits
    assert search_status(store, "s")["waiting"] == {
        "count": 1, "why": "all 7 steps created, 7 still running"}
    victims = []
    for i, job in enumerate(steps):
        with store.transaction(write=False) as s:
            alive = set(s.scalars(select(Individual.id).where(Individual.alive.is_(True))))
        protocol.commit_job(store, job, fake_result_for(job, 0.05 + i / 100), wid)
        assert job.victim_id in alive and job.victim_id != job.parent.id
        left = (alive & set(job.sample)) - {job.parent.id}
        if left:  # the worst of the sample still alive
            assert job.victim_id in left
        victims.append(job.victim_id)
        with store.transaction(write=False) as s:
            assert s.get(Job, job.id).victim_id == job.victim_id
            assert s.scalar(select(func.count()).where(Individual.alive.is_(True))) == 4
    assert len(set(victims)) == 7
    assert [p for p in check_invariants(store, "s") if not p.startswith("4:")] == []


def test_commit_writes_exactly_child_victim_episode_and_counter(store, tmp_path):
    """The commit's statements share one set of parameters (one round trip on
    PostgreSQL): each must write only its own columns. The victim keeps its own genotype
    and fitness, the child gets the result, the episode its fields, the worker +1."""
    from renas_db.db.models import Episode, Individual, Worker
    sid = searches.create(store, "s", _config(tmp_path, mutator="renas", victim="claim"))
    wid = admin.register_worker(store, "h", 1, "cpu")
    _fill_population(store, sid, wid)
    job = protocol.claim(store, sid, wid)
    with store.transaction() as s:
        before = s.get(Individual, job.victim_id)
        victim_before = (before.genotype, before.fitness, before.job_id, before.origin)
    result = fake_result_for(job, 0.77, mutation=[[0, "op1", 1]], controller_version=None,
                             log_prob=-2.5, reward=0.3)
    child = protocol.commit_job(store, job, result, wid)
    with store.transaction() as s:
        victim = s.get(Individual, job.victim_id)
        assert (victim.genotype, victim.fitness, victim.job_id, victim.origin) == victim_before
        assert not victim.alive and victim.removed_by_job_id == job.id
        assert victim.died_at is not None
        kid = s.get(Individual, child)
        assert kid.alive and kid.fitness == 0.77 and kid.origin == "child"
        assert kid.parent_id == job.parent.id and kid.mutation == [[0, "op1", 1]]
        assert kid.controller_version is None
        ep = s.scalars(select(Episode).where(Episode.job_id == job.id)).one()
        assert (ep.controller_version, ep.actions, ep.log_prob, ep.reward, ep.fitness) == \
            (0, [[0, "op1", 1]], -2.5, 0.3, 0.77)
        assert s.get(Worker, wid).jobs_done == 5   # 4 init jobs + this step
        assert s.get(Job, job.id).state == "done"


def test_commit_refuses_a_dead_victim_and_writes_nothing(store, tmp_path):
    from sqlalchemy import update

    from renas_db.db.models import Individual
    sid = searches.create(store, "s", _config(tmp_path, victim="claim"))
    wid = admin.register_worker(store, "h", 1, "cpu")
    _fill_population(store, sid, wid)
    job = protocol.claim(store, sid, wid)
    with store.transaction() as s:   # an impossible state, forced: the victim died
        s.execute(update(Individual).where(Individual.id == job.victim_id).values(alive=False))
    with pytest.raises(StateError, match="not alive"):
        protocol.commit_job(store, job, fake_result_for(job, 0.5), wid)
    with store.transaction() as s:
        assert s.get(Job, job.id).state == "running"
        assert s.scalar(select(Individual.id).where(Individual.job_id == job.id)) is None
