"""Lease times, time zones, bounded waits, isolation and durability (issue 15, faults 4-7
and READ COMMITTED). Frozen clients are real processes stopped with SIGSTOP."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime

import pytest
import sqlalchemy as sa
from sqlalchemy import select, text

from renas_db import searches
from renas_db.config import SearchConfig
from renas_db.db import admin, protocol
from renas_db.db.models import Job
from renas_db.db.session import Store, Waits
from renas_db.errors import ConflictError
from renas_db.retry import retrying
from tests.helpers import cli_env, wait_for


def _config(tmp_path, **kw):
    base = dict(population=3, sample=2, steps=0, mutator="random", blocks=2,
                lease_seconds=30.0, checkpoint_root=str(tmp_path / "ck"))
    base.update(kw)
    return SearchConfig(**base)


def _heartbeat(store, job_id):
    with store.transaction(write=False) as s:
        return s.scalar(select(Job.heartbeat_at).where(Job.id == job_id))


def _job_state(store, job_id):
    with store.transaction(write=False) as s:
        return s.scalar(select(Job.state).where(Job.id == job_id))


def _in_thread(fn, *args):
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = fn(*args)
        except Exception as exc:  # handed to the test
            box["error"] = exc
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def _result(t, box, timeout=60):
    t.join(timeout)   # a guard against hanging the suite, not a measurement
    assert not t.is_alive(), "the call is still waiting"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]


def _sql(store, query, **params):
    with store.connection(write=False) as conn:
        return conn.execute(text(query), params).first()


# -- fault 5: a lease's times are those of the write ---------------------------------------
def test_a_claim_that_waited_for_the_lock_writes_a_fresh_lease(db_url, tmp_path):
    store = Store(db_url, waits=Waits(sqlite_busy_timeout=60))
    lease = 2.0   # also the margin for the second claim, right after the first
    sid = searches.create(store, "s", _config(tmp_path, lease_seconds=lease))
    wid = admin.register_worker(store, "h", 1, "cpu")
    other = Store(db_url)
    if store.is_sqlite:
        holder = sqlite3.connect(str(tmp_path / "renas.sqlite"), isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        t, box = _in_thread(protocol.claim, store, sid, wid)
        time.sleep(lease + 0.5)  # the claim waits for the write lock meanwhile
        released = holder.execute("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')").fetchone()[0]
        holder.execute("COMMIT")
        holder.close()
        released_at = datetime.fromisoformat(released)
    else:
        with other.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(7457001, :sid)"), {"sid": sid})
            t, box = _in_thread(protocol.claim, store, sid, wid)
            # wait until the claim's transaction, blocked on the search lock, is older
            # than the lease by the database's clock
            wait_for(lambda: _sql(other, """
                SELECT 1 FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid
                WHERE NOT l.granted AND l.locktype = 'advisory'
                  AND clock_timestamp() - a.xact_start > :lease * interval '1 second'""",
                lease=lease), every=0.05, timeout=60, what="the claim to wait past its lease")
            released_at = conn.execute(text(
                "SELECT timezone('UTC', clock_timestamp())")).scalar()
            conn.commit()
    first = _result(t, box)
    assert first is not None
    # the heartbeat is the time of the write, after the lock was released
    assert _heartbeat(store, first.id) >= released_at
    second = protocol.claim(store, sid, wid)
    assert second is not None and second.id != first.id
    assert _job_state(store, first.id) == "running"
    other.dispose()
    store.dispose()


# -- fault 6: time zones -------------------------------------------------------------------
def _admin(url, *sql):
    """Statements outside a transaction, as the test database's (superuser) owner."""
    eng = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with eng.connect() as conn:
        for q in sql:
            conn.exec_driver_sql(q)
    eng.dispose()


@pytest.fixture
def far_role(pg_url):
    role = f"renas_far_{os.getpid()}"
    _admin(pg_url, f"DROP ROLE IF EXISTS {role}", f"CREATE ROLE {role} LOGIN SUPERUSER",
           f"ALTER ROLE {role} SET timezone = 'Pacific/Kiritimati'")  # UTC+14
    yield role
    _admin(pg_url, f"DROP ROLE IF EXISTS {role}")


def test_a_session_in_another_time_zone_sees_leases_alike(pg_url, far_role, tmp_path):
    here = Store(pg_url)
    far = Store(str(sa.engine.make_url(pg_url).set(username=far_role)))
    sid = searches.create(here, "s", _config(tmp_path, lease_seconds=30))
    w1 = admin.register_worker(here, "h", 1, "cpu")
    w2 = admin.register_worker(far, "h", 2, "cpu")
    a = protocol.claim(here, sid, w1)
    b = protocol.claim(far, sid, w2)        # +14 h: A's live lease must not look expired
    assert b.id != a.id
    c = protocol.claim(here, sid, w1)       # nor B's look 14 h in the future
    assert c.id not in (a.id, b.id)
    assert {_job_state(here, j.id) for j in (a, b, c)} == {"running"}
    # both wrote their leases on one clock
    assert abs((_heartbeat(here, b.id) - _heartbeat(here, a.id)).total_seconds()) < 30
    # and the far session runs in UTC
    with far.connection(write=False) as conn:
        assert conn.exec_driver_sql("SHOW TimeZone").scalar() == "UTC"
    here.dispose()
    far.dispose()


# -- fault 4: bounded waits ----------------------------------------------------------------
FROZEN_CLAIM = """
import os, signal, sys
from renas_db.db import protocol
from renas_db.db.session import Store
from renas_db.errors import RenasError
take = protocol._take
def frozen(conn, *args, **kw):
    job = take(conn, *args, **kw)       # the search lock and the job row are held now
    print(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar(), flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)
    return job
protocol._take = frozen
store = Store()
try:
    protocol.claim(store, int(sys.argv[1]), int(sys.argv[2]))
    print("committed", flush=True)
except RenasError as exc:
    print("ended:", exc, flush=True)
"""


def _frozen(script, db_url, *args, **env):
    p = subprocess.Popen([sys.executable, "-c", script, *map(str, args)],
                         env=cli_env(db_url, **env), stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip()
    assert line, "the frozen process printed nothing"
    wait_for(lambda: _stopped(p.pid), every=0.02, timeout=30, what="SIGSTOP")
    return p, line


def _stopped(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def _backend_alive(store, pid):
    return _sql(store, "SELECT 1 FROM pg_stat_activity WHERE pid = :pid", pid=pid) is not None


def test_a_client_frozen_in_a_claim_does_not_hold_the_search_lock(pg_url, tmp_path):
    store = Store(pg_url)
    sid = searches.create(store, "s", _config(tmp_path))
    wid = admin.register_worker(store, "h", 1, "cpu")
    p, backend = _frozen(FROZEN_CLAIM, pg_url, sid, wid,
                         RENAS_DB_IDLE_IN_TRANSACTION_TIMEOUT="0.5")
    try:
        t, box = _in_thread(protocol.claim, store, sid, wid)
        job = _result(t, box)
        # the server ended the frozen session, and with it its lock and its take
        assert job is not None and job.attempt == 1
        assert not _backend_alive(store, int(backend))
    finally:
        os.kill(p.pid, signal.SIGCONT)
        out, _ = p.communicate(timeout=60)
    assert out.startswith("ended: cannot reach the database"), out
    store.dispose()


FROZEN_COMMIT = """
import os, signal, sys
from renas_db.db import protocol
from renas_db.db.session import Store
from renas_db.db.statements import HOT
store = Store()
job = protocol.claim(store, int(sys.argv[1]), int(sys.argv[2]))
with store.connection() as conn:
    HOT.run(conn, "done", {"jid": job.id, "tok": job.lease_token})   # the job row locked
    print(job.id, flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)
"""


def test_the_sweep_skips_the_row_of_a_frozen_committer(pg_url, tmp_path):
    lease = 0.5
    store = Store(pg_url, waits=Waits(lock_timeout=5))
    sid = searches.create(store, "s", _config(tmp_path, lease_seconds=lease))
    wid = admin.register_worker(store, "h", 1, "cpu")
    # the frozen committer's session never times out: only skipping its row helps
    p, frozen_job = _frozen(FROZEN_COMMIT, pg_url, sid, wid,
                            RENAS_DB_IDLE_IN_TRANSACTION_TIMEOUT="0")
    try:
        wait_for(lambda: _sql(store, "SELECT 1 FROM jobs WHERE id = :j AND heartbeat_at < "
                              "timezone('UTC', clock_timestamp()) - interval '1 second'",
                              j=int(frozen_job)), every=0.05, what="its lease to expire")
        job = protocol.claim(store, sid, wid)   # sweeps: the frozen job's row is locked
        assert job is not None and job.id != int(frozen_job)
        assert _job_state(store, int(frozen_job)) == "running"   # left for a later sweep
    finally:
        p.kill()
        p.wait()
    store.dispose()


FROZEN_SQLITE_WRITER = """
import os, signal, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
"""


def test_sqlite_a_frozen_writer_costs_a_bounded_retryable_wait(tmp_path, caplog):
    url = f"sqlite:///{tmp_path / 'renas.sqlite'}"
    store = Store(url, waits=Waits(sqlite_busy_timeout=0.2))
    from renas_db.db.schema import upgrade
    upgrade(store)
    sid = searches.create(store, "s", _config(tmp_path))
    wid = admin.register_worker(store, "h", 1, "cpu")
    p, _ = _frozen(FROZEN_SQLITE_WRITER, url, str(tmp_path / "renas.sqlite"))
    try:
        with pytest.raises(ConflictError, match="stayed locked by another writer for 0.2 s"):
            protocol.claim(store, sid, wid)
        # the workers' retry rides it out once the writer is gone
        t, box = _in_thread(retrying, "claim", protocol.claim, store, sid, wid)
        wait_for(lambda: "stayed locked" in caplog.text, every=0.05, what="a retry")
    finally:
        p.kill()
        p.wait()
    job = _result(t, box)
    assert job is not None and job.kind == "init"
    store.dispose()


def test_postgresql_sessions_carry_the_bounds(pg_url):
    store = Store(pg_url, waits=Waits(idle_in_transaction_timeout=30, lock_timeout=60,
                                      statement_timeout=0, keepalives_idle=30,
                                      keepalives_interval=10, keepalives_count=3))
    with store.connection(write=False) as conn:
        show = {k: conn.exec_driver_sql(f"SHOW {k}").scalar() for k in (
            "idle_in_transaction_session_timeout", "lock_timeout", "TimeZone",
            "tcp_keepalives_idle")}
        dsn = conn.connection.dbapi_connection.get_dsn_parameters()
    assert show["idle_in_transaction_session_timeout"] == "30s"
    assert show["lock_timeout"] == "1min"
    assert show["TimeZone"] == "UTC"
    assert dsn["keepalives_idle"] == "30" and dsn["keepalives_count"] == "3"
    assert dsn["tcp_user_timeout"] == "60000"
    store.dispose()


def test_waits_from_the_environment(monkeypatch):
    monkeypatch.setenv("RENAS_DB_LOCK_TIMEOUT", "7.5")
    monkeypatch.setenv("RENAS_DB_KEEPALIVES_COUNT", "5")
    w = Waits.from_env()
    assert w.lock_timeout == 7.5 and w.keepalives_count == 5
    assert w.idle_in_transaction_timeout == Waits().idle_in_transaction_timeout
    monkeypatch.setenv("RENAS_DB_SQLITE_BUSY_TIMEOUT", "soon")
    from renas_db.errors import ConfigError
    with pytest.raises(ConfigError, match="RENAS_DB_SQLITE_BUSY_TIMEOUT"):
        Waits.from_env()


# -- READ COMMITTED and SQLite durability --------------------------------------------------
def test_postgresql_runs_read_committed_whatever_the_default(pg_url):
    name = sa.engine.make_url(pg_url).database
    _admin(pg_url, f"ALTER DATABASE {name} SET default_transaction_isolation = 'serializable'")
    store = Store(pg_url)
    with store.connection() as conn:
        assert conn.exec_driver_sql("SHOW transaction_isolation").scalar() == "read committed"
    with store.transaction(write=False) as s:
        assert s.execute(text("SHOW transaction_isolation")).scalar() == "read committed"
    store.dispose()


def test_sqlite_commits_are_durable_when_they_return(tmp_path, monkeypatch):
    monkeypatch.delenv("RENAS_DB_SQLITE_SYNCHRONOUS", raising=False)
    store = Store(f"sqlite:///{tmp_path / 'x.sqlite'}")
    with store.connection() as conn:       # the hot path's commits
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2   # FULL
    with store.transaction() as s:         # gc.mark_collected, admin
        assert s.execute(text("PRAGMA synchronous")).scalar() == 2
    store.dispose()
