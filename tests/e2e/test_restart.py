"""PostgreSQL restarted under running workers (a throwaway cluster: the shared server
is left alone)."""
from __future__ import annotations

import time

import pytest

from renas_db.db.models import Job
from renas_db.db.schema import upgrade
from renas_db.db.session import Store
from tests.e2e.common import assert_invariants, count, create, search_status
from tests.helpers import spawn_worker, wait_for
from tests.pgcluster import ThrowawayCluster, pg_bin

# 40 steps across a server restart and the workers' reconnect back-off
pytestmark = pytest.mark.slow


@pytest.fixture
def cluster():
    if pg_bin() is None:
        pytest.skip("no PostgreSQL binaries to start a throwaway cluster")
    c = ThrowawayCluster().init()
    c.wait_ready()
    yield c
    c.destroy()


def test_postgresql_restart_while_two_workers_run(cluster, tmp_path):
    url = cluster.url
    store = Store(url)
    upgrade(store)
    create(url, "pg", tmp_path, "--population", "6", "--sample", "2", "--steps", "40",
           "--mutator", "random", "--lease-seconds", "20")
    logs = [tmp_path / f"w{i}.log" for i in range(2)]
    workers = [spawn_worker(url, "pg", "--dry-run", "0.2", cwd=str(tmp_path),
                            log_path=str(log)) for log in logs]
    wait_for(lambda: count(store, Job, Job.state == "done") >= 10, timeout=120,
             what="10 committed jobs")
    store.dispose()
    cluster.stop("fast")
    time.sleep(3)
    cluster.start()
    for w in workers:
        assert w.wait(timeout=300) == 0
    store = Store(url)
    assert search_status(store, "pg") == "finished"
    assert count(store, Job, Job.kind == "step", Job.state == "done") == 40
    for log in logs:
        text = log.read_text()
        assert "retrying" in text or "will retry" in text, text[-3000:]
    store.dispose()
    assert_invariants(url, "pg", tmp_path)
