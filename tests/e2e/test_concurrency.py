"""Many real worker processes claiming and committing at once."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from renas_db.db.models import Episode, Event, Individual, Job
from renas_db.db.session import Store
from tests.e2e.common import assert_invariants, count, create, events
from tests.helpers import spawn_worker


def _run_workers(db_url, tmp_path, name, n, per_worker, *extra):
    procs, stats = [], []
    for i in range(n):
        path = tmp_path / f"stats{i}.json"
        stats.append(path)
        procs.append(spawn_worker(db_url, name, "--max-jobs", str(per_worker),
                                  "--stats-json", str(path), "--idle-exit", "60", *extra,
                                  cwd=str(tmp_path), log_path=str(tmp_path / f"w{i}.log")))
    for p in procs:
        assert p.wait(timeout=600) == 0, (tmp_path / "w0.log").read_text()[-2000:]
    return [json.loads(p.read_text()) for p in stats]


def _event_counts(store: Store) -> str:
    with store.transaction(write=False) as s:
        kinds = s.execute(select(Event.kind, func.count()).group_by(Event.kind)).all()
        odd = s.scalars(select(Event.message).where(Event.kind.not_in(
            ("worker started", "worker stopped", "search created", "search finished")))
            .limit(5)).all()
    return f"events: {dict(kinds)}; first others: {odd}"


@pytest.mark.slow   # 12 worker processes, 2000 jobs
@pytest.mark.parametrize("backend, n, per_worker", [("postgresql", 8, 200), ("sqlite", 4, 100)])
def test_concurrent_claims_and_commits(backend, n, per_worker, tmp_path, request):
    if backend == "postgresql":
        db_url = request.getfixturevalue("pg_url")
    else:
        db_url = f"sqlite:///{tmp_path / 'renas.sqlite'}"
    total = n * per_worker
    create(db_url, "c", tmp_path, "--population", "20", "--sample", "2", "--steps",
           str(total - 20), "--mutator", "random", "--lease-seconds", "60")
    stats = _run_workers(db_url, tmp_path, "c", n, per_worker, "--dry-run", "0")
    store = Store(db_url)
    why = _event_counts(store)  # what went on, should an assertion fail
    assert [s["jobs_done"] for s in stats] == [per_worker] * n, why  # 0 lost commits
    assert sum(s["leases_lost"] + s["jobs_failed"] for s in stats) == 0, why
    # no parent's checkpoint collected under a step just drawn from it (docs/design.md,
    # garbage collection: claims in flight)
    assert events(store, "parent quarantined") == 0, why
    assert count(store, Individual) == total                       # 0 double claims
    assert count(store, Job, Job.state == "done") == total
    assert count(store, Job, Job.attempt > 1) == 0
    assert events(store, "lease expired") == 0
    store.dispose()
    assert_invariants(db_url, "c", tmp_path)


def test_controller_episodes_consumed_once_with_4_workers(db_url, tmp_path):
    create(db_url, "r", tmp_path, "--population", "8", "--sample", "2", "--steps", "24",
           "--mutator", "renas", "--blocks", "3", "--controller-hidden", "16")
    _run_workers(db_url, tmp_path, "r", 4, 100, "--dry-run", "0.05")
    store = Store(db_url)
    assert count(store, Episode) == 24
    assert count(store, Episode, Episode.consumed_in_version.is_(None)) == 0
    with store.transaction(write=False) as s:
        from renas_db.db.models import ControllerSnapshot
        versions = list(s.scalars(select(ControllerSnapshot.version)
                                  .order_by(ControllerSnapshot.version)))
        consumed = list(s.scalars(select(Episode.consumed_in_version)))
    assert versions == list(range(len(versions))) and len(versions) > 1
    assert set(consumed) <= set(versions) - {0}
    store.dispose()
    assert_invariants(db_url, "r", tmp_path)
