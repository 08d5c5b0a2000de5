"""Engines for both back ends and the one helper that owns every transaction."""
from __future__ import annotations

import importlib
import math
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
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
PING_AFTER_IDLE_S = 1.0


@dataclass(frozen=True)
class Waits:
    """The bound on every wait for the database (docs/design.md, 3.5), in seconds; each
    can be set by its environment variable, RENAS_DB_ and the field's name in capitals
    (RENAS_DB_LOCK_TIMEOUT=20). On PostgreSQL a timeout of 0 is not set at all: the
    server's, database's or role's value stands."""

    # PostgreSQL, set on every session at connect. A session idle inside a transaction
    # (a frozen or partitioned client holding the search lock or a job row) is ended by
    # the server after this long, which releases its locks.
    idle_in_transaction_timeout: float = 30.0
    # A lock wait (the search lock, a row) ends in a retryable error after this long:
    # longer than the idle timeout, so a frozen holder is ended before its waiters give up.
    lock_timeout: float = 60.0
    # Off by default: reports, checks and migrations on a long history run for long.
    statement_timeout: float = 0.0
    # TCP keepalives (libpq's, and the server's for the session): a dead peer is noticed
    # after idle + interval * count seconds; tcp_user_timeout bounds unacknowledged sends
    # by the same time. A URL's own keepalives_* or tcp_user_timeout query setting wins.
    keepalives_idle: float = 30.0
    keepalives_interval: float = 10.0
    keepalives_count: int = 3
    # SQLite: a write waits this long for another writer's lock, then fails with a
    # retryable ConflictError that the workers' retry (renas_db/retry.py) rides out.
    sqlite_busy_timeout: float = 5.0

    @classmethod
    def from_env(cls) -> Waits:
        values: dict[str, Any] = {}
        for f in fields(cls):
            var = f"RENAS_DB_{f.name.upper()}"
            raw = os.environ.get(var)
            if raw is None or not raw.strip():
                continue
            try:
                value = int(raw) if f.name == "keepalives_count" else float(raw)
            except ValueError:
                raise ConfigError(f"{var}={raw!r} is not a number") from None
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{var}={raw!r} must be a number >= 0")
            values[f.name] = value
        return cls(**values)

    def dead_peer_s(self) -> float:
        return self.keepalives_idle + self.keepalives_interval * self.keepalives_count

    def pg_session_sql(self) -> str:
        """What every PostgreSQL session runs once, at connect: the time zone pinned to
        UTC (db_now() writes UTC whatever the zone; this is for everything else), and
        the timeouts."""
        sets = ["SET TIME ZONE 'UTC'"]
        for name, value in (("idle_in_transaction_session_timeout",
                             self.idle_in_transaction_timeout),
                            ("lock_timeout", self.lock_timeout),
                            ("statement_timeout", self.statement_timeout)):
            if value > 0:
                sets.append(f"SET {name} = {max(1, round(value * 1000))}")
        if self.keepalives_idle > 0:
            sets += [f"SET tcp_keepalives_idle = {max(1, round(self.keepalives_idle))}",
                     f"SET tcp_keepalives_interval = "
                     f"{max(1, round(self.keepalives_interval))}",
                     f"SET tcp_keepalives_count = {self.keepalives_count}"]
        return "; ".join(sets)

    def pg_connect_args(self, url_query: Any) -> dict[str, Any]:
        """libpq's keepalive settings, unless the URL sets them itself."""
        if self.keepalives_idle <= 0:
            return {}
        args: dict[str, Any] = {
            "keepalives": 1, "keepalives_idle": max(1, round(self.keepalives_idle)),
            "keepalives_interval": max(1, round(self.keepalives_interval)),
            "keepalives_count": self.keepalives_count}
        if _libpq_version() >= 120000:  # an older libpq refuses the option
            args["tcp_user_timeout"] = round(self.dead_peer_s() * 1000)
        return {k: v for k, v in args.items() if k not in url_query}


def resolve_url(url: str | None) -> str:
    return url or os.environ.get("RENAS_DB_URL") or DEFAULT_URL


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, for any output or log."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def _libpq_version() -> int:
    try:
        driver = importlib.import_module("psycopg2")  # untyped: not imported by name
    except ImportError:
        return 0
    return int(getattr(driver, "__libpq_version__", 0))


class Store:
    """A database holding searches. One engine; every unit of work is `transaction()`."""

    # one connection kept per process (a worker: 1 server connection between jobs); up
    # to 4 more opened while needed at once (the heartbeat during a commit), then closed
    def __init__(self, url: str | None = None, *, pool_size: int = 1,
                 waits: Waits | None = None) -> None:
        self.url = resolve_url(url)
        self.waits = waits or Waits.from_env()
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
                    self.url, connect_args={"timeout": self.waits.sqlite_busy_timeout,
                                            "check_same_thread": False},
                    pool_size=pool_size, max_overflow=4)
                _sqlite_hooks(self.engine, self.waits)
            else:
                # READ COMMITTED whatever the database's or role's default: the claim's
                # statements each take their own snapshot after the lock (docs/design.md)
                self.engine = create_engine(
                    self.url, pool_size=pool_size, max_overflow=4,
                    isolation_level="READ COMMITTED",
                    connect_args={"connect_timeout": 10, "application_name": "renas-db",
                                  **self.waits.pg_connect_args(parsed.query)})
                _pg_session(self.engine, self.waits)
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
            raise translate_error(exc, self.masked_url,
                                  busy_s=self.waits.sqlite_busy_timeout) from exc

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


def translate_error(exc: DBAPIError, masked_url: str, *,
                    busy_s: float | None = None) -> RenasError:
    text = str(exc.orig) if exc.orig is not None else str(exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    low = text.lower()
    code = getattr(exc.orig, "pgcode", None)
    if isinstance(exc, IntegrityError):
        if "searches" in low and "name" in low:
            return AlreadyExistsError("a search with that name exists already")
        return IntegrityViolation(f"conflicting write: {first}")  # not retryable
    if "database is locked" in low:
        waited = f" for {busy_s:g} s" if busy_s is not None else ""
        return ConflictError(f"the SQLite database stayed locked by another writer{waited} "
                             "(a stopped or hung process inside a transaction?), retry: "
                             f"{first}")
    if code == "55P03":
        return ConflictError(f"waited too long for a lock (lock_timeout), retry: {first}")
    if code == "57014":
        return DatabaseUnavailable(f"a statement ran past statement_timeout on {masked_url}: "
                                   f"{first}")
    if code in ("40001", "40P01"):
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


def _pg_session(engine: Engine, waits: Waits) -> None:
    sql = waits.pg_session_sql()

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute(sql)
        cur.close()
        dbapi_conn.commit()  # session settings, kept past the pool's rollbacks


def sqlite_synchronous() -> str:
    """FULL; RENAS_DB_SQLITE_SYNCHRONOUS=NORMAL only to measure what FULL costs: it gives
    up durability on power loss, which GC relies on (docs/design.md, 3.5)."""
    sync = os.environ.get("RENAS_DB_SQLITE_SYNCHRONOUS", "FULL").strip().upper()
    if sync not in ("FULL", "EXTRA", "NORMAL"):
        raise ConfigError(f"RENAS_DB_SQLITE_SYNCHRONOUS={sync!r}: use FULL (or EXTRA, NORMAL)")
    return sync


def _sqlite_hooks(engine: Engine, waits: Waits) -> None:
    sync = sqlite_synchronous()

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from pysqlite so BEGIN IMMEDIATE is ours to emit.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={round(waits.sqlite_busy_timeout * 1000)}")
        cur.execute("PRAGMA foreign_keys=ON")
        # FULL: a commit is on disk when it returns (WAL synced per commit). NORMAL could
        # lose the last commits on power loss after GC deleted the checkpoints of the
        # victims they killed, which would then come back alive without a file.
        cur.execute(f"PRAGMA synchronous={sync}")
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
