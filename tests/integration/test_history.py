"""History views, the SQL cookbook, read-only `sql`, lineage, plots and exports."""
from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path
from xml.etree import ElementTree

import pytest
from sqlalchemy import text

from renas_db import searches
from renas_db.config import SearchConfig
from renas_db.db import admin, protocol
from renas_db.db.history import export_document, lineage, progress
from renas_db.db.readonly import QueryRefused, run_read_only
from renas_db.space import SHORT, parse
from renas_db.testing import fake_result_for

DOCS = Path(__file__).resolve().parents[2] / "docs" / "sql.md"


def _result(job, fitness):
    return fake_result_for(job, fitness, checkpoint=False, val_loss=1 - fitness,
                           examples_seen=100, train_seconds=2.0,
                           mutation=[[0, "op1", 1]] if job.kind == "step" else None)


def _svg_texts(path: Path) -> list[str]:
    """The text of every <text> element of an SVG file."""
    root = ElementTree.parse(path).getroot()
    return ["".join(el.itertext()).strip() for el in root.iter("{http://www.w3.org/2000/svg}text")]


@pytest.fixture
def known(store, tmp_path):
    """P=3 with fitness 0.1, 0.2, 0.3, then steps whose children have known fitness."""
    cfg = SearchConfig(population=3, sample=3, steps=3, mutator="random", blocks=2,
                       checkpoint_root=str(tmp_path))
    sid = searches.create(store, "k", cfg)
    wid = admin.register_worker(store, "h", 1, "cpu")
    for f in (0.1, 0.2, 0.3):
        job = protocol.claim(store, sid, wid)
        protocol.commit_job(store, job, _result(job, f), wid)
    children = []
    for f in (0.5, 0.4, 0.6):
        job = protocol.claim(store, sid, wid)
        children.append((job, protocol.commit_job(store, job, _result(job, f), wid)))
    return store, children


def _rows(store, sql):
    return run_read_only(store, sql).rows


def test_views_on_known_data(known):
    store, children = known
    # sample = whole population: parent = best, victim = worst at each step
    # start {0.1, 0.2, 0.3}; +0.5 -0.1 -> {0.2, 0.3, 0.5}; +0.4 -0.2 -> {0.3, 0.4, 0.5};
    # +0.6 -0.3 -> {0.4, 0.5, 0.6}
    prog = _rows(store, "SELECT step, best_fitness, mean_fitness, std_fitness, alive "
                        "FROM v_progress WHERE search = 'k' ORDER BY step")
    expected = [(1, 0.5, (0.2 + 0.3 + 0.5) / 3), (2, 0.5, 0.4), (3, 0.6, 0.5)]
    for row, (step, best, mean) in zip(prog, expected):
        assert row[0] == step and row[1] == pytest.approx(best)
        assert row[2] == pytest.approx(mean) and row[4] == 3
    assert prog[1][3] == pytest.approx((2 / 300) ** 0.5)
    pop = _rows(store, "SELECT fitness, age_steps, origin FROM v_population "
                       "WHERE search = 'k' ORDER BY fitness")
    assert [(round(r[0], 2), r[1], r[2]) for r in pop] == \
        [(0.4, 1, "child"), (0.5, 2, "child"), (0.6, 0, "child")]
    kids = _rows(store, "SELECT id, parent_fitness, fitness, gain, mutator FROM v_children "
                        "WHERE search = 'k' ORDER BY id")
    assert [round(r[3], 2) for r in kids] == [0.2, -0.1, 0.1]
    assert {r[4] for r in kids} == {"random"}
    # the 0.6 child descends from the 0.5 child (best at that step), which descends from 0.3
    last = children[-1][1]
    lin = _rows(store, f"SELECT depth, ancestor_id FROM v_lineage WHERE id = {last} "
                       "ORDER BY depth")
    assert [r[0] for r in lin] == [1, 2]
    assert lin[0][1] == children[0][1]
    cost = _rows(store, "SELECT models_trained, examples_per_model, cost_examples FROM v_cost "
                        "WHERE search = 'k'")
    assert cost == [(6, 100.0, 600)] or cost[0][0] == 6 and cost[0][2] == 600
    workers = _rows(store, "SELECT jobs_done, failures FROM v_workers")
    assert workers == [(6, 0)]
    chain = lineage(store, last)
    assert [round(r["fitness"], 2) for r in chain] == [0.6, 0.5, 0.3]
    assert chain[-1]["origin"] == "init" and round(chain[0]["gain"], 2) == 0.1
    doc = export_document(store, last)
    assert doc["lineage"]["depth"] == 2 and doc["genotype"] == chain[0]["genotype"]


def _checksum(store) -> str:
    h = hashlib.sha256()
    with store.transaction(write=False) as s:
        for t in ("searches", "jobs", "individuals", "episodes", "workers", "events"):
            for row in s.execute(text(f"SELECT * FROM {t} ORDER BY 1")).all():
                h.update(repr(tuple(row)).encode())
    return h.hexdigest()


REFUSED = [
    "DELETE FROM searches",
    "delete from individuals where 1=1",
    "UPDATE individuals SET fitness = 1",
    "INSERT INTO workers (host) VALUES ('x')",
    "DROP TABLE individuals",
    "CREATE TABLE x (a int)",
    "ALTER TABLE jobs ADD COLUMN x int",
    "TRUNCATE jobs",
    "SELECT 1; DELETE FROM searches",
    "SELECT 1; SELECT 2",
    "WITH d AS (DELETE FROM searches RETURNING *) SELECT * FROM d",
    "SELECT * INTO newtable FROM searches",
    "PRAGMA writable_schema = 1",
    "ATTACH DATABASE '/tmp/x.db' AS x",
    "VACUUM",
    "BEGIN; DELETE FROM searches; COMMIT",
    "/* sneaky */ DELETE FROM searches",
    "-- comment\nDROP VIEW v_cost",
    "EXPLAIN ANALYZE DELETE FROM searches",
    "GRANT ALL ON searches TO public",
    "SET statement_timeout = 0",
    "COPY searches TO '/tmp/x'",
    "REPLACE INTO searches (id) VALUES (1)",
    "SELECT 'x",
    "",
    "SELECT " + "1 + " * 6000 + "1",
]


def test_sql_refuses_writes_and_changes_nothing(known):
    store, _ = known
    before = _checksum(store)
    for sql in REFUSED:
        with pytest.raises(QueryRefused):
            run_read_only(store, sql)
    assert _checksum(store) == before
    # a query that runs too long is stopped, with nothing changed
    slow = ("WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 100000000) "
            "SELECT count(*) FROM n")
    with pytest.raises(QueryRefused, match="time limit"):
        run_read_only(store, slow, timeout_s=0.5)
    assert _checksum(store) == before
    assert run_read_only(store, "SELECT count(*) AS n FROM individuals").rows == [(6,)]


def test_cookbook_runs_on_a_real_search(db_url, tmp_path):
    """A real (tiny, synthetic) search run by an in-process worker, then every query of
    docs/sql.md on it."""
    from renas_db.db.session import Store
    from renas_db.worker import Worker, WorkerOptions
    store = Store(db_url)
    cfg = SearchConfig(population=4, sample=2, steps=4, mutator="renas", blocks=3, cells=1,
                       filters=4, dataset="synthetic", train_subset=300, init_epochs=1.0,
                       finetune_examples=64, val_examples=100, batch_size=32,
                       controller_hidden=16, checkpoint_root=str(tmp_path / "ck"))
    searches.create(store, "demo", cfg)
    summary = Worker(store, WorkerOptions(search="demo", threads=1)).run()
    assert summary.jobs_done == 8
    queries_ = re.findall(r"```sql\n(.*?)```", DOCS.read_text(), re.S)
    assert len(queries_) >= 10
    for q in queries_:
        r = run_read_only(store, q)
        assert r.columns, q
    assert len(run_read_only(store, "SELECT * FROM v_progress WHERE search = 'demo'").rows) == 4
    # plots and cell drawings of the real search
    import matplotlib.image as mpimg

    from renas_db.drawing import draw_cell
    from renas_db.plots import plot_progress
    png = tmp_path / "p.png"
    plot_progress({"demo": progress(store, "demo")}, str(png))
    img = mpimg.imread(png)
    assert png.stat().st_size > 20_000 and img.shape[0] > 400 and img.std() > 0.05
    best = run_read_only(store, "SELECT id, genotype FROM v_population WHERE search = 'demo' "
                                "ORDER BY fitness DESC LIMIT 1").rows[0]
    cell = tmp_path / "cell.png"
    draw_cell(parse(best[1]), str(cell))
    img = mpimg.imread(cell)
    assert cell.stat().st_size > 15_000 and img.std() > 0.05
    # the SVG names every edge's op, as text a reader can search and copy
    svg = tmp_path / "cell.svg"
    genotype = parse(best[1])
    draw_cell(genotype, str(svg))
    drawn = Counter(_svg_texts(svg))
    edges = Counter(SHORT[op] for b in genotype.blocks for op in (b.op1, b.op2))
    assert {label: n for label, n in drawn.items() if label in SHORT} == edges, drawn
    assert drawn["concat"] == 1 and drawn[genotype.to_text()] == 1, drawn
    # export -> a torch network
    from renas_db.network import build_from_export
    exp = tmp_path / "best.json"
    exp.write_text(json.dumps(export_document(store, best[0])))
    net = build_from_export(exp, dataset="cifar10", cells=1, filters=4)
    assert net.genotype.to_text() == best[1]
    store.dispose()
