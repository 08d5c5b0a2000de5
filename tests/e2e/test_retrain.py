"""Retraining as crash-safe distributed work, and stability studies."""
from __future__ import annotations

import json
import os
import signal
import time

from renas_db.db.models import Individual, Job
from renas_db.db.session import Store
from tests.e2e.common import assert_invariants, count, create, running_job_of
from tests.helpers import TINY, run_cli, spawn_worker, wait_for


def test_retrain_jobs_survive_a_kill_and_run_exactly_once(db_url, tmp_path):
    create(db_url, "rt", tmp_path, *TINY, "--population", "3", "--sample", "2", "--steps",
           "0", "--mutator", "random", "--lease-seconds", "2")
    w = spawn_worker(db_url, "rt", cwd=str(tmp_path))
    assert w.wait(timeout=300) == 0                      # the initial population; E=0
    r = run_cli("retrain", "rt", "--all", "--epochs", "1", "--train-subset", "400",
                "--drop-path", "0.1", "--batch-size", "32", db_url=db_url, cwd=str(tmp_path))
    assert r.code == 0, r.err
    store = Store(db_url)
    a = spawn_worker(db_url, "rt", cwd=str(tmp_path))
    job = wait_for(lambda: running_job_of(store, a.pid, "retrain"), timeout=120, every=0.02,
                   what="a claimed retrain job")
    time.sleep(1.0)                                      # mid-training
    os.kill(a.pid, signal.SIGKILL)
    a.wait()
    b = spawn_worker(db_url, "rt", cwd=str(tmp_path), log_path=str(tmp_path / "b.log"))
    assert b.wait(timeout=300) == 0
    assert count(store, Individual, Individual.origin == "retrain") == 3
    assert count(store, Job, Job.kind == "retrain", Job.state == "done") == 3
    with store.transaction(write=False) as s:
        from sqlalchemy import select
        attempt = s.scalar(select(Job.attempt).where(Job.id == job.id))
        rows = s.execute(select(Individual.parent_id, Individual.test_accuracy,
                                Individual.n_params).where(
            Individual.origin == "retrain")).all()
    assert attempt == 2
    assert all(p is not None and t is not None and n for p, t, n in rows)
    store.dispose()
    r = run_cli("retrain", "rt", "--report", "--json", db_url=db_url)
    rep = json.loads(r.out)
    assert len(rep["ranked"]) == 3 and rep["derived"]["rank"] == 1
    assert rep["ranked"][0]["val_accuracy"] >= rep["ranked"][-1]["val_accuracy"]
    assert_invariants(db_url, "rt", tmp_path)


def test_retrain_a_preset_without_a_search(tmp_path):
    db = f"sqlite:///{tmp_path / 'r.sqlite'}"
    r = run_cli("retrain", "paper", "--genotype", "renasnet", "--dataset", "synthetic",
                "--cells", "1", "--filters", "4", "--epochs", "0.1", "--drop-path", "0",
                db_url=db, cwd=str(tmp_path))
    assert r.code == 0, r.err
    w = spawn_worker(db, "paper", cwd=str(tmp_path))
    assert w.wait(timeout=300) == 0
    r = run_cli("retrain", "paper", "--report", db_url=db)
    assert r.code == 0 and "derived architecture" in r.out and "0 sep5 + 1 sep3" in r.out


def test_study_create_run_and_report(tmp_path):
    from renas_db import studies
    from renas_db.config import SearchConfig
    from renas_db.db.schema import upgrade
    from renas_db.db.queries import study_searches
    from renas_db.searches import initial_genotypes
    from renas_db.worker import Worker, WorkerOptions
    store = Store(f"sqlite:///{tmp_path / 's.sqlite'}")
    upgrade(store)
    base = SearchConfig(population=3, sample=2, steps=4, blocks=3, controller_hidden=8,
                        checkpoint_root=str(tmp_path / "ck"))
    names = studies.create_study(store, "st", base, 2, ["renas", "random"], same_init=True)
    assert names == ["st-renas-g0", "st-random-g0", "st-renas-g1", "st-random-g1"]
    cfgs = [SearchConfig.from_dict(i["config"]) for i in study_searches(store, "st")]
    assert len({tuple(initial_genotypes(c)) for c in cfgs}) == 1     # same initial population
    assert len({c.seed for c in cfgs}) == 2                           # one seed per group
    Worker(store, WorkerOptions(dry_run_seconds=0.0, checkpoint_root=str(tmp_path / "ck"))).run()
    rep = studies.report(store, "st")
    assert sum(sum(c.values()) for c in rep["counts"].values()) == 4
    assert all(r["verdict"] in ("Success", "Unstable", "Fail") for r in rep["searches"])
    png = tmp_path / "study.png"
    studies.plot(store, rep, str(png))
    assert png.stat().st_size > 10_000
    other = studies.create_study(store, "st2", base, 2, ["random"], same_init=False)
    cfgs = [SearchConfig.from_dict(i["config"]) for i in study_searches(store, "st2")]
    assert initial_genotypes(cfgs[0]) != initial_genotypes(cfgs[1]) and len(other) == 2
    store.dispose()


def test_classify_rule():
    from renas_db.studies import classify
    assert classify(0.5, [0.5, 0.52, 0.55, 0.56, 0.56]) == "Success"
    assert classify(0.5, [0.5, 0.45, 0.40, 0.35, 0.30]) == "Fail"
    assert classify(0.5, [0.5, 0.6, 0.55, 0.5, 0.505]) == "Unstable"
    assert classify(None, []) == "unfinished"
