"""Frozen workers, kills before the first heartbeat, and clean SIGTERM."""
from __future__ import annotations

import os
import signal
import time

from renas_db.db.models import Individual
from renas_db.db.session import Store
from tests.e2e.common import assert_invariants, count, create, events, job_row, running_job_of
from tests.helpers import spawn_worker, wait_for

DRY = ("--population", "3", "--sample", "2", "--steps", "0", "--mutator", "random",
       "--blocks", "2")


def test_frozen_worker_past_its_lease_cannot_commit(db_url, tmp_path):
    create(db_url, "f", tmp_path, *DRY, "--lease-seconds", "1.5")
    store = Store(db_url)
    log_a = tmp_path / "a.log"
    a = spawn_worker(db_url, "f", "--dry-run", "4", "--max-jobs", "1", cwd=str(tmp_path),
                     log_path=str(log_a))
    job = wait_for(lambda: running_job_of(store, a.pid), every=0.02, what="A's claim")
    os.kill(a.pid, signal.SIGSTOP)
    b = spawn_worker(db_url, "f", "--dry-run", "0.2", cwd=str(tmp_path),
                     log_path=str(tmp_path / "b.log"))
    wait_for(lambda: job_row(store, job.id) == ("done", 2), timeout=120,
             what="takeover and commit by B")
    os.kill(a.pid, signal.SIGCONT)
    assert a.wait(timeout=60) == 0
    assert b.wait(timeout=120) == 0
    assert "lease lost" in log_a.read_text()
    assert count(store, Individual, Individual.job_id == job.id) == 1
    assert events(store, "lease expired") >= 1
    store.dispose()
    assert_invariants(db_url, "f", tmp_path)


def test_kill_before_first_heartbeat_is_reclaimed(db_url, tmp_path):
    create(db_url, "h", tmp_path, *DRY, "--lease-seconds", "4")
    store = Store(db_url)
    a = spawn_worker(db_url, "h", "--dry-run", "30", cwd=str(tmp_path))
    job = wait_for(lambda: running_job_of(store, a.pid), every=0.01, what="A's claim")
    os.kill(a.pid, signal.SIGKILL)   # heartbeats come every lease/4 = 1 s: none sent yet
    a.wait()
    b = spawn_worker(db_url, "h", "--dry-run", "0.1", cwd=str(tmp_path))
    assert b.wait(timeout=120) == 0
    assert job_row(store, job.id) == ("done", 2)
    store.dispose()
    assert_invariants(db_url, "h", tmp_path)


def test_sigterm_releases_the_job_and_exits_0(db_url, tmp_path):
    create(db_url, "t", tmp_path, *DRY, "--lease-seconds", "60")
    store = Store(db_url)
    a = spawn_worker(db_url, "t", "--dry-run", "60", cwd=str(tmp_path))
    job = wait_for(lambda: running_job_of(store, a.pid), every=0.05, what="A's claim")
    t0 = time.monotonic()
    os.kill(a.pid, signal.SIGTERM)
    assert a.wait(timeout=30) == 0
    assert time.monotonic() - t0 < 20
    assert job_row(store, job.id) == ("queued", 0)   # released, not counted as an attempt
    assert events(store, "job released") == 1
    store.dispose()
