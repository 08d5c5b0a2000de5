"""Fixtures: a fresh migrated database per test on SQLite and on PostgreSQL."""
from __future__ import annotations

import itertools
import os

# 3 test processes on 2 cores: torch's own thread pools would oversubscribe the CPU
# (measured: test_network 30 s -> 416 s). Workers spawned by tests get their own value.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import sqlalchemy as sa

from tests.pgcluster import ThrowawayCluster

PG_ADMIN_URL = os.environ.get("RENAS_TEST_PG",
                              "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
_pg_state: dict = {}


def _can_connect(url: str) -> bool:
    try:
        eng = sa.create_engine(url, connect_args={"connect_timeout": 3})
        with eng.connect():
            pass
        eng.dispose()
        return True
    except Exception:
        return False


def pg_admin_url() -> str | None:
    """The PostgreSQL server tests use: the shared one, else a throwaway cluster."""
    if "url" not in _pg_state:
        url = None
        reason = ""
        if _can_connect(PG_ADMIN_URL):
            url = PG_ADMIN_URL
        else:
            try:
                cluster = ThrowawayCluster().init()
                cluster.wait_ready()
                _pg_state["cluster"] = cluster
                url = cluster.url
            except Exception as exc:
                reason = f"no server at {PG_ADMIN_URL} and no throwaway cluster: {exc}"
        _pg_state["url"] = url
        _pg_state["reason"] = reason
    return _pg_state["url"]


def pytest_report_header(config):  # type: ignore[no-untyped-def]
    import torch
    cuda = ([] if torch.cuda.is_available() else
            ["CUDA TESTS SKIPPED (tests marked cuda): no GPU on this machine"])
    url = pg_admin_url()
    if url is None:
        return ["!" * 70, "POSTGRESQL TESTS SKIPPED: " + _pg_state["reason"], *cuda,
                "!" * 70]
    return [f"postgresql: {url}", *cuda]


def pytest_sessionfinish(session, exitstatus):  # type: ignore[no-untyped-def]
    for name in _pg_state.get("created", []):
        drop_pg(_url_for(name))
    if _pg_state.get("template"):
        drop_pg(_url_for(_pg_state["template"]))
    cluster = _pg_state.get("cluster")
    if cluster is not None:
        cluster.destroy()


_counter = itertools.count()


def _worker_tag() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def _admin_exec(sql: str) -> None:
    eng = sa.create_engine(pg_admin_url(), isolation_level="AUTOCOMMIT")
    with eng.connect() as conn:
        conn.exec_driver_sql(sql)
    eng.dispose()


def _url_for(dbname: str) -> str:
    return str(sa.engine.make_url(pg_admin_url()).set(database=dbname))


def _template() -> str:
    """One migrated template database per test process."""
    name = f"renas_tpl_{_worker_tag()}_{os.getpid()}"
    if _pg_state.get("template") != name:
        from renas_db.db.schema import upgrade
        from renas_db.db.session import Store
        _admin_exec(f"DROP DATABASE IF EXISTS {name}")
        _admin_exec(f"CREATE DATABASE {name}")
        store = Store(_url_for(name))
        upgrade(store)
        store.dispose()
        _pg_state["template"] = name
    return name


def new_pg_url(migrated: bool = True) -> str:
    name = f"renas_t_{_worker_tag()}_{os.getpid()}_{next(_counter)}"
    _admin_exec(f"DROP DATABASE IF EXISTS {name}")
    if migrated:
        _admin_exec(f"CREATE DATABASE {name} TEMPLATE {_template()}")
    else:
        _admin_exec(f"CREATE DATABASE {name}")
    _pg_state.setdefault("created", []).append(name)
    return _url_for(name)


def drop_pg(url: str) -> None:
    name = sa.engine.make_url(url).database
    try:
        _admin_exec(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    except Exception:
        pass


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):  # type: ignore[no-untyped-def]
    """A fresh, migrated database URL on each back end."""
    if request.param == "sqlite":
        from renas_db.db.schema import upgrade
        from renas_db.db.session import Store
        url = f"sqlite:///{tmp_path / 'renas.sqlite'}"
        store = Store(url)
        upgrade(store)
        store.dispose()
        yield url
    else:
        if pg_admin_url() is None:
            pytest.skip("PostgreSQL unavailable: " + _pg_state["reason"])
        url = new_pg_url()
        yield url
        drop_pg(url)


@pytest.fixture
def store(db_url):  # type: ignore[no-untyped-def]
    from renas_db.db.session import Store
    s = Store(db_url)
    yield s
    s.dispose()


@pytest.fixture
def pg_url():  # type: ignore[no-untyped-def]
    if pg_admin_url() is None:
        pytest.skip("PostgreSQL unavailable: " + _pg_state["reason"])
    url = new_pg_url()
    yield url
    drop_pg(url)


@pytest.fixture(scope="session")
def s3_server():  # type: ignore[no-untyped-def]
    """moto's standalone S3 server behind a TCP proxy, one per test process."""
    pytest.importorskip("boto3")
    pytest.importorskip("moto.server")
    from tests.s3server import S3
    server = S3()
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):  # type: ignore[no-untyped-def]
    """A fresh bucket; this process and the workers it spawns reach it through the
    standard AWS environment (its endpoint is the proxy's)."""
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    s3_server.bucket = s3_server.new_bucket()
    yield s3_server
    s3_server.proxy.cut_answers = 0
    if s3_server.proxy._listener is None:
        s3_server.proxy.open()
