"""Retraining as crash-safe distributed work, in real worker processes."""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

from renas_db.db.models import Individual, Job
from renas_db.db.session import Store
from tests.e2e.common import assert_invariants, count, create, running_job_of
from tests.helpers import TINY, run_cli, spawn_worker, wait_for

# real networks trained in real worker processes: minutes, not seconds
pytestmark = pytest.mark.slow


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
