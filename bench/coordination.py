"""Coordination throughput: renas-db claim -> commit against Optuna's RDBStorage
ask -> tell, K processes each, on the same PostgreSQL server (and SQLite for renas-db).

No training: a tiny fixed result and fitness. Optuna is a benchmark-only extra
(`pip install 'renas-db[bench]'`).

    .venv/bin/python bench/coordination.py --ks 1,2,4,8 --cycles 100
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import cycle, fresh_pg, fresh_sqlite, median, migrated_store, ms, pct  # noqa: E402


def _renas_proc(url: str, search_id: int, n: int, start, out) -> None:  # type: ignore[no-untyped-def]
    from renas_db.db import admin
    from renas_db.db.session import Store
    store = Store(url)
    wid = admin.register_worker(store, "bench", os.getpid(), "none")
    start.wait()
    lat = []
    for i in range(n):
        t = cycle(store, search_id, wid, 0.5 + (i % 7) / 100)
        if t is None:
            break
        lat.append(t)
    out.put(lat)


def _optuna_proc(url: str, study_name: str, n: int, start, out) -> None:  # type: ignore[no-untyped-def]
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(url)
    study = optuna.load_study(study_name=study_name, storage=storage)
    start.wait()
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        trial = study.ask()
        x = trial.suggest_float("x", -1, 1)
        study.tell(trial, x * x)
        lat.append(time.perf_counter() - t)
    out.put(lat)


def _run(target, args_for, k: int):  # type: ignore[no-untyped-def]
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args_for, start, out)) for _ in range(k)]
    for p in procs:
        p.start()
    time.sleep(3.0)  # let every process import and connect before the clock starts
    t = time.perf_counter()
    start.set()
    lat = []
    for _ in procs:
        lat += out.get()
    wall = time.perf_counter() - t
    for p in procs:
        p.join()
    return len(lat) / wall, lat


def renas(url: str, k: int, n: int):  # type: ignore[no-untyped-def]
    from renas_db import searches
    from renas_db.config import SearchConfig
    from renas_db.db import admin
    store = migrated_store(url)
    cfg = SearchConfig(population=20, sample=2, steps=k * n + 100, mutator="random",
                       lease_seconds=600)
    sid = searches.create(store, "coord", cfg)
    wid = admin.register_worker(store, "setup", os.getpid(), "none")
    for i in range(20):  # the initial population, so every timed cycle is a step
        cycle(store, sid, wid, 0.1 + i / 100)
    store.dispose()
    return _run(_renas_proc, (url, sid, n), k)


def optuna_bench(url: str, k: int, n: int):  # type: ignore[no-untyped-def]
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(study_name="coord", storage=optuna.storages.RDBStorage(url))
    return _run(_optuna_proc, (url, "coord", n), k)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", default="1,2,4,8")
    ap.add_argument("--sqlite-ks", default="1,2,4")
    ap.add_argument("--cycles", type=int, default=100, help="per process")
    args = ap.parse_args()
    print(f"{'backend':<22}{'K':>3}{'throughput':>16}{'p50':>11}{'p99':>11}")
    rows = {}
    for k in [int(x) for x in args.ks.split(",")]:
        tr, lat = renas(fresh_pg("renas_bench_coord"), k, args.cycles)
        to, lo = optuna_bench(fresh_pg("renas_bench_optuna"), k, args.cycles)
        rows[k] = (tr, to)
        print(f"{'renas-db postgresql':<22}{k:>3}{tr:>10.1f} step/s{ms(median(lat)):>11}"
              f"{ms(pct(lat, 0.99)):>11}")
        print(f"{'optuna postgresql':<22}{k:>3}{to:>9.1f} trial/s{ms(median(lo)):>11}"
              f"{ms(pct(lo, 0.99)):>11}   ratio {tr / to:.2f}x", flush=True)
    with tempfile.TemporaryDirectory() as d:
        for k in [int(x) for x in args.sqlite_ks.split(",") if x]:
            tr, lat = renas(fresh_sqlite(os.path.join(d, "c.sqlite")), k, args.cycles)
            print(f"{'renas-db sqlite':<22}{k:>3}{tr:>10.1f} step/s{ms(median(lat)):>11}"
                  f"{ms(pct(lat, 0.99)):>11}", flush=True)
    kmax = max(rows)
    print(f"at K={kmax}: renas-db {rows[kmax][0]:.1f} step/s vs optuna {rows[kmax][1]:.1f} "
          f"trial/s = {rows[kmax][0] / rows[kmax][1]:.2f}x (target >= 10x)")


if __name__ == "__main__":
    main()
