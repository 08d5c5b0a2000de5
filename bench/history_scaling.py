"""claim+commit latency against the size of the history: 1k, 10k and 100k past
individuals, jobs, episodes and events (bulk-inserted), on PostgreSQL and SQLite.

    .venv/bin/python bench/history_scaling.py --sizes 1000,10000,100000 --cycles 200
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import cycle, fresh_pg, fresh_sqlite, median, migrated_store, ms, pct  # noqa: E402


def fill(store, search_id: int, n: int) -> None:  # type: ignore[no-untyped-def]
    """n dead children with their done step jobs, episodes and events, in bulk."""
    from sqlalchemy import func, insert, select

    from renas_db.db.models import Episode, Event, Individual, Job
    with store.transaction() as s:
        # negative init indices below every existing one: never collide, never steps
        base = -min(s.scalar(select(func.min(Job.step_index)).where(
            Job.search_id == search_id)) or 0, 0) + 1000
        parent = s.scalar(select(Individual.id).where(Individual.search_id == search_id)
                          .limit(1))
        now = s.scalar(select(func.min(Individual.created_at)))
    g = "0 sep3 + 1 sep3 | 0 id + 2 max3"
    chunk = 5000
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        with store.transaction() as s:
            jobs = [{"search_id": search_id, "kind": "init", "state": "done", "genotype": g,
                     "step_index": -(base + start + i), "attempt": 1, "max_attempts": 3,
                     "created_at": now} for i in range(m)]
            ids = s.execute(insert(Job).returning(Job.id), jobs).scalars().all()
            s.execute(insert(Individual), [
                {"search_id": search_id, "job_id": j, "origin": "child", "parent_id": parent,
                 "genotype": g, "arch_hash": "h", "alive": False, "fitness": 0.3,
                 "examples_seen": 100, "train_seconds": 1.0, "created_at": now,
                 "mutation": [[0, "op1", 1]]} for j in ids])
            s.execute(insert(Episode), [
                {"search_id": search_id, "job_id": j, "controller_version": 0,
                 "actions": [[0, "op1", 1]], "log_prob": -1.0, "reward": 0.5, "fitness": 0.3,
                 "consumed_in_version": 0} for j in ids])
            s.execute(insert(Event), [
                {"search_id": search_id, "kind": "bench", "message": "x", "created_at": now,
                 "job_id": j} for j in ids])


def measure(url: str, sizes: list[int], cycles: int, analyze: bool) -> dict[int, list[float]]:
    from renas_db import searches
    from renas_db.config import SearchConfig
    from renas_db.db import admin
    store = migrated_store(url)
    cfg = SearchConfig(population=20, sample=5, steps=10**8, mutator="random",
                       lease_seconds=600)
    sid = searches.create(store, "hist", cfg)
    wid = admin.register_worker(store, "bench", os.getpid(), "none")
    for i in range(20):
        cycle(store, sid, wid, 0.1 + i / 100)
    out, filled = {}, 0
    for size in sizes:
        fill(store, sid, size - filled)
        filled = size
        if analyze and not store.is_sqlite:
            # A real search grows over hours and autovacuum keeps the planner statistics
            # fresh; 90k rows bulk-loaded in seconds do not get that chance. Without this
            # PostgreSQL still believes the jobs table is tiny and picks the wrong index.
            # (SQLite never gathers statistics by itself, and its default heuristics pick
            # the right indexes; an explicit ANALYZE there makes it prefer full scans for
            # the skewed state column, so the bench leaves SQLite as users have it.)
            with store.engine.connect() as conn:
                conn.exec_driver_sql("ANALYZE")
                conn.commit()
        for _ in range(20):  # warm caches and plans
            cycle(store, sid, wid, 0.5)
        out[size] = [cycle(store, sid, wid, 0.4 + (i % 9) / 100) for i in range(cycles)]
    store.dispose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--cycles", type=int, default=200)
    ap.add_argument("--db", default="both", choices=("both", "postgresql", "sqlite"))
    ap.add_argument("--no-analyze", action="store_true",
                    help="do not refresh planner statistics after each bulk fill")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as d:
        targets = []
        if args.db in ("both", "postgresql"):
            targets.append(("postgresql", fresh_pg("renas_bench_hist")))
        if args.db in ("both", "sqlite"):
            targets.append(("sqlite", fresh_sqlite(os.path.join(d, "h.sqlite"))))
        for name, url in targets:
            res = measure(url, sizes, args.cycles, not args.no_analyze)
            for size, lat in res.items():
                print(f"{name:<11} history {size:>7}: claim+commit p50 {ms(median(lat))}, "
                      f"p99 {ms(pct(lat, 0.99))}", flush=True)
            lo, hi = median(res[sizes[0]]), median(res[sizes[-1]])
            print(f"{name:<11} p50 at {sizes[-1]} / p50 at {sizes[0]} = {hi / lo:.2f}x "
                  f"(target <= 1.5x)", flush=True)


if __name__ == "__main__":
    main()
