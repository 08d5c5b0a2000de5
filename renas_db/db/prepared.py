"""Core statements planned once per connection (the claim/commit hot path).

psycopg2 sends every statement as text, so PostgreSQL parses and plans it on every call;
for the claim's multi-subquery statements planning costs more than running them. Here each
hot statement is compiled once, PREPAREd on a connection the first time that connection
runs it, and then sent as `EXECUTE name(...)`: SQLAlchemy still converts the parameters
(JSON, floats) and the rows come back as usual. SQLite runs the Core statement itself.

Set RENAS_DB_PREPARE=0 where named prepared statements do not survive between
transactions (a pooler in transaction mode, such as PgBouncer's `pool_mode=transaction`).
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, Union, cast

from sqlalchemy import bindparam, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, CursorResult
from sqlalchemy.sql.expression import Select, TextClause, UpdateBase

_PARAM = re.compile(r"%\((\w+)\)s")
_EXPANDING = re.compile(r"__\[POSTCOMPILE_(\w+)\]")

# a hot statement: compiled here for PREPARE, and executed as it is on SQLite
Statement = Union["Select[Any]", UpdateBase]


class _Plan:
    def __init__(self, name: str, stmt: Statement, columns: Sequence[str] | None) -> None:
        dialect = postgresql.psycopg2.dialect()
        compiled = stmt.compile(dialect=dialect, column_keys=columns)
        order: list[str] = []

        def literal(bind: Any, value: Any) -> str:
            return "NULL" if value is None else bind.type.literal_processor(dialect)(value)

        def inline(m: re.Match) -> str:  # a constant IN list
            bind = compiled.binds[m.group(1)]
            # an expanding bind the statement itself holds: its value is the list, not None
            return ", ".join(literal(bind, v) for v in cast(Sequence[Any], bind.value))

        def number(m: re.Match) -> str:
            bind = compiled.binds[m.group(1)]
            if not bind.required:  # a constant of the statement: the planner sees it
                return literal(bind, bind.value)
            if bind.key not in order:
                order.append(bind.key)
            return f"${order.index(bind.key) + 1}"

        body = _PARAM.sub(number, _EXPANDING.sub(inline, compiled.string))
        if "%" in body:
            raise ValueError(f"{name}: a literal % cannot be prepared")
        types = [compiled.binds[n].type for n in order]
        self.prepare = (f"PREPARE {name} ({', '.join(t.compile(dialect=dialect) for t in types)}"
                        f") AS {body}")
        self.call = f"EXECUTE {name}({', '.join(':' + n for n in order)})"
        self.binds = {n: t for n, t in zip(order, types)}
        self.name = name


# an INSERT names the columns its parameters fill (they decide the statement's shape)
Entry = Union[Statement, "tuple[Statement, Sequence[str]]"]


class Statements:
    """A named set of Core statements; `run(conn, key, params)` executes one."""

    def __init__(self, prefix: str, statements: Mapping[str, Entry]) -> None:
        self.core: dict[str, Statement] = {}
        self.columns: dict[str, Sequence[str] | None] = {}
        for key, entry in statements.items():
            stmt, cols = entry if isinstance(entry, tuple) else (entry, None)
            self.core[key], self.columns[key] = stmt, cols
        self.prefix = prefix
        self._plans: dict[str, _Plan] = {}
        self._calls: dict[tuple[str, ...], TextClause] = {}  # EXECUTE text per statement sequence
        self._names: dict[str, list[str]] = {}
        self.enabled = os.environ.get("RENAS_DB_PREPARE", "1") != "0"

    def _own(self, conn: Connection, key: str, params: dict[str, Any]) -> dict[str, Any]:
        """The parameters statement `key` takes. Passing it the others would be wrong, not
        only wasteful: SQLAlchemy reads a key that names a column of an UPDATE's or an
        INSERT's table as a value to write there."""
        names = self._names.get(key)
        if names is None:
            compiled = self.core[key].compile(dialect=conn.dialect,
                                              column_keys=self.columns[key])
            names = self._names[key] = [n for n, b in compiled.binds.items() if b.required]
        return {n: params[n] for n in names if n in params}

    def _plan(self, key: str) -> _Plan:
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = _Plan(f"{self.prefix}_{key}", self.core[key],
                                                self.columns[key])
        return plan

    def run(self, conn: Connection, key: str, params: Mapping[str, Any] | None = None, *,
            before: Sequence[str] = ()) -> CursorResult:
        """Execute statement `key`. The statements named in `before` run first, in the same
        round trip where statements are prepared (else one by one); their results are
        discarded, so they must be ones whose outcome needs no checking."""
        params = dict(params or {})
        if conn.dialect.name != "postgresql" or not self.enabled:
            for k in before:
                conn.execute(self.core[k], self._own(conn, k, params))
            return conn.execute(self.core[key], self._own(conn, key, params))
        keys = (*before, key)
        info = conn.connection.info  # lives as long as this server connection
        prepared = info.setdefault("renas_prepared", set())
        for k in keys:
            plan = self._plan(k)
            if plan.name not in prepared:
                # PREPARE outlives a rollback; the body has no % the driver could misread
                conn.exec_driver_sql(plan.prepare)
                prepared.add(plan.name)
        calls = self._calls.get(keys)
        if calls is None:
            plans = [self._plan(k) for k in keys]
            binds: dict[str, Any] = {}
            for plan in plans:
                binds.update(plan.binds)
            # each statement of the string takes its own snapshot: a later one sees what
            # committed while an earlier one waited (for a lock)
            calls = self._calls[keys] = text("; ".join(p.call for p in plans)).bindparams(
                *[bindparam(n, type_=t) for n, t in binds.items()])
        return conn.execute(calls, params)
