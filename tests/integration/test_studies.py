"""Stability studies in-process: groups of searches on one SQLite file, one worker."""
from __future__ import annotations

from renas_db import studies
from renas_db.config import SearchConfig
from renas_db.db.admin import study_searches
from renas_db.db.schema import upgrade
from renas_db.db.session import Store
from renas_db.searches import initial_genotypes
from renas_db.worker import Worker, WorkerOptions


def test_study_create_run_and_report(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 's.sqlite'}")
    upgrade(store)
    base = SearchConfig(population=3, sample=2, steps=4, blocks=3, controller_hidden=8,
                        checkpoint_root=str(tmp_path / "ck"))
    names = studies.create_study(store, "st", base, 2, ["renas", "random"], same_init=True)
    assert names == ["st-renas-g0", "st-random-g0", "st-renas-g1", "st-random-g1"]
    cfgs = [SearchConfig.from_dict(i["config"]) for i in study_searches(store, "st")]
    assert len({tuple(initial_genotypes(c)) for c in cfgs}) == 1     # same initial population
    assert len({c.seed for c in cfgs}) == 2                           # one seed per group
    Worker(store, WorkerOptions(dry_run_seconds=0.0, checkpoint_root=str(tmp_path / "ck"))).run()
    rep = studies.report(store, "st")
    assert sum(sum(c.values()) for c in rep["counts"].values()) == 4
    assert all(r["verdict"] in ("Success", "Unstable", "Fail") for r in rep["searches"])
    png = tmp_path / "study.png"
    studies.plot(store, rep, str(png))
    assert png.stat().st_size > 10_000
    other = studies.create_study(store, "st2", base, 2, ["random"], same_init=False)
    cfgs = [SearchConfig.from_dict(i["config"]) for i in study_searches(store, "st2")]
    assert initial_genotypes(cfgs[0]) != initial_genotypes(cfgs[1]) and len(other) == 2
    store.dispose()
