"""Steps/s against the number of workers K: K processes, each running a worker's
protocol loop (claim, heartbeat while a child "trains" for a fixed time, commit, poll
after an empty claim), on one PostgreSQL search with P=20 S=5. Where K direct
connections would not fit under the server's max_connections, the workers go through a
PgBouncer in transaction mode started here (prepared statements off).

The workers import the protocol only (no torch), so 96 of them fit in memory; the time
per child is long enough that the machine's CPU is not the bottleneck (check `uptime`).
Ideal throughput is K / time-per-child. Steady state: the steps committed between the
first and the last tenth of the timed window.

    .venv/bin/python bench/scale_workers.py --ks 4,8,16,32,64,96 --child-seconds 2 --window 20
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import sys
import tempfile
import threading
import time

import sqlalchemy as sa

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import PG_ADMIN, fake_result, fresh_pg, migrated_store  # noqa: E402

from renas_db.testing import start_pgbouncer  # noqa: E402


def _worker(url: str, sid: int, child_s: float, separate: bool, start, stop) -> None:  # type: ignore[no-untyped-def]
    """A worker's loop without the training: the heartbeat shares the worker's Store
    (`separate`: its own Store, as renas_db/worker.py had it before issue 20)."""
    import uuid

    from renas_db.db import admin, protocol
    from renas_db.db.session import Store
    store = Store(url, pool_size=2 if separate else 1)
    beats = Store(url, pool_size=1) if separate else store
    wid = admin.register_worker(store, "bench", os.getpid(), "none")
    start.wait()
    # staggered starts: K workers starting together would commit in bursts of K every
    # child_s, and the measured window would count a whole number of bursts
    stop.wait(random.Random(os.getpid()).uniform(0, child_s))
    while not stop.is_set():
        job = protocol.claim(store, sid, wid, uuid.uuid4().hex)
        if job is None:
            stop.wait(0.2)  # the worker's --poll in the tests
            continue
        done = threading.Event()
        t = threading.Thread(target=_beat, args=(beats, job, wid, done), daemon=True)
        t.start()
        stop.wait(child_s)
        done.set()
        t.join()
        protocol.commit_job(store, job, fake_result(job, 0.3 + (job.id % 97) / 200), wid)


def _beat(store, job, wid: int, done: threading.Event) -> None:  # type: ignore[no-untyped-def]
    from renas_db.db import protocol
    # the worker's interval: min(lease / 4, stall / 4, 10 s)
    while not done.wait(min(job.config.lease_seconds / 4, job.config.stall_seconds / 4, 10.0)):
        protocol.heartbeat(store, job.id, job.lease_token, wid, None)


def _server_connections(dbname: str) -> int:
    eng = sa.create_engine(PG_ADMIN)
    with eng.connect() as c:
        n = c.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = :d"),
                      {"d": dbname}).scalar_one()
    eng.dispose()
    return int(n)


def _max_connections() -> int:
    eng = sa.create_engine(PG_ADMIN)
    with eng.connect() as c:
        n = int(c.exec_driver_sql("SHOW max_connections").scalar_one())
    eng.dispose()
    return n


def run_k(k: int, child_s: float, window: float, bouncer_port: int | None,
          separate: bool) -> dict:
    from renas_db import searches
    from renas_db.config import SearchConfig
    from renas_db.db import admin, protocol
    from renas_db.testing import fake_result_for
    dbname = f"renas_bench_scale_{k}"
    url = fresh_pg(dbname)
    store = migrated_store(url)
    cfg = SearchConfig(population=20, sample=5, steps=10**6, mutator="random",
                       lease_seconds=120)
    sid = searches.create(store, "scale", cfg)
    wid = admin.register_worker(store, "setup", os.getpid(), "none")
    for i in range(20):  # the initial population, so every timed job is a step
        job = protocol.claim(store, sid, wid)
        protocol.commit_job(store, job, fake_result_for(job, 0.1 + i / 100, val_loss=0.5), wid)
    worker_url = url
    if bouncer_port is not None:
        worker_url = str(sa.engine.make_url(url).set(host="127.0.0.1", port=bouncer_port))
    ctx = mp.get_context("spawn")
    start, stop = ctx.Event(), ctx.Event()
    procs = [ctx.Process(target=_worker, args=(worker_url, sid, child_s, separate, start, stop))
             for _ in range(k)]
    for p in procs:
        p.start()
    eng = sa.create_engine(url)
    registered = sa.text("SELECT count(*) FROM workers WHERE host = 'bench'")
    while True:  # every process imported and registered (a minute for 96 on 2 cores)
        with eng.connect() as c:
            if c.execute(registered).scalar_one() >= k:
                break
        time.sleep(0.5)
    start.set()
    time.sleep(child_s * 3 + 2)  # ramp up: every worker has claimed and committed once
    q = sa.text("SELECT (SELECT count(*) FROM jobs WHERE search_id = :s AND kind = 'step' "
                "AND state = 'done'), (SELECT count(*) FROM jobs WHERE search_id = :s AND "
                "kind = 'step' AND state = 'running')")
    samples, conns = [], []
    t_end = time.monotonic() + window
    while time.monotonic() < t_end:
        with eng.connect() as c:
            done, running = c.execute(q, {"s": sid}).one()
        samples.append((time.monotonic(), done, running))
        conns.append(_server_connections(dbname) - 1)  # less this sampler
        time.sleep(0.5)
    stop.set()
    for p in procs:
        p.join(timeout=30)
    eng.dispose()
    store.dispose()
    (t0, d0, _), (t1, d1, _) = samples[0], samples[-1]
    rate = (d1 - d0) / (t1 - t0)
    in_flight = sorted(r for _, _, r in samples)
    return {"k": k, "rate": rate, "ideal": k / child_s,
            "in_flight": in_flight[len(in_flight) // 2], "conns": max(conns),
            "via": "pgbouncer" if bouncer_port else "direct"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", default="4,8,16,32,64,96")
    ap.add_argument("--child-seconds", type=float, default=2.0)
    ap.add_argument("--window", type=float, default=20.0, help="timed seconds per K")
    ap.add_argument("--bouncer-pool", type=int, default=20,
                    help="PgBouncer server connections per database")
    ap.add_argument("--direct-max", type=int,
                    help="largest K run with direct connections (default: what fits)")
    ap.add_argument("--separate-heartbeat", action="store_true",
                    help="each worker's heartbeat on its own Store (the worker before issue 20)")
    args = ap.parse_args()
    limit = args.direct_max
    if limit is None:
        # a worker keeps 1 connection (3 before issue 20: main pool 2 + heartbeat 1);
        # room for the sampler, superuser slots and brief overflow connections
        limit = (_max_connections() - 10) // (3 if args.separate_heartbeat else 1)
    print(f"load: {os.getloadavg()[0]:.2f}; child {args.child_seconds:g} s; "
          f"window {args.window:g} s; direct connections up to K={limit}")
    print(f"{'K':>3} {'via':>9} {'steps/s':>8} {'ideal':>7} {'ratio':>6} {'in flight':>9} "
          f"{'server conns':>12}")
    with tempfile.TemporaryDirectory() as d:
        bouncer = None
        try:
            for k in [int(x) for x in args.ks.split(",")]:
                port = None
                if k > limit:
                    if bouncer is None:
                        os.environ["RENAS_DB_PREPARE"] = "0"  # inherited by the workers
                        server = sa.engine.make_url(PG_ADMIN)
                        bouncer = start_pgbouncer(d, server.host or "127.0.0.1",
                                                  server.port or 5432,
                                                  server.username or "postgres",
                                                  pool=args.bouncer_pool,
                                                  max_clients=1000)
                    port = bouncer[1]
                r = run_k(k, args.child_seconds, args.window, port, args.separate_heartbeat)
                print(f"{r['k']:>3} {r['via']:>9} {r['rate']:>8.2f} {r['ideal']:>7.2f} "
                      f"{r['rate'] / r['ideal']:>6.1%} {r['in_flight']:>9} {r['conns']:>12}",
                      flush=True)
        finally:
            if bouncer is not None:
                bouncer[0].terminate()
                bouncer[0].wait()


if __name__ == "__main__":
    main()
