"""Guarded search status transitions, and the population checked at every phase
(issue 15, fault 9)."""
from __future__ import annotations

import sqlite3
import threading
import time

import pytest
from sqlalchemy import select, text, update

from renas_db import searches
from renas_db.config import SearchConfig
from renas_db.db import admin, protocol
from renas_db.db.models import Job, Search
from renas_db.db.reports import check_invariants
from renas_db.db.session import Store
from renas_db.errors import StateError
from renas_db.testing import fake_result_for
from tests.helpers import assert_one_line_error, run_cli, wait_for


def _config(tmp_path, **kw):
    base = dict(population=4, sample=2, steps=3, mutator="random", blocks=3,
                lease_seconds=30.0, checkpoint_root=str(tmp_path / "ck"))
    base.update(kw)
    return SearchConfig(**base)


def _status(store, sid):
    with store.transaction(write=False) as s:
        return s.scalar(select(Search.status).where(Search.id == sid))


def _lock_waiters(store):
    """Backends of this database waiting for a lock (PostgreSQL)."""
    with store.connection(write=False) as conn:
        return conn.execute(text(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE NOT l.granted AND a.datname = current_database()")).scalar()


def test_pause_racing_with_the_failure_does_not_overwrite_it(db_url, tmp_path):
    """The search fails (a dead init job) while a pause is between its read and its
    write: the pause must be refused and the search stay failed. Made deterministic on
    PostgreSQL by holding the failure's transaction open until the pause's UPDATE waits
    on the row; on SQLite the write lock serialises the whole pause after the failure."""
    store = Store(db_url)
    sid = searches.create(store, "s", _config(tmp_path))
    admin.set_search_status(store, "s", "running")
    outcome: dict[str, object] = {}

    def pause() -> None:
        try:
            outcome["old"] = admin.set_search_status(store, "s", "paused")
        except StateError as exc:
            outcome["refused"] = str(exc)

    if store.is_sqlite:
        holder = sqlite3.connect(str(tmp_path / "renas.sqlite"), isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("UPDATE searches SET status = 'failed' WHERE id = ?", (sid,))
        t = threading.Thread(target=pause)
        t.start()
        time.sleep(0.3)      # the pause waits for the write lock (no way to observe it)
        holder.execute("COMMIT")
        holder.close()
    else:
        other = Store(db_url)
        with other.engine.connect() as conn:
            conn.execute(update(Search).where(Search.id == sid).values(status="failed"))
            t = threading.Thread(target=pause)
            t.start()
            # the pause has read 'running' and its UPDATE waits for this row
            wait_for(lambda: _lock_waiters(other), every=0.02, timeout=30,
                     what="the pause waiting on the search row")
            conn.commit()
        other.dispose()
    t.join(timeout=60)
    assert not t.is_alive()
    assert "refused" in outcome, outcome
    assert "is failed; cannot pause" in str(outcome["refused"])
    assert _status(store, sid) == "failed"
    store.dispose()


def test_pause_and_resume_are_refused_where_not_allowed(store, tmp_path):
    sid = searches.create(store, "s", _config(tmp_path))
    assert admin.set_search_status(store, "s", "paused") == "created"
    with pytest.raises(StateError, match="is paused; cannot pause"):
        admin.set_search_status(store, "s", "paused")
    assert admin.set_search_status(store, "s", "running") == "paused"
    for status in ("failed", "finished"):
        with store.transaction() as s:
            s.execute(update(Search).where(Search.id == sid).values(status=status))
        with pytest.raises(StateError, match=f"is {status}; cannot pause"):
            admin.set_search_status(store, "s", "paused")
        with pytest.raises(StateError, match=f"is {status}; cannot resume"):
            admin.set_search_status(store, "s", "running")
        assert _status(store, sid) == status


def _steps_on_an_incomplete_population(store, tmp_path):
    """The state the unguarded pause let happen: 3 of P=4 init jobs done, the fourth
    dead, the search running again, and a step committed on the 3 alive."""
    sid = searches.create(store, "s", _config(tmp_path))
    wid = admin.register_worker(store, "h", 1, "cpu")
    for f in (0.1, 0.2, 0.3):
        job = protocol.claim(store, sid, wid)
        assert job.kind == "init"
        protocol.commit_job(store, job, fake_result_for(job, f), wid)
    with store.transaction() as s:
        s.execute(update(Job).where(Job.search_id == sid, Job.state == "queued")
                  .values(state="dead", error="boom"))
        s.execute(update(Search).where(Search.id == sid).values(status="running"))
    step = protocol.claim(store, sid, wid)
    assert step is not None and step.kind == "step"
    protocol.commit_job(store, step, fake_result_for(step, 0.5), wid)
    return sid


def test_check_sees_the_population_before_init_is_complete(store, tmp_path):
    _steps_on_an_incomplete_population(store, tmp_path)
    problems = [p for p in check_invariants(store, "s") if not p.startswith("4:")]
    assert problems == ["1: 1 steps created with only 3 of P=4 initial individuals"]


def test_check_counts_the_alive_during_init(store, tmp_path):
    sid = searches.create(store, "s", _config(tmp_path))
    wid = admin.register_worker(store, "h", 1, "cpu")
    job = protocol.claim(store, sid, wid)
    protocol.commit_job(store, job, fake_result_for(job, 0.1), wid)
    assert [p for p in check_invariants(store, "s") if not p.startswith("4:")] == []
    with store.transaction() as s:   # an individual alive without its init job done
        s.execute(update(Job).where(Job.id == job.id).values(state="running"))
    problems = [p for p in check_invariants(store, "s") if p[:2] not in ("3:", "4:")]
    assert problems == ["1: 1 individuals alive during the initial population, expected 0 "
                        "(one per init job done)"]


def test_cli_refuses_to_pause_a_failed_search_and_check_reports_it(db_url, tmp_path):
    store = Store(db_url)
    sid = _steps_on_an_incomplete_population(store, tmp_path)
    with store.transaction() as s:
        s.execute(update(Search).where(Search.id == sid).values(status="failed"))
    store.dispose()
    assert_one_line_error(run_cli("search", "pause", "s", db_url=db_url),
                          "search 's' is failed; cannot pause it")
    r = run_cli("check", "s", db_url=db_url, cwd=str(tmp_path))
    assert r.code == 1
    assert "steps created with only 3 of P=4 initial individuals" in r.out + r.err
    store = Store(db_url)
    assert _status(store, sid) == "failed"
    store.dispose()
