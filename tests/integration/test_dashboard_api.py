"""The dashboard's JSON answers, from a real `renas-db dashboard` process, compared with
the SQL views on both back ends; bad input; the database going away and coming back."""
from __future__ import annotations

import json
import os
from datetime import datetime

import pytest
import sqlalchemy as sa

from renas_db import space
from renas_db.db.history import lineage
from renas_db.db.models import ControllerSnapshot
from renas_db.db.readonly import run_read_only
from tests.dashboard_helpers import dashboard, known_search
from tests.helpers import assert_one_line_error, run_cli


def _rows(store, sql):
    r = run_read_only(store, sql)
    return [dict(zip(r.columns, row)) for row in r.rows]


def _progress_rows(store, sid):
    return {r["step"]: r for r in _rows(store, f"SELECT step, best_fitness, mean_fitness, "
                                                f"std_fitness, alive FROM v_progress "
                                                f"WHERE search_id = {sid} ORDER BY step")}


def _same_sample(sample, row):
    assert sample["best"] == pytest.approx(row["best_fitness"])
    assert sample["mean"] == pytest.approx(row["mean_fitness"])
    assert sample["std"] == pytest.approx(row["std_fitness"], abs=1e-9)
    assert sample["alive"] == row["alive"]


@pytest.fixture
def two(store, tmp_path):
    """Search k (37 steps, P=4) with controller snapshots, and search j (5 steps)."""
    sid = known_search(store, tmp_path, "k", steps=37)
    known_search(store, tmp_path, "j", steps=5, population=3, seed=2)
    with store.transaction() as s:
        s.execute(sa.text("UPDATE individuals SET controller_version = 1 + id % 3 "
                          "WHERE search_id = :sid AND origin = 'child'"), {"sid": sid})
        for v in (1, 2, 3):
            s.add(ControllerSnapshot(search_id=sid, version=v, state=None,
                                     created_at=datetime(2026, 1, 1), episodes_seen=4 * v,
                                     mean_reward=0.1 * v, baseline=0.05 * v,
                                     stats={"ratio_mean": 1.0 + v / 10, "ratio_min": 0.9,
                                            "ratio_max": 1.2, "ratio_clipped": 0.25,
                                            # version 1 as made before entropy was kept
                                            **({"entropy": 3.0 + v} if v > 1 else {})}))
    return store, sid


def test_answers_match_the_sql_views(two, db_url):
    store, sid = two
    with dashboard(db_url) as d:
        # searches list
        listed = {r["name"]: r for r in d.json("/api/searches")["searches"]}
        assert set(listed) == {"k", "j"}
        for name, r in listed.items():
            want = _rows(store, f"""
SELECT (SELECT count(*) FROM jobs j WHERE j.search_id = s.id AND j.kind = 'step'
          AND j.state = 'done') AS steps_done,
       (SELECT max(fitness) FROM v_population p WHERE p.search_id = s.id) AS best,
       (SELECT avg(fitness) FROM v_population p WHERE p.search_id = s.id) AS mean,
       c.models_trained, c.cost_examples
FROM searches s JOIN v_cost c ON c.search_id = s.id WHERE s.name = '{name}'""")[0]
            assert r["steps_done"] == want["steps_done"] and r["status"] == "finished"
            assert r["best_fitness"] == pytest.approx(want["best"])
            assert r["mean_fitness"] == pytest.approx(want["mean"])
            assert (r["models_trained"], r["cost_examples"]) == \
                (want["models_trained"], want["cost_examples"])
            assert r["live_workers"] == 0
        assert listed["k"]["steps_done"] == 37 and listed["k"]["steps"] == 37

        # progress: every step, then downsampled, then the cursor
        view = _progress_rows(store, sid)
        full = d.json("/api/searches/k/progress")
        assert full["stride"] == 1 and full["reset"] and full["tail"] is None
        assert [s["step"] for s in full["samples"]] == list(range(1, 38)) == sorted(view)
        for sample in full["samples"]:
            _same_sample(sample, view[sample["step"]])
        kids = {r["id"]: r for r in _rows(store, "SELECT id, fitness, gain FROM v_children "
                                                 f"WHERE search_id = {sid}")}
        assert len(full["children"]) == 37 == len(kids)
        for dot in full["children"]:
            assert dot["gain"] == pytest.approx(kids[dot["id"]]["gain"])
        small = d.json("/api/searches/k/progress?points=10")
        assert small["stride"] == 4 and [s["step"] for s in small["samples"]] == \
            list(range(4, 37, 4))
        for sample in small["samples"] + [small["tail"]]:
            _same_sample(sample, view[sample["step"]])
        assert small["tail"]["step"] == 37
        assert [c["step"] for c in small["children"]] == list(range(4, 37, 4))
        cur = d.json("/api/searches/k/progress?points=10&after=20&stride=4")
        assert not cur["reset"] and [s["step"] for s in cur["samples"]] == [24, 28, 32, 36]
        assert [c["step"] for c in cur["children"]] == [24, 28, 32, 36]
        done = d.json("/api/searches/k/progress?points=10&after=37&stride=4")
        assert done["samples"] == [] and done["tail"] is None and done["children"] == []
        # a stride too small for the history: the answer starts over with the right one
        again = d.json("/api/searches/k/progress?points=10&after=20&stride=1")
        assert again["reset"] and again["stride"] == 4 and again["samples"][0]["step"] == 4

        # population
        pop = d.json("/api/searches/k/population")["population"]
        want = _rows(store, "SELECT id, fitness, age_steps, origin FROM v_population "
                            f"WHERE search_id = {sid} ORDER BY fitness DESC, id")
        assert [(p["id"], p["age_steps"], p["origin"]) for p in pop] == \
            [(w["id"], w["age_steps"], w["origin"]) for w in want]
        assert [p["fitness"] for p in pop] == pytest.approx([w["fitness"] for w in want])

        # controller
        ctl = d.json("/api/searches/k/controller")
        want = _rows(store, "SELECT version, episodes_seen, mean_reward, baseline "
                            f"FROM v_controller WHERE search_id = {sid} ORDER BY version")
        assert [(v["version"], v["episodes_seen"]) for v in ctl["versions"]] == \
            [(w["version"], w["episodes_seen"]) for w in want]
        assert [v["mean_reward"] for v in ctl["versions"]] == \
            pytest.approx([w["mean_reward"] for w in want])
        assert ctl["versions"][1]["ratio_mean"] == pytest.approx(1.2)
        assert [v["entropy"] for v in ctl["versions"]] == [None, 5.0, 6.0]
        sizes = {}   # the nodes space.diff finds changed between parent and child
        for r in _rows(store, "SELECT c.controller_version, c.genotype, p.genotype AS pg "
                              "FROM individuals c JOIN individuals p ON p.id = c.parent_id "
                              f"WHERE c.search_id = {sid} AND c.origin = 'child'"):
            n = len(space.diff(space.parse(r["pg"]), space.parse(r["genotype"])))
            sizes.setdefault(r["controller_version"], []).append(n)
        assert {m["version"]: m["mutation_size"] for m in ctl["mutation_size"]} == \
            pytest.approx({v: sum(x) / len(x) for v, x in sizes.items()})
        assert d.json("/api/searches/k/controller?after=2")["versions"][0]["version"] == 3

        # workers, jobs, events (with their cursor)
        w = d.json("/api/searches/k/workers")
        events = _rows(store, f"SELECT id, kind FROM events WHERE search_id = {sid} "
                              "ORDER BY id")
        assert [(e["id"], e["kind"]) for e in w["events"]] == \
            [(e["id"], e["kind"]) for e in events]
        assert d.json(f"/api/searches/k/workers?after_event={events[-1]['id']}")["events"] \
            == []
        assert w["running"] == [] and w["dead"] == []
        assert [x["jobs_done"] for x in w["workers"]] == [41]

        # an individual: lineage as `renas-db lineage` gives it, the cell as `show` draws it
        last = max(kids)
        ind = d.json(f"/api/individuals/{last}")
        chain = lineage(store, last)
        assert [r["id"] for r in ind["lineage"]] == [r["id"] for r in chain]
        assert [r["gain"] for r in ind["lineage"][:-1]] == \
            pytest.approx([r["gain"] for r in chain[:-1]])
        assert ind["lineage"][-1]["origin"] == "init" and ind["lineage"][-1]["gain"] is None
        assert ind["cell_svg"].startswith("<svg") and ind["search"] == "k"
        assert ind["checkpoint"] == "none"
        assert d.json("/api/searches/k/reports") == {"search": "k", "retrain": [],
                                                     "study": None}


def test_bad_input_answers_404_400_405(two, db_url):
    with dashboard(db_url) as d:
        for path in ("/api/searches/nope", "/api/searches/nope/progress",
                     "/api/searches/nope/population", "/api/searches/nope/controller",
                     "/api/searches/nope/workers", "/api/searches/nope/reports",
                     "/api/individuals/99999", "/api/nothing"):
            status, body, headers = d.get(path)
            assert status == 404 and "error" in body, (path, status, body)
            assert "content-security-policy" in headers
        for path in ("/search/nope", "/individual/99999", "/individual/abc", "/elsewhere"):
            status, body, headers = d.get(path)
            assert status == 404 and 'id="ready"' in body and "Traceback" not in body, path
            assert "script-src 'self'" in headers["content-security-policy"]
        for query in ("after=-1", "after=abc", "points=5", "stride=3", "stride=0",
                      "after=1e3"):
            status, body, _ = d.get(f"/api/searches/k/progress?{query}")
            assert status == 400 and "must be" in body["error"], (query, body)
        assert d.get("/api/searches/k/workers?after_event=x")[0] == 400
        assert d.get("/api/individuals/abc")[0] == 400
        for method in ("POST", "PUT", "DELETE"):
            assert d.get("/api/searches", method=method)[0] == 405
        status, page, headers = d.get("/search/k")
        assert status == 200 and 'data-page="search"' in page
        assert headers["content-security-policy"].startswith("default-src 'none'")
        assert "<script>" not in page and "style=" not in page
    assert "Traceback" not in "".join(d.lines)


def test_database_goes_away_and_comes_back(two, db_url):
    with dashboard(db_url) as d:
        assert d.get("/api/searches")[0] == 200
        url = sa.engine.make_url(db_url)
        if url.get_backend_name() == "sqlite":
            path = url.database
            os.rename(path, path + ".away")
            away = d.get("/api/searches/k/progress")
            os.rename(path + ".away", path)
        else:
            from tests.conftest import _admin_exec
            _admin_exec(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        f"WHERE datname = '{url.database}' AND pid <> pg_backend_pid()")
            _admin_exec(f"ALTER DATABASE {url.database} RENAME TO {url.database}_away")
            try:
                away = d.get("/api/searches/k/progress")
            finally:
                _admin_exec(f"ALTER DATABASE {url.database}_away RENAME TO {url.database}")
        assert away[0] == 503 and away[1] == {"error": "database unreachable"}
        assert d.get("/api/searches/k/progress")[0] == 200
    assert "Traceback" not in "".join(d.lines)


def test_password_never_shown(pg_url, tmp_path):
    from renas_db.db.session import Store
    url = sa.engine.make_url(pg_url).set(password="sekrit-pw").render_as_string(
        hide_password=False)
    store = Store(url)
    known_search(store, tmp_path, "k", steps=3)
    store.dispose()
    with dashboard(url) as d:
        assert "***" in d.first_line
        seen = [json.dumps(d.json(p)) for p in (
            "/api/searches", "/api/searches/k", "/api/searches/k/workers",
            "/api/searches/k/progress", "/api/searches/k/population")]
        seen += [str(d.get(p)[1]) for p in ("/", "/search/k", "/search/nope")]
    assert all("sekrit" not in s for s in seen + d.lines)


def test_binds_localhost_and_warns_otherwise(two, db_url):
    with dashboard(db_url) as d:
        assert d.base.startswith("http://127.0.0.1:")
        assert not any("warning" in ln for ln in d.lines)
    with dashboard(db_url, "--host", "0.0.0.0") as d:
        assert any("warning: the dashboard listens on 0.0.0.0" in ln for ln in d.lines)


def test_unreadable_database_or_busy_port_is_one_line(tmp_path, db_url):
    r = run_cli("dashboard", db_url=f"sqlite:///{tmp_path / 'none.sqlite'}")
    assert_one_line_error(r, "cannot read the database")
    with dashboard(db_url) as d:
        port = d.base.rsplit(":", 1)[1]
        r = run_cli("dashboard", "--port", port, db_url=db_url)
        assert_one_line_error(r, f"cannot listen on 127.0.0.1:{port}", "in use")
