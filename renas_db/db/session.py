"""Engines for both back ends and the one helper that owns every transaction."""
from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
)
from sqlalchemy.orm import Session

from renas_db.errors import (
    AlreadyExistsError,
    ConfigError,
    ConflictError,
    DatabaseUnavailable,
    IntegrityViolation,
    RenasError,
    SchemaError,
)

DEFAULT_URL = "sqlite:///renas.sqlite"
SQLITE_BUSY_MS = 30000
PING_AFTER_IDLE_S = 1.0


def resolve_url(url: str | None) -> str:
    return url or os.environ.get("RENAS_DB_URL") or DEFAULT_URL


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, for any output or log."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


class Store:
    """A database holding searches. One engine; every unit of work is `transaction()`."""

    def __init__(self, url: str | None = None, *, pool_size: int = 2) -> None:
        self.url = resolve_url(url)
        self.masked_url = mask_url(self.url)
        try:
            parsed = make_url(self.url)
        except ArgumentError:
            raise ConfigError(f"not a database URL: {self.masked_url}") from None
        self.dialect = parsed.get_backend_name()
        if self.dialect == "postgresql" and parsed.drivername == "postgresql":
            # psycopg2-binary is the driver we ship; be explicit whatever the default is
            self.url = parsed.set(drivername="postgresql+psycopg2").render_as_string(
                hide_password=False)
        if self.dialect not in ("sqlite", "postgresql"):
            raise ConfigError(f"unsupported database {self.dialect!r} in {self.masked_url} "
                              "(use sqlite:///FILE or postgresql://...)")
        try:
            if self.dialect == "sqlite":
                self.engine = create_engine(
                    self.url, connect_args={"timeout": SQLITE_BUSY_MS / 1000,
                                            "check_same_thread": False},
                    pool_size=pool_size, max_overflow=4)
                _sqlite_hooks(self.engine)
            else:
                self.engine = create_engine(
                    self.url, pool_size=pool_size, max_overflow=4,
                    connect_args={"connect_timeout": 10, "application_name": "renas-db"})
                _ping_when_idle(self.engine)
        except NoSuchModuleError:
            raise ConfigError(f"unsupported database driver in {self.masked_url}") from None

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @contextmanager
    def translated(self) -> Iterator[None]:
        """Driver errors raised inside become project errors (the only place they do)."""
        try:
            yield
        except RenasError:
            raise
        except DBAPIError as exc:
            raise translate_error(exc, self.masked_url) from exc

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Session]:
        """One short transaction: commit on success, rollback on error, and driver errors
        turned into project errors. On SQLite a write transaction is BEGIN IMMEDIATE."""
        with self.translated(), self.engine.connect() as conn:
            conn = conn.execution_options(renas_write=write)
            with Session(bind=conn, expire_on_commit=False) as session:
                with session.begin():
                    yield session

    @contextmanager
    def connection(self, *, write: bool = True) -> Iterator[Connection]:
        """One short Core transaction (the claim/commit hot path: no ORM objects)."""
        with self.translated(), self.engine.connect() as conn:
            conn.execution_options(renas_write=write)
            with conn.begin():
                yield conn

    def dispose(self) -> None:
        self.engine.dispose()


def translate_error(exc: DBAPIError, masked_url: str) -> RenasError:
    text = str(exc.orig) if exc.orig is not None else str(exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    low = text.lower()
    code = getattr(exc.orig, "pgcode", None)
    if isinstance(exc, IntegrityError):
        if "searches" in low and "name" in low:
            return AlreadyExistsError("a search with that name exists already")
        return IntegrityViolation(f"conflicting write: {first}")  # not retryable
    if code in ("40001", "40P01", "55P03") or "database is locked" in low:
        return ConflictError(f"concurrent write conflict, retry: {first}")
    if (code == "42P01" or "no such table" in low
            or ("relation" in low and "does not exist" in low)):
        return SchemaError("the database has no renas-db schema (or an outdated one): "
                           "run `renas-db db upgrade`")
    if isinstance(exc, OperationalError) or exc.connection_invalidated or code in (
            "57P01", "57P02", "57P03", "08006", "08001", "08003"):
        return DatabaseUnavailable(f"cannot reach the database {masked_url}: {first}")
    return RenasError(f"database error: {first}")


def _ping_when_idle(engine: Engine) -> None:
    """Pessimistic disconnect handling without a round trip per transaction: a connection
    back from the pool after PING_AFTER_IDLE_S (a worker's, after training) is pinged
    first, and a dead one is replaced. Back-to-back transactions (claim, commit) skip it."""
    @event.listens_for(engine, "checkin")
    def _stamp(_dbapi_conn: Any, record: Any) -> None:
        record.info["renas_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("renas_idle_since")
        if since is None or time.monotonic() - since < PING_AFTER_IDLE_S:
            return
        try:
            cursor = dbapi_conn.cursor()
            cursor.execute("SELECT 1")
            cursor.close()
            dbapi_conn.rollback()  # leave no transaction open behind the pool's back
        except Exception as exc:
            # the pool drops this connection and checks out another (a new one)
            raise DisconnectionError(str(exc)) from exc


def _sqlite_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from pysqlite so BEGIN IMMEDIATE is ours to emit.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()
        # sqrt for the views' standard deviation (SQLite may lack math functions)
        dbapi_conn.create_function("sqrt", 1,
                                   lambda x: None if x is None or x < 0 else math.sqrt(x),
                                   deterministic=True)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the lock up front: no deadlock-prone upgrade from a read lock.
        write = conn.get_execution_options().get("renas_write", True)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
