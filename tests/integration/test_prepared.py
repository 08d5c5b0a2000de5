"""The hot path's prepared statements (PostgreSQL) and the idle-connection ping."""
from __future__ import annotations

import pytest
from sqlalchemy import text

from renas_db import searches
from renas_db.config import SearchConfig
from renas_db.db import admin, protocol, statements
from renas_db.db import session as db_session
from renas_db.db.session import Store
from renas_db.testing import fake_result_for


def _config(tmp_path, **kw):
    return SearchConfig(population=3, sample=2, steps=4, mutator="random", blocks=3,
                        lease_seconds=30.0, checkpoint_root=str(tmp_path / "ck"), **kw)


def _cycle(store, sid, wid, fitness):
    job = protocol.claim(store, sid, wid)
    if job is None:
        return None
    result = fake_result_for(job, fitness, mutation=[[0, "op1", 1]])
    return job, protocol.commit_job(store, job, result, wid)


def _run_search(store, tmp_path, name):
    sid = searches.create(store, name, _config(tmp_path))
    wid = admin.register_worker(store, "h", 1, "cpu")
    history = []
    while (done := _cycle(store, sid, wid, 0.1 + len(history) / 10)) is not None:
        job, child = done
        history.append((job.kind, job.step_index, job.parent.id if job.parent else None,
                        job.victim_id, tuple(job.sample or ())))
    return history


def test_prepared_and_plain_statements_agree(pg_url, tmp_path, monkeypatch):
    """The same search, once through prepared statements and once through plain Core
    statements, makes the same claims, tournaments and finish."""
    store = Store(pg_url)
    prepared = _run_search(store, tmp_path, "prepared")
    monkeypatch.setattr(statements.HOT, "enabled", False)
    plain = _run_search(store, tmp_path, "plain")
    # individual ids differ between the two searches: compare positions, not ids
    def shape(history):
        ids = sorted({i for h in history for i in (h[2], h[3], *h[4]) if i is not None})
        pos = {i: n for n, i in enumerate(ids)}
        return [(k, s, pos.get(p), pos.get(v), tuple(pos[i] for i in smp))
                for k, s, p, v, smp in history]
    assert shape(prepared) == shape(plain)
    assert [r["status"] for r in admin.list_searches(store)] == ["finished", "finished"]
    store.dispose()


def test_statements_are_prepared_once_per_connection_and_survive_rollback(pg_url, tmp_path):
    store = Store(pg_url, pool_size=1)
    sid = searches.create(store, "s", _config(tmp_path))
    wid = admin.register_worker(store, "h", 1, "cpu")
    _cycle(store, sid, wid, 0.5)
    # a transaction that fails after using a prepared statement rolls back; the
    # statement stays prepared on that connection and the next claim uses it
    with pytest.raises(RuntimeError, match="after the statement"):
        with store.connection() as conn:
            statements.HOT.run(conn, "state", {"sid": sid, "age": -30.0, "stall": -1800.0,
                                               "tok": "0" * 32})
            raise RuntimeError("a failure after the statement")
    _cycle(store, sid, wid, 0.6)
    with store.engine.connect() as conn:
        server = set(conn.execute(text("SELECT name FROM pg_prepared_statements")).scalars())
        assert conn.connection.info["renas_prepared"] <= server
        assert {"renas_state", "renas_done", "renas_child"} <= server
    store.dispose()


def test_idle_connection_to_a_restarted_server_is_replaced(pg_url, tmp_path, monkeypatch):
    """A pooled connection that the server closed while it sat idle (as after a restart)
    is pinged at checkout and replaced: the caller sees no error."""
    monkeypatch.setattr(db_session, "PING_AFTER_IDLE_S", 0.0)
    store = Store(pg_url, pool_size=1)
    with store.engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
    admin = Store(pg_url)
    with admin.engine.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        conn.commit()
    admin.dispose()
    sid = searches.create(store, "s", _config(tmp_path))   # on a fresh connection
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar() != pid
    assert sid
    store.dispose()
