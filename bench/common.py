"""Helpers shared by the benchmarks: fresh databases and a claim/commit cycle."""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence

import sqlalchemy as sa

PG_ADMIN = os.environ.get("RENAS_BENCH_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")


def fresh_pg(name: str) -> str:
    eng = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        c.exec_driver_sql(f"CREATE DATABASE {name}")
    eng.dispose()
    return str(sa.engine.make_url(PG_ADMIN).set(database=name))


def fresh_sqlite(path: str) -> str:
    for suffix in ("", "-wal", "-shm"):
        try:
            os.remove(path + suffix)
        except FileNotFoundError:
            pass
    return f"sqlite:///{path}"


def migrated_store(url: str):  # type: ignore[no-untyped-def]
    from renas_db.db.schema import upgrade
    from renas_db.db.session import Store
    store = Store(url)
    upgrade(store)
    return store


def fake_result(job, fitness: float = 0.5):  # type: ignore[no-untyped-def]
    """A tiny fixed result: no training, no checkpoint file (coordination only)."""
    from renas_db.testing import fake_result_for
    return fake_result_for(job, fitness, val_loss=0.5)


def cycle(store, search_id: int, worker_id: int, fitness: float) -> float | None:  # type: ignore[no-untyped-def]
    """One claim + commit through the library; seconds, or None when there is no work."""
    from renas_db.db import protocol
    t = time.perf_counter()
    job = protocol.claim(store, search_id, worker_id)
    if job is None:
        return None
    protocol.commit_job(store, job, fake_result(job, fitness), worker_id)
    return time.perf_counter() - t


def pct(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def ms(x: float) -> str:
    return f"{x * 1000:.1f} ms"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")
