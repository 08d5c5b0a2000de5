"""The end-to-end test: `renas-db run` with 2 workers and the renas mutator, killed as a
whole, then run again: it resumes, finishes, and the invariants hold in SQL."""
from __future__ import annotations

import os
import signal
import subprocess

import pytest

from renas_db.db.models import Episode, Individual, Job
from renas_db.db.session import Store
from tests.e2e.common import assert_invariants, count, search_status
from tests.helpers import TINY, cli_command, cli_env, run_cli, wait_for

# real networks trained in real worker processes: minutes, not seconds
pytestmark = pytest.mark.slow


def test_run_killed_then_resumed_finishes(db_url, tmp_path):
    args = ["run", "e2e", "--workers", "2", "--threads", "1", *TINY, "--population", "4",
            "--sample", "2", "--steps", "8", "--mutator", "renas", "--controller-hidden",
            "16", "--lease-seconds", "3", "--checkpoint-root", str(tmp_path / "ck")]
    p = subprocess.Popen(cli_command(*args), env=cli_env(db_url), cwd=str(tmp_path),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    store = Store(db_url)
    wait_for(lambda: count(store, Job, Job.kind == "step", Job.state == "done") >= 2
             or p.poll() is not None, timeout=300, what="two committed steps")
    assert p.poll() is None
    os.killpg(p.pid, signal.SIGKILL)      # run and both of its workers, all at once
    p.wait()
    assert search_status(store, "e2e") == "running"
    r = run_cli("run", "e2e", "--workers", "2", "--threads", "1", db_url=db_url,
                cwd=str(tmp_path), timeout=600)
    assert r.code == 0, r.err[-3000:]
    assert "best genotype" in r.out
    assert search_status(store, "e2e") == "finished"
    assert count(store, Job, Job.kind == "step", Job.state == "done") == 8
    assert count(store, Individual, Individual.alive.is_(True)) == 4
    assert count(store, Episode, Episode.consumed_in_version.is_(None)) == 0
    store.dispose()
    assert_invariants(db_url, "e2e", tmp_path)
