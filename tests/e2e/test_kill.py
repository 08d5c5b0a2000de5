"""kill -9 at varied moments, over and over: the search still finishes correctly."""
from __future__ import annotations

import os
import random
import signal
import time

import pytest

from renas_db.db.models import Individual, Job
from renas_db.db.session import Store
from tests.e2e.common import assert_invariants, count, create, running_job_of, search_status
from tests.helpers import TINY, spawn_worker, wait_for

# real networks trained in real worker processes: minutes, not seconds
pytestmark = pytest.mark.slow


def test_kill_9_ten_times_during_training(db_url, tmp_path):
    create(db_url, "k", tmp_path, *TINY, "--population", "4", "--sample", "2", "--steps",
           "10", "--mutator", "renas", "--controller-hidden", "16", "--lease-seconds", "2",
           "--max-attempts", "20", "--finetune-examples", "512")
    store = Store(db_url)
    rng = random.Random(0)
    kills = 0
    log = str(tmp_path / "killed.log")
    while kills < 10:
        p = spawn_worker(db_url, "k", cwd=str(tmp_path), log_path=log)
        wait_for(lambda p=p: running_job_of(store, p.pid) or p.poll() is not None,
                 timeout=120, every=0.02, what="a claimed job")
        if p.poll() is not None:
            break
        # varied moments: right after the claim, while loading/inheriting, mid-training
        time.sleep(rng.uniform(0.0, 1.5))
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        kills += 1
    assert kills == 10
    finishers = [spawn_worker(db_url, "k", cwd=str(tmp_path),
                              log_path=str(tmp_path / f"fin{i}.log")) for i in range(2)]
    for p in finishers:
        assert p.wait(timeout=400) == 0
    assert search_status(store, "k") == "finished"
    assert count(store, Job, Job.kind == "step", Job.state == "done") == 10
    assert count(store, Individual, Individual.alive.is_(True)) == 4
    assert count(store, Job, Job.attempt > 1) >= 1          # killed jobs were reclaimed
    store.dispose()
    assert_invariants(db_url, "k", tmp_path)
