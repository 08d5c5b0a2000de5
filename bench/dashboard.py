"""Server time of the dashboard's progress and population answers against the size of
the history: 1k, 10k and 100k children (bulk-inserted, each removing one member of a
population of 50, as a real search does), on SQLite and PostgreSQL.

The time is the answer's work in the server (ReadOnlyDB: the SQL and the shaping into
JSON-ready rows): the first progress answer of a fresh dashboard process asked at once (it
sweeps for its budget and answers with the steps swept so far, leaving the rest to a
background thread; the steps it covered are printed beside it), the sweep `renas-db
dashboard` starts at server start and the first answer after it, then the median of
--repeat answers (each reads only what is new);
the population answer uses the sweep once it is there and counts its ages in SQL before.

    .venv/bin/python bench/dashboard.py --sizes 1000,10000,100000
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import fresh_pg, fresh_sqlite, median, migrated_store  # noqa: E402

POPULATION = 50


def fill(store, search_id: int, n: int, seed: int = 0) -> None:  # type: ignore[no-untyped-def]
    """A population of POPULATION init individuals, then n children: each from a random
    alive parent, each removing the worst of a random sample of 5 (RENAS's rule), with
    their done jobs, in bulk."""
    from datetime import datetime

    from sqlalchemy import bindparam, insert, update

    from renas_db.db.models import Individual, Job
    rng = random.Random(seed)
    g = "0 sep3 + 1 sep3 | 0 id + 2 max3"
    now = datetime(2026, 1, 1)

    def job(kind: str, index: int) -> dict:
        return {"search_id": search_id, "kind": kind, "state": "done", "genotype": g,
                "step_index": index, "attempt": 1, "max_attempts": 3, "created_at": now}

    def ind(job_id: int, origin: str, parent: int | None, fitness: float) -> dict:
        return {"search_id": search_id, "job_id": job_id, "origin": origin,
                "parent_id": parent, "genotype": g, "arch_hash": "h", "alive": True,
                "fitness": fitness, "examples_seen": 100, "train_seconds": 1.0,
                "created_at": now, "mutation": None if origin == "init" else [[0, "op1", 1]]}

    # the whole history simulated first (by position), then written in bulk
    fits = [rng.random() * 0.5 for _ in range(POPULATION)]
    parents: list[int | None] = [None] * POPULATION
    killer: dict[int, int] = {}      # position of the victim -> position of its child
    alive = list(range(POPULATION))
    for c in range(POPULATION, POPULATION + n):
        parent = rng.choice(alive)
        fits.append(min(1.0, max(0.0, fits[parent] + rng.gauss(0.002, 0.02))))
        parents.append(parent)
        victim = min(rng.sample(alive, 5), key=lambda i: fits[i])
        alive.remove(victim)
        alive.append(c)
        killer[victim] = c
    jobs: list[int] = []
    ids: list[int] = []
    chunk = 5000
    for start in range(0, POPULATION + n, chunk):
        part = range(start, min(start + chunk, POPULATION + n))
        with store.transaction() as s:
            jobs += s.execute(insert(Job).returning(Job.id, sort_by_parameter_order=True), [
                job("init" if i < POPULATION else "step", i) for i in part]).scalars().all()
            ids += s.execute(insert(Individual).returning(
                Individual.id, sort_by_parameter_order=True), [
                ind(jobs[i], "init" if i < POPULATION else "child", None, fits[i])
                for i in part]).scalars().all()
    # parents (a parent may be in the same chunk), then victims
    table = Individual.__table__
    links = [{"cid": ids[c], "pid": ids[p]} for c, p in enumerate(parents) if p is not None]
    kills = [{"vid": ids[v], "kjob": jobs[k]} for v, k in killer.items()]
    for rows, stmt in (
            (links, update(table).where(table.c.id == bindparam("cid"))
             .values(parent_id=bindparam("pid"))),
            (kills, update(table).where(table.c.id == bindparam("vid"))
             .values(alive=False, removed_by_job_id=bindparam("kjob")))):
        for start in range(0, len(rows), chunk):
            with store.transaction() as s:
                s.connection().execute(stmt, rows[start:start + chunk])


def timed(fn, repeat: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(the first call, the median of the next `repeat`) in ms."""
    times = []
    for _ in range(repeat + 1):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times[0] * 1000, median(times[1:]) * 1000


def measure(url: str, sizes: list[int], repeat: int
            ) -> dict[int, tuple[float, float, float, float, int]]:
    from renas_db.config import SearchConfig
    from renas_db.dashboard.data import ReadOnlyDB
    from renas_db.db import admin
    store = migrated_store(url)
    out = {}
    for n in sizes:
        name = f"b{n}"
        cfg = SearchConfig(population=POPULATION, sample=5, steps=n, mutator="random")
        sid = admin.create_search(store, name, cfg, [], None)
        fill(store, sid, n)
        if not store.is_sqlite:
            with store.engine.connect() as c:
                c.exec_driver_sql("ANALYZE")
                c.commit()
        db = ReadOnlyDB(url)   # a fresh process, a page asking at once: it sweeps
        t = time.perf_counter()
        first = db.progress(name)   # within its budget: the steps swept so far
        cold = (time.perf_counter() - t) * 1000
        deadline = time.monotonic() + 600
        while not db.progress(name)["complete"]:   # the rest, in the background
            assert time.monotonic() < deadline
            time.sleep(0.05)
        _, prog = timed(lambda: db.progress(name), repeat)  # noqa: B023 (called here)
        db2 = ReadOnlyDB(url)  # not swept: the ages counted in SQL
        cold_pop, _ = timed(lambda: db2.population(name), 0)  # noqa: B023
        db3 = ReadOnlyDB(url)  # as `renas-db dashboard` starts: the sweep, then a page
        t = time.perf_counter()
        db3.warm()
        warm = (time.perf_counter() - t) * 1000
        warm_first, _ = timed(lambda: db3.progress(name), 0)  # noqa: B023
        _, pop = timed(lambda: db3.population(name), repeat)  # noqa: B023 (swept)
        answer = db.progress(name)
        assert answer["steps_done"] == n and answer["samples"][-1]["alive"] == POPULATION
        assert answer["complete"]
        out[n] = (cold, first["steps_done"], warm, warm_first, prog, cold_pop, pop,
                  len(answer["samples"]))
        for d in (db, db2, db3):
            d.dispose()
    store.dispose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--backends", default="sqlite,postgresql")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    print("| back end | children | progress first ms (asked at start) | steps in it "
          "| start sweep ms | progress first ms (after it) | progress ms "
          "| population first ms | population ms | samples |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for backend in args.backends.split(","):
        if backend == "sqlite":
            url = fresh_sqlite(os.path.join(tempfile.gettempdir(), "renas-bench-dash.sqlite"))
        else:
            url = fresh_pg("renas_bench_dashboard")
        res = measure(url, sizes, args.repeat)
        for n, r in res.items():
            print(f"| {backend} | {n} | {r[0]:.1f} | {r[1]} | "
                  + " | ".join(f"{x:.1f}" for x in r[2:-1]) + f" | {r[-1]} |", flush=True)
        a, b = res[sizes[0]], res[sizes[-1]]
        print(f"| {backend} | {sizes[-1]} / {sizes[0]} | {b[0] / a[0]:.2f}x | | "
              + " | ".join(f"{y / x:.2f}x" for x, y in zip(a[2:-1], b[2:-1])) + " | |",
              flush=True)

if __name__ == "__main__":
    main()
