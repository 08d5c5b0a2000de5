"""The dashboard's incremental sweep: answers extended row by row (settled rows kept
between answers) equal v_progress and v_population at every point, on both back ends."""
from __future__ import annotations

import random
import time

import pytest

from renas_db import searches
from renas_db.config import SearchConfig
from renas_db.dashboard import history
from renas_db.dashboard.data import ReadOnlyDB
from renas_db.db import admin, protocol
from renas_db.db.readonly import run_read_only
from renas_db.testing import fake_result_for


def _progress_view(store, sid):
    return _view(store, "SELECT step, best_fitness, mean_fitness, std_fitness, alive "
                        f"FROM v_progress WHERE search_id = {sid} ORDER BY step")


def _assert_samples(got, want):
    assert [s["step"] for s in got] == [w["step"] for w in want]
    for s, w in zip(got, want):
        assert s["best"] == pytest.approx(w["best_fitness"])
        assert s["mean"] == pytest.approx(w["mean_fitness"])
        assert s["std"] == pytest.approx(w["std_fitness"], abs=1e-9)
        assert s["alive"] == w["alive"]


def _view(store, sql):
    r = run_read_only(store, sql)
    return [dict(zip(r.columns, row)) for row in r.rows]


@pytest.mark.parametrize("chunk", [history.CHUNK, 2])
@pytest.mark.parametrize("settle", [0.0, 3600.0])
def test_sweep_extended_between_answers_equals_the_views(store, db_url, tmp_path,
                                                         monkeypatch, settle, chunk):
    """settle 0: every row is kept and later answers read only new rows; settle 3600:
    nothing is kept and every answer sweeps the unsettled rows again. chunk 2: every
    answer reads its rows two at a time (a history longer than a chunk)."""
    monkeypatch.setattr(history, "SETTLE_S", settle)
    monkeypatch.setattr(history, "CHUNK", chunk)
    cfg = SearchConfig(population=5, sample=3, steps=24, mutator="random", blocks=2,
                       checkpoint_root=str(tmp_path / "ck"))
    sid = searches.create(store, "s", cfg)
    wid = admin.register_worker(store, "h", 1, "cpu")
    db = ReadOnlyDB(db_url)
    rng = random.Random(3)
    answers = 0
    try:
        while True:
            job = protocol.claim(store, sid, wid)
            if job is None:
                break
            protocol.commit_job(store, job, fake_result_for(job, rng.random(),
                                                            checkpoint=False), wid)
            if rng.random() < 0.5:
                continue
            answers += 1
            got = db.progress("s")
            assert got["complete"]
            _assert_samples(got["samples"], _progress_view(store, sid))
            pop = db.population("s")
            want = _view(store, "SELECT id, age_steps FROM v_population "
                                f"WHERE search_id = {sid} ORDER BY fitness DESC, id")
            assert [(p["id"], p["age_steps"]) for p in pop] == \
                [(w["id"], w["age_steps"]) for w in want]
            fresh = ReadOnlyDB(db_url)   # not swept yet: the ages counted in SQL
            try:
                assert [(p["id"], p["age_steps"]) for p in fresh.population("s")] == \
                    [(w["id"], w["age_steps"]) for w in want]
                assert fresh.history.if_swept(fresh, sid) is None
            finally:
                fresh.dispose()
        kept = db.history._kept[sid]
        assert kept.state.last_id == (0 if settle else
                                      max(r["id"] for r in _view(store,
                                          "SELECT id FROM individuals")))
        assert answers >= 5
    finally:
        db.dispose()


def test_the_start_sweep_leaves_every_search_swept(store, db_url, tmp_path):
    cfg = SearchConfig(population=3, sample=2, steps=4, mutator="random", blocks=2,
                       checkpoint_root=str(tmp_path / "ck"))
    sids = [searches.create(store, n, cfg) for n in ("a", "b")]
    db = ReadOnlyDB(db_url)
    try:
        assert all(db.history.if_swept(db, sid) is None for sid in sids)
        db.warm()
        assert all(db.history.if_swept(db, sid) is not None for sid in sids)
    finally:
        db.dispose()


def test_an_answer_past_its_budget_is_the_steps_swept_so_far_and_the_rest_follows(
        store, db_url, tmp_path, monkeypatch):
    """A long history (here: two rows a chunk, no time to sweep) is answered at once with
    the steps swept so far, marked incomplete and exact as far as they go; a background
    thread sweeps the rest, and a later answer is the whole history. Before, the first
    answer swept everything while the page waited."""
    monkeypatch.setattr(history, "SETTLE_S", 0.0)
    monkeypatch.setattr(history, "CHUNK", 2)
    monkeypatch.setattr(history, "BUDGET_S", 0.0)
    cfg = SearchConfig(population=4, sample=2, steps=20, mutator="random", blocks=2,
                       checkpoint_root=str(tmp_path / "ck"))
    sid = searches.create(store, "s", cfg)
    wid = admin.register_worker(store, "h", 1, "cpu")
    rng = random.Random(5)
    while (job := protocol.claim(store, sid, wid)) is not None:
        protocol.commit_job(store, job, fake_result_for(job, rng.random(),
                                                        checkpoint=False), wid)
    want = _progress_view(store, sid)
    assert len(want) == 20
    db = ReadOnlyDB(db_url)
    try:
        answers = [db.progress("s")]
        assert not answers[0]["complete"] and answers[0]["steps_done"] < 20
        deadline = time.monotonic() + 60
        while not answers[-1]["complete"]:
            assert time.monotonic() < deadline, "the background sweep never finished"
            time.sleep(0.02)
            answers.append(db.progress("s"))
        for a in answers:   # each exact as far as it goes
            assert a["steps_done"] == len(a["samples"]) == (20 if a["complete"] else
                                                            a["steps_done"])
            _assert_samples(a["samples"], want[:a["steps_done"]])
        assert answers[-1]["steps_done"] == 20
        assert db.history.if_swept(db, sid) is not None
    finally:
        db.dispose()
