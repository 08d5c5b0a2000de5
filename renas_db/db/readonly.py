"""`renas-db sql`: one read-only statement, enforced three times over.

1. Static check: a single statement that starts with SELECT, WITH, VALUES, TABLE or
   EXPLAIN (without ANALYZE). 2. PostgreSQL runs it in a READ ONLY transaction with a
   statement timeout, always rolled back; SQLite opens the file read-only
   (mode=ro, query_only) with a progress-handler time limit. 3. Row and length caps."""
from __future__ import annotations

import math
import re
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from renas_db.db.session import Store
from renas_db.errors import RenasError

MAX_QUERY_CHARS = 20_000
ALLOWED_START = ("select", "with", "values", "table", "explain")
WRITE_WORDS = re.compile(
    r"\b(insert|update|delete|merge|upsert|replace|create|drop|alter|truncate|grant|revoke|"
    r"attach|detach|pragma|vacuum|reindex|analyze|copy|call|do|lock|listen|notify|set|"
    r"reset|begin|commit|rollback|savepoint|release|prepare|execute|deallocate|refresh|"
    r"cluster|comment|security|import|load)\b", re.I)


class QueryRefused(RenasError):
    """The statement is not a single read-only query."""


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool


def _strip(sql: str) -> str:
    """The statement with comments removed and string/identifier literals blanked."""
    out, i, n = [], 0, len(sql)
    while i < n:
        c = sql[i]
        if sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            if j < 0:
                raise QueryRefused("unterminated /* comment")
            i = j + 2
            out.append(" ")
        elif c in "'\"":
            j = i + 1
            while True:
                j = sql.find(c, j)
                if j < 0:
                    raise QueryRefused("unterminated quoted string")
                if sql.startswith(c * 2, j):
                    j += 2
                    continue
                break
            out.append(c + "x" + c)
            i = j + 1
        elif c == "$" and re.match(r"\$[A-Za-z_]*\$", sql[i:]):
            raise QueryRefused("dollar-quoted strings are not allowed")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def check_read_only(sql: str) -> str:
    """Raise QueryRefused unless `sql` is one read-only statement; return it trimmed."""
    if len(sql) > MAX_QUERY_CHARS:
        raise QueryRefused(f"query too long ({len(sql)} characters, at most {MAX_QUERY_CHARS})")
    body = _strip(sql).strip()
    while body.endswith(";"):
        body = body[:-1].rstrip()
    if not body:
        raise QueryRefused("empty query")
    if ";" in body:
        raise QueryRefused("only one statement is allowed")
    first = body.split(None, 1)[0].lower().lstrip("(")
    if first not in ALLOWED_START:
        raise QueryRefused(f"only read-only queries are allowed (SELECT, WITH, VALUES, "
                           f"EXPLAIN), not {first.upper()}")
    word = WRITE_WORDS.search(body)
    if word:
        raise QueryRefused(f"{word.group(1).upper()} is not allowed in a read-only query")
    if re.search(r"\binto\b", body, re.I):
        raise QueryRefused("SELECT ... INTO is not allowed in a read-only query")
    return sql.strip().rstrip(";").strip()


def run_read_only(store: Store, sql: str, *, timeout_s: float = 10.0,
                  max_rows: int = 10_000) -> QueryResult:
    query = check_read_only(sql)
    if store.is_sqlite:
        return _sqlite(store, query, timeout_s, max_rows)
    return _postgres(store, query, timeout_s, max_rows)


def _postgres(store: Store, query: str, timeout_s: float, max_rows: int) -> QueryResult:
    try:
        with store.engine.connect() as conn:
            trans = conn.begin()
            try:
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                conn.exec_driver_sql(f"SET LOCAL statement_timeout = {int(timeout_s * 1000)}")
                result = conn.execute(text(query).execution_options(no_parameters=True))
                columns = list(result.keys())
                rows = [tuple(r) for r in result.fetchmany(max_rows + 1)]
            finally:
                trans.rollback()
    except DBAPIError as exc:
        raise _query_error(exc, timeout_s) from exc
    return QueryResult(columns, rows[:max_rows], len(rows) > max_rows)


def _sqlite(store: Store, query: str, timeout_s: float, max_rows: int) -> QueryResult:
    path = make_url(store.url).database
    if not path or path == ":memory:":
        raise QueryRefused("sql needs a file database")
    deadline = time.monotonic() + timeout_s

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        conn.execute("PRAGMA query_only = ON")
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        conn.create_function("sqrt", 1, lambda x: None if x is None or x < 0 else math.sqrt(x),
                             deterministic=True)
        return conn
    engine = create_engine("sqlite://", creator=connect)
    try:
        with engine.connect() as conn:
            result = conn.exec_driver_sql(query)
            columns = list(result.keys())
            rows = [tuple(r) for r in result.fetchmany(max_rows + 1)]
            conn.rollback()
    except DBAPIError as exc:
        raise _query_error(exc, timeout_s) from exc
    finally:
        engine.dispose()
    return QueryResult(columns, rows[:max_rows], len(rows) > max_rows)


def _query_error(exc: DBAPIError, timeout_s: float) -> RenasError:
    msg = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
    low = msg.lower()
    if "interrupted" in low or "statement timeout" in low or "canceling statement" in low:
        return QueryRefused(f"query stopped after the {timeout_s:g} s time limit")
    if "read-only" in low or "readonly" in low or "read only" in low:
        return QueryRefused(f"write refused by the database: {msg}")
    return RenasError(f"query failed: {msg}")
