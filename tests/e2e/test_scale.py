"""More workers than P-S+1 on one search (issue 20): victims chosen at commit, kill -9,
and the PgBouncer path."""
from __future__ import annotations

import os
import random
import shutil
import signal
import tempfile
import time

import pytest
from sqlalchemy import text

from renas_db.db.session import Store
from renas_db.testing import PGBOUNCER, start_pgbouncer
from tests.e2e.common import assert_invariants, create, running_job_of, search_status
from tests.helpers import spawn_worker, wait_for

P, S, E = 6, 3, 40   # at most P - S + 1 = 4 steps in flight if victims were reserved
WORKERS = 7

# the population after every commit, reconstructed in id order: a victim existed before
# the commit that removed it, so it is older than that commit's child
POPULATION_AFTER_EACH_CHILD = """
SELECT c.id, (SELECT count(*) FROM individuals i
              WHERE i.search_id = c.search_id AND i.origin != 'retrain' AND i.id <= c.id
                AND NOT EXISTS (SELECT 1 FROM individuals k
                                WHERE k.job_id = i.removed_by_job_id AND k.id <= c.id))
FROM individuals c WHERE c.origin = 'child' ORDER BY c.id
"""


def _assert_every_commit(store: Store) -> None:
    with store.connection(write=False) as conn:
        sizes = conn.execute(text(POPULATION_AFTER_EACH_CHILD)).all()
        assert len(sizes) == E and {n for _, n in sizes} == {P}
        # one victim per step, recorded on it, removed by it alone, never its parent
        bad = conn.execute(text(
            "SELECT j.id FROM jobs j WHERE j.kind = 'step' AND j.state = 'done' AND "
            "((SELECT count(*) FROM individuals v WHERE v.removed_by_job_id = j.id) != 1 "
            "OR NOT EXISTS (SELECT 1 FROM individuals v WHERE v.id = j.victim_id AND "
            "v.removed_by_job_id = j.id) OR j.victim_id = j.parent_id)")).all()
        assert bad == []
        done, top = conn.execute(text(
            "SELECT count(*), max(step_index) + 1 FROM jobs WHERE kind = 'step' AND "
            "state = 'done'")).one()
        assert (done, top) == (E, E)
        alive = conn.execute(text("SELECT count(*) FROM individuals WHERE alive")).scalar()
        assert alive == P
        spans = conn.execute(text("SELECT claimed_at, finished_at FROM jobs WHERE "
                                  "kind = 'step' AND state = 'done'")).all()
    # more steps than reservation allows were in flight at once (the final attempts'
    # leases, from the database's clock)
    points = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    level = peak = 0
    for _, d in points:
        level += d
        peak = max(peak, level)
    assert peak > P - S + 1


@pytest.mark.slow   # 7 dry-run workers (+ replacements), 2 killed with -9
def test_more_workers_than_p_minus_s_plus_1_under_kill_9(db_url, tmp_path):
    create(db_url, "w", tmp_path, "--population", str(P), "--sample", str(S), "--steps",
           str(E), "--mutator", "random", "--lease-seconds", "2", "--max-attempts", "20")
    store = Store(db_url)
    rng = random.Random(20)
    logs = iter(str(tmp_path / f"w{i}.log") for i in range(100))
    procs = [spawn_worker(db_url, "w", "--dry-run", "0.4", cwd=str(tmp_path),
                          log_path=next(logs)) for _ in range(WORKERS)]
    for _ in range(2):  # kill -9 a worker holding a step, start a replacement
        victim = wait_for(lambda: next((p for p in rng.sample(procs, len(procs))
                                        if running_job_of(store, p.pid, "step")), None),
                          timeout=120, every=0.05, what="a worker running a step")
        time.sleep(rng.uniform(0.0, 0.4))
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        procs.remove(victim)
        procs.append(spawn_worker(db_url, "w", "--dry-run", "0.4", cwd=str(tmp_path),
                                  log_path=next(logs)))
    for p in procs:
        assert p.wait(timeout=300) == 0
    assert search_status(store, "w") == "finished"
    _assert_every_commit(store)
    store.dispose()
    assert_invariants(db_url, "w", tmp_path)


@pytest.fixture
def pgbouncer(pg_url):  # type: ignore[no-untyped-def]
    """A PgBouncer in transaction mode in front of the test database, 2 server
    connections at most."""
    from sqlalchemy.engine import make_url
    if not os.path.exists(PGBOUNCER):
        pytest.skip("PGBOUNCER MISSING: install Debian's pgbouncer to test the pooler path")
    url = make_url(pg_url)
    # pgbouncer runs as nobody under root, which cannot enter pytest's private tmp_path
    folder = tempfile.mkdtemp(prefix="renas-bouncer-")
    proc, port = start_pgbouncer(folder, url.host or "127.0.0.1", url.port or 5432,
                                 url.username or "postgres", url.database or "*", pool=2)
    yield url.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    proc.terminate()
    proc.wait()
    shutil.rmtree(folder, ignore_errors=True)


def test_search_to_e_through_pgbouncer_transaction_mode(pgbouncer, pg_url, tmp_path,
                                                        monkeypatch):
    monkeypatch.setenv("RENAS_DB_PREPARE", "0")  # the workers inherit it
    create(pg_url, "b", tmp_path, "--population", str(P), "--sample", str(S), "--steps",
           "20", "--mutator", "random", "--lease-seconds", "5")
    procs = [spawn_worker(pgbouncer, "b", "--dry-run", "0.1", cwd=str(tmp_path),
                          log_path=str(tmp_path / f"b{i}.log")) for i in range(5)]
    for i, p in enumerate(procs):
        assert p.wait(timeout=300) == 0, (tmp_path / f"b{i}.log").read_text()[-2000:]
    store = Store(pg_url)
    assert search_status(store, "b") == "finished"
    with store.connection(write=False) as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs WHERE kind = 'step' AND "
                                 "state = 'done'")).scalar() == 20
        assert conn.execute(text("SELECT count(*) FROM individuals WHERE alive")).scalar() == P
    store.dispose()
    assert_invariants(pg_url, "b", tmp_path)
