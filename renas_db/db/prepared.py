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
from typing import Any, Mapping, Sequence, Union

from sqlalchemy import bindparam, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, CursorResult
from sqlalchemy.sql import ClauseElement

_PARAM = re.compile(r"%\((\w+)\)s")
_EXPANDING = re.compile(r"__\[POSTCOMPILE_(\w+)\]")


class _Plan:
    def __init__(self, name: str, stmt: ClauseElement, columns: Sequence[str] | None) -> None:
        dialect = postgresql.psycopg2.dialect()
        compiled = stmt.compile(dialect=dialect, column_keys=columns)
        order: list[str] = []

        def literal(bind: Any, value: Any) -> str:
            return "NULL" if value is None else bind.type.literal_processor(dialect)(value)

        def inline(m: re.Match) -> str:  # a constant IN list
            bind = compiled.binds[m.group(1)]
            return ", ".join(literal(bind, v) for v in bind.value)

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
        self.execute = _text(self.call, self.binds)
        self.name = name


def _text(sql: str, binds: Mapping[str, Any]) -> Any:
    return text(sql).bindparams(*[bindparam(n, type_=t) for n, t in binds.items()])


# an INSERT names the columns its parameters fill (they decide the statement's shape)
Entry = Union[ClauseElement, "tuple[ClauseElement, Sequence[str]]"]


class Statements:
    """A named set of Core statements; `run(conn, key, params)` executes one."""

    def __init__(self, prefix: str, statements: Mapping[str, Entry]) -> None:
        self.core: dict[str, ClauseElement] = {}
        self.columns: dict[str, Sequence[str] | None] = {}
        for key, entry in statements.items():
            stmt, cols = entry if isinstance(entry, tuple) else (entry, None)
            self.core[key], self.columns[key] = stmt, cols
        self.prefix = prefix
        self._plans: dict[str, _Plan] = {}
        self._pairs: dict[tuple[str, str], Any] = {}
        self.enabled = os.environ.get("RENAS_DB_PREPARE", "1") != "0"

    def __getitem__(self, key: str) -> ClauseElement:
        return self.core[key]

    def _plan(self, key: str) -> _Plan:
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = _Plan(f"{self.prefix}_{key}", self.core[key],
                                                self.columns[key])
        return plan

    def run(self, conn: Connection, key: str, params: Mapping[str, Any] | None = None, *,
            first: str | None = None) -> CursorResult:
        """Execute statement `key`; `first` (a key) runs before it in the same round trip
        where statements are prepared, and its result is discarded."""
        params = dict(params or {})
        if conn.dialect.name != "postgresql" or not self.enabled:
            if first is not None:
                conn.execute(self.core[first], params)
            return conn.execute(self.core[key], params)
        info = conn.connection.info  # lives as long as this server connection
        prepared = info.setdefault("renas_prepared", set())
        for k in (key,) if first is None else (first, key):
            plan = self._plan(k)
            if plan.name not in prepared:
                # PREPARE outlives a rollback; the body has no % the driver could misread
                conn.exec_driver_sql(plan.prepare)
                prepared.add(plan.name)
        if first is None:
            return conn.execute(self._plan(key).execute, params)
        pair = self._pairs.get((first, key))
        if pair is None:
            a, b = self._plan(first), self._plan(key)
            # each statement of the string takes its own snapshot: `key` sees what
            # committed while `first` waited (a lock)
            pair = self._pairs[(first, key)] = _text(f"{a.call}; {b.call}",
                                                     {**a.binds, **b.binds})
        return conn.execute(pair, params)
