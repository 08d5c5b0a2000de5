"""Issue 15's faults with real worker processes: an outage shorter than the retry
backoff, a failed search brought back, a committer killed before its controller update."""
from __future__ import annotations

import subprocess

import pytest
from sqlalchemy import func, select

from renas_db.db.models import Episode, Job
from renas_db.db.session import Store
from renas_db.dry_run import FAIL_FILE
from tests.e2e.common import assert_invariants, count, create, events, search_status
from tests.helpers import assert_one_line_error, cli_command, cli_env, run_cli, wait_for

DRY = ("--population", "2", "--sample", "2", "--steps", "2", "--mutator", "random",
       "--blocks", "2")


@pytest.fixture
def sqlite_url(tmp_path):  # type: ignore[no-untyped-def]
    """The CLI paths below are the same on both back ends (their protocol functions are
    tested on both in tests/integration/test_faults.py): SQLite only, to keep the suite
    short."""
    from renas_db.db.schema import upgrade
    url = f"sqlite:///{tmp_path / 'renas.sqlite'}"
    store = Store(url)
    upgrade(store)
    store.dispose()
    return url


def _worker(db_url: str, name: str, tmp_path, **env: str) -> subprocess.Popen:
    log = open(tmp_path / f"{name}.log", "ab")
    return subprocess.Popen(cli_command("worker", "--search", name, "--threads", "1",
                                        "--poll", "0.1", "--dry-run", "0"),
                            env=cli_env(db_url, **env), cwd=str(tmp_path), stdout=log,
                            stderr=log, start_new_session=True)


def test_an_outage_within_the_backoff_costs_no_job(db_url, tmp_path):
    # 5 attempts, 0.5 s doubling: the retries span 7.5 s; the outage ends after the
    # second failure
    create(db_url, "o", tmp_path, *DRY, "--retry-backoff-seconds", "0.5")
    outage = tmp_path / "outage"
    outage.touch()
    store = Store(db_url)
    w = _worker(db_url, "o", tmp_path, **{FAIL_FILE: str(outage)})
    wait_for(lambda: events(store, "job failed") >= 2, timeout=120, every=0.02,
             what="two failed attempts")
    outage.unlink()
    assert w.wait(timeout=120) == 0
    assert search_status(store, "o") == "finished"
    assert count(store, Job, Job.state == "dead") == 0
    assert count(store, Job, Job.kind == "init") == 2     # none replaced
    assert count(store, Job, Job.state == "done") == 4
    store.dispose()
    assert_invariants(db_url, "o", tmp_path)


def test_a_failed_search_is_requeued_and_resumed(sqlite_url, tmp_path):
    db_url = sqlite_url
    create(db_url, "f", tmp_path, *DRY, "--max-attempts", "1",
           "--retry-backoff-seconds", "0")
    broken = tmp_path / "broken"
    broken.touch()
    store = Store(db_url)
    w = _worker(db_url, "f", tmp_path, **{FAIL_FILE: str(broken)})
    assert w.wait(timeout=120) == 0            # P + 1 init jobs died: the search failed
    assert search_status(store, "f") == "failed"
    assert events(store, "init job replaced") == 2
    broken.unlink()                            # the cause fixed
    r = run_cli("search", "requeue", "f", db_url=db_url)
    assert r.code == 0 and "1 dead jobs requeued" in r.err, r.err
    r = run_cli("search", "resume", "f", db_url=db_url)
    assert r.code == 0 and "failed -> running" in r.err, r.err
    assert _worker(db_url, "f", tmp_path).wait(timeout=120) == 0
    assert search_status(store, "f") == "finished"
    assert count(store, Job, Job.kind == "init", Job.state == "done") == 2
    assert count(store, Job, Job.kind == "step", Job.state == "done") == 2
    assert_one_line_error(run_cli("search", "resume", "f", db_url=db_url), "finished")
    assert_one_line_error(run_cli("search", "requeue", "nope", db_url=db_url), "nope")
    store.dispose()
    assert_invariants(db_url, "f", tmp_path)


def test_recover_folds_the_episodes_of_a_committer_killed_before_its_update(sqlite_url,
                                                                             tmp_path):
    db_url = sqlite_url
    create(db_url, "k", tmp_path, "--population", "2", "--sample", "2", "--steps", "3",
           "--mutator", "renas", "--blocks", "2")
    w = _worker(db_url, "k", tmp_path, RENAS_FAULTS="step_committed=exit")
    assert w.wait(timeout=120) == 137          # killed right after its first step's commit
    store = Store(db_url)
    with store.transaction(write=False) as s:
        assert s.scalar(select(func.count()).where(Episode.consumed_in_version.is_(None))) \
            == 1
    r = run_cli("recover", "k", db_url=db_url)
    assert r.code == 0 and "1 leftover episodes folded" in r.err, r.err
    with store.transaction(write=False) as s:
        assert s.scalar(select(func.count()).where(Episode.consumed_in_version.is_(None))) \
            == 0
    store.dispose()
    assert_invariants(db_url, "k", tmp_path)
