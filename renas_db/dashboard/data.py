"""The dashboard's read path: the database opened read-only (as `renas-db sql` opens it),
and every answer one or a few SQL statements that aggregate and downsample in the database.

Read-only by construction: SQLite is opened with mode=ro and query_only; a PostgreSQL
session starts with default_transaction_read_only=on (and a statement timeout), so a write
would be refused by the database itself. Nothing here writes."""
from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import time
from datetime import datetime
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, DisconnectionError
from sqlalchemy.pool import QueuePool

from renas_db.db.session import mask_url, resolve_url
from renas_db.errors import ConfigError, NotFoundError, RenasError

log = logging.getLogger("renas_db.dashboard")

#: at most this many points on a curve (and dots) per answer, whatever the history's size
MAX_POINTS = 1000
EVENTS_PAGE = 200
CONTROLLER_PAGE = 5000


class Unavailable(RenasError):
    """The database does not answer (gone, restarting, file moved away)."""


def stride_for(n: int, points: int = MAX_POINTS) -> int:
    """The smallest power of two that leaves at most `points` samples of `n` steps."""
    stride = 1
    while n > stride * points:
        stride *= 2
    return stride


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _time(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def _iso(value: Any) -> str | None:
    t = _time(value)
    return t.isoformat(sep=" ", timespec="seconds") if t else None


def _age(now: datetime | None, then: Any) -> float | None:
    t = _time(then)
    return round((now - t).total_seconds(), 1) if now and t else None


def _std(mean: float | None, mean_sq: float | None) -> float | None:
    """The population standard deviation as v_progress computes it."""
    if mean is None or mean_sq is None:
        return None
    return math.sqrt(max(mean_sq - mean * mean, 0.0))


class ReadOnlyDB:
    """One read-only engine for the dashboard's lifetime."""

    def __init__(self, url: str | None, *, timeout_s: float = 10.0) -> None:
        self.url = resolve_url(url)
        self.masked_url = mask_url(self.url)
        self.timeout_s = timeout_s
        try:
            parsed = make_url(self.url)
        except ArgumentError:
            raise ConfigError(f"not a database URL: {self.masked_url}") from None
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            path = parsed.database
            if not path or path == ":memory:":
                raise ConfigError("the dashboard needs a file database")
            self.path = path
            # pooled read-only connections (opening one is most of a small answer), each
            # dropped at checkout once the path names another file or none: a file moved
            # away is seen at once, as a connection per request would see it
            self.engine: Engine = create_engine("sqlite://", creator=self._sqlite_connect,
                                                poolclass=QueuePool, pool_size=4, max_overflow=4)
            event.listen(self.engine, "connect", self._opened)
            event.listen(self.engine, "checkout", self._same_file)
        elif self.dialect == "postgresql":
            if parsed.drivername == "postgresql":
                parsed = parsed.set(drivername="postgresql+psycopg2")
            # jit off: the answers are small, and a correlated count's high estimate made
            # PostgreSQL spend 130 ms compiling for a 2 ms query
            options = (f"-c default_transaction_read_only=on -c jit=off "
                       f"-c statement_timeout={int(timeout_s * 1000)}")
            self.engine = create_engine(
                parsed, pool_size=4, max_overflow=4, pool_pre_ping=True,
                connect_args={"connect_timeout": 3, "options": options,
                              "application_name": "renas-db dashboard"})
        else:
            raise ConfigError(f"unsupported database {self.dialect!r} in {self.masked_url}")
        self.pg = self.dialect == "postgresql"
        from renas_db.dashboard.history import HistoryCache
        self.history = HistoryCache()

    def _sqlite_connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False,
                               timeout=self.timeout_s)
        conn.execute("PRAGMA query_only = ON")
        conn.create_function("sqrt", 1, lambda x: None if x is None or x < 0 else math.sqrt(x),
                             deterministic=True)
        return conn

    def _file_id(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def _opened(self, dbapi_conn: Any, record: Any) -> None:
        record.info["file"] = self._file_id()

    def _same_file(self, dbapi_conn: Any, record: Any, proxy: Any) -> None:
        """Pool checkout: a connection to a file the path no longer names is dropped."""
        here = self._file_id()
        if here is None or record.info.get("file") != here:
            raise DisconnectionError("the database file was moved or replaced")

    def dispose(self) -> None:
        self.engine.dispose()

    # -- plumbing ---------------------------------------------------------------------------

    def query(self, *statements: tuple[str, dict[str, Any]], tuples: bool = False
              ) -> list[list[Any]]:
        """Run the statements in one read-only transaction (one snapshot); rows as dicts
        (or tuples)."""
        try:
            with self.engine.connect() as conn:
                if not self.pg:   # this answer's time limit
                    deadline = time.monotonic() + self.timeout_s
                    conn.connection.dbapi_connection.set_progress_handler(  # type: ignore
                        lambda: int(time.monotonic() > deadline), 10_000)
                out = []
                for sql, params in statements:
                    result = conn.execute(text(sql), params)
                    rows = result.all()   # fetchall: per-row fetches cost 3 us a row
                    out.append([tuple(r) for r in rows] if tuples
                               else [dict(r._mapping) for r in rows])
                conn.rollback()
                return out
        except DBAPIError as exc:
            msg = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
            if isinstance(exc.orig, sqlite3.OperationalError) and "interrupted" in msg:
                raise RenasError(f"query stopped after {self.timeout_s:g} s") from None
            if "statement timeout" in msg or "canceling statement" in msg:
                raise RenasError(f"query stopped after {self.timeout_s:g} s") from None
            raise Unavailable("database unreachable") from None

    @property
    def _now(self) -> str:
        return ("timezone('UTC', clock_timestamp())" if self.pg
                else "strftime('%Y-%m-%d %H:%M:%f', 'now')")

    def _search(self, name: str) -> dict[str, Any]:
        rows = self.query(("SELECT id, name, status, config, seed, checkpoint_root, study, "
                           "created_at, finished_at FROM searches WHERE name = :n",
                           {"n": name}))[0]
        if not rows:
            raise NotFoundError(f"no search named {name!r}")
        row = rows[0]
        row["config"] = _json(row["config"]) or {}
        return row

    # -- answers ----------------------------------------------------------------------------

    def ping(self) -> None:
        self.query(("SELECT count(*) AS n FROM searches", {}))

    def warm(self) -> None:
        """Sweep the histories of the newest searches now (server start, in a thread), so
        that the first progress answer a page asks for finds them swept."""
        from renas_db.dashboard.history import MAX_SEARCHES
        try:
            ids = [r["id"] for r in self.query(
                ("SELECT id FROM searches ORDER BY id DESC LIMIT :n", {"n": MAX_SEARCHES}))[0]]
            for sid in reversed(ids):   # the newest swept last: the least likely dropped
                self.history.current(self, sid)
        except RenasError as exc:  # the pages will say so, and the answers sweep later
            log.warning("dashboard: history not swept at start: %s", exc)

    def searches(self) -> list[dict[str, Any]]:
        rows = self.query((f"""
SELECT s.id, s.name, s.status, s.config, s.study, s.created_at,
  (SELECT count(*) FROM jobs j WHERE j.search_id = s.id AND j.kind = 'step'
     AND j.state = 'done') AS steps_done,
  (SELECT count(*) FROM jobs j WHERE j.search_id = s.id AND j.kind = 'init'
     AND j.state = 'done') AS init_done,
  (SELECT max(i.fitness) FROM individuals i WHERE i.search_id = s.id AND i.alive = :t
     AND i.origin <> 'retrain') AS best_fitness,
  (SELECT avg(i.fitness) FROM individuals i WHERE i.search_id = s.id AND i.alive = :t
     AND i.origin <> 'retrain') AS mean_fitness,
  (SELECT count(DISTINCT j.worker_id) FROM jobs j WHERE j.search_id = s.id
     AND j.state = 'running') AS live_workers,
  c.models_trained, c.examples_per_model, c.cost_examples, {self._now} AS now
FROM searches s JOIN v_cost c ON c.search_id = s.id ORDER BY s.id""", {"t": True}))[0]
        out = []
        for r in rows:
            cfg = _json(r.pop("config")) or {}
            r.pop("now")
            r.update(steps=cfg.get("steps"), population=cfg.get("population"),
                     mutator=cfg.get("mutator"), created_at=_iso(r["created_at"]),
                     examples_per_model=float(r["examples_per_model"])
                     if r["examples_per_model"] is not None else None,
                     cost_examples=int(r["cost_examples"] or 0))
            out.append(r)
        return out

    def search(self, name: str) -> dict[str, Any]:
        s = self._search(name)
        sid = s["id"]
        jobs, cost = self.query(
            ("SELECT kind, state, count(*) AS n FROM jobs WHERE search_id = :sid "
             "GROUP BY kind, state", {"sid": sid}),
            ("SELECT models_trained, examples_per_model, cost_examples, train_seconds "
             "FROM v_cost WHERE search_id = :sid", {"sid": sid}))
        counts: dict[str, dict[str, int]] = {}
        for r in jobs:
            counts.setdefault(r["kind"], {})[r["state"]] = int(r["n"])
        cfg = s["config"]
        c = cost[0] if cost else {}
        return {"name": s["name"], "status": s["status"], "seed": s["seed"],
                "study": s["study"], "created_at": _iso(s["created_at"]),
                "finished_at": _iso(s["finished_at"]), "config": cfg,
                "population": cfg.get("population"), "steps": cfg.get("steps"),
                "steps_done": counts.get("step", {}).get("done", 0),
                "init_done": counts.get("init", {}).get("done", 0), "jobs": counts,
                "models_trained": c.get("models_trained"),
                "cost_examples": int(c.get("cost_examples") or 0),
                "train_seconds": float(c.get("train_seconds") or 0.0)}

    def new_history(self, search_id: int, after_id: int, limit: int | None
                    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], Any]:
        """The search's individuals past `after_id` in id order (with their parent's
        fitness), at most `limit` of them, the victims of those children, and the
        database's clock: what HistoryCache sweeps. Both read a primary-key range and
        indexes. On SQLite `+search_id` keeps the planner off the search_id index (which
        would scan the whole search); PostgreSQL needs the plain column, whose statistics
        tell it how many rows the range holds (with `+` it guessed 0.5% of them and, for a
        first chunk of a 100k history, sorted the whole search: 180 ms against 20). A
        child's victims are written in its transaction, so the second statement sees
        those of every child the first one saw."""
        lim = "" if limit is None else f" LIMIT {int(limit)}"
        rows, now = self.query(
            ("SELECT i.id, i.origin, i.fitness, i.created_at, p.fitness AS parent_fitness "
             "FROM individuals i LEFT JOIN individuals p ON p.id = i.parent_id "
             f"WHERE {'' if self.pg else '+'}i.search_id = :sid "
             "AND i.origin IN ('init', 'child') AND i.id > :after "
             "ORDER BY i.id" + lim, {"sid": search_id, "after": after_id}),
            (f"SELECT {self._now} AS now", {}), tuples=True)
        upto = rows[-1][0] if limit is not None and len(rows) == limit else None
        victims, = self.query(
            ("SELECT k.id AS killer, v.id FROM individuals k "
             "JOIN individuals v ON v.removed_by_job_id = k.job_id "
             "WHERE +k.search_id = :sid AND k.origin = 'child' AND k.id > :after"
             + ("" if upto is None else " AND k.id <= :upto"),
             {"sid": search_id, "after": after_id, "upto": upto}), tuples=True)
        return rows, victims, now[0][0]

    def progress(self, name: str, *, after: int = 0, stride: int | None = None,
                 points: int = MAX_POINTS) -> dict[str, Any]:
        """The population's best / mean / std after each sampled step (v_progress), and
        the sampled children as dots with their gain over their parent.

        Samples are the steps that are multiples of `stride` (a power of two, at most
        `points` samples in all) and the latest step (`tail`, superseded by the next
        answer). With `after`, only samples past that step: the page's cursor. A stride
        smaller than the history needs is raised, and the answer then starts from 0
        (`reset`)."""
        from renas_db.dashboard.history import BUDGET_S, dots, samples
        s = self._search(name)
        sweep = self.history.current(self, s["id"], budget=BUDGET_S)
        n = sweep.steps
        need = stride_for(n, points)
        reset = stride is None or stride < need
        if reset:
            stride, after = need, 0
        assert stride is not None
        steps = list(range((after // stride + 1) * stride, n + 1, stride))
        tail = samples(sweep, [n])[0] if n > after and n % stride else None
        return {"search": name, "steps_done": n, "steps": s["config"].get("steps"),
                "stride": stride, "after": after, "reset": reset,
                "complete": sweep.complete,
                "samples": samples(sweep, steps), "tail": tail,
                "children": dots(sweep, steps)}

    def population(self, name: str) -> list[dict[str, Any]]:
        """v_population: the alive members, best first, with their age in steps (the
        children after each). From the swept history when it is there; else counted in
        SQL (a primary-key range from each member on), so that a fresh dashboard, still
        sweeping, answers it at once."""
        sid = self._search(name)["id"]
        sweep = self.history.if_swept(self, sid)
        age = ("NULL" if sweep is not None else
               "(SELECT count(*) FROM individuals c WHERE +c.search_id = :sid "
               "AND c.origin = 'child' AND c.id > i.id)")
        rows = self.query((f"SELECT i.id, i.origin, i.fitness, i.val_loss, i.parent_id, "
                           f"i.genotype, i.n_params, i.mult_adds, i.created_at, "
                           f"i.quarantined, {age} AS age_steps FROM individuals i "
                           f"WHERE i.search_id = :sid AND i.alive = :t AND i.origin IN "
                           f"('init', 'child') ORDER BY i.fitness DESC, i.id",
                           {"sid": sid, "t": True}))[0]
        for r in rows:
            r["age_steps"] = sweep.age(r["id"]) if sweep is not None else int(r["age_steps"])
            r["created_at"] = _iso(r["created_at"])
            r["quarantined"] = bool(r["quarantined"])
        return rows

    def controller(self, name: str, *, after: int = 0) -> dict[str, Any]:
        """Controller versions past `after` (at most CONTROLLER_PAGE): reward, baseline,
        the policy entropy (null for versions made before it was recorded), the PPO ratio
        statistics of stale episodes, and the mean mutation size of the
        children each version proposed: the nodes (input, op pairs) each changed in its
        parent's cell (space.diff), not the actions, which are always B."""
        s = self._search(name)
        snaps, children = self.query(
            ("SELECT version, episodes_seen, mean_reward, baseline, stats, created_at "
             "FROM controller_snapshots WHERE search_id = :sid AND version > :after "
             "ORDER BY version LIMIT :lim",
             {"sid": s["id"], "after": after, "lim": CONTROLLER_PAGE}),
            ("SELECT i.controller_version, i.genotype, p.genotype FROM individuals i "
             "JOIN individuals p ON p.id = i.parent_id WHERE i.search_id = :sid "
             "AND i.origin = 'child' AND i.controller_version > :after "
             "AND i.controller_version <= :after + :lim",
             {"sid": s["id"], "after": after, "lim": CONTROLLER_PAGE}), tuples=True)
        changed: dict[int, list[int]] = {}
        for version, child, parent in children:
            changed.setdefault(version, []).append(nodes_changed(parent, child))
        versions = []
        for row in snaps:
            r = dict(zip(("version", "episodes_seen", "mean_reward", "baseline", "stats",
                          "created_at"), row))
            stats = _json(r["stats"]) or {}
            versions.append({"version": r["version"], "episodes_seen": r["episodes_seen"],
                             "mean_reward": r["mean_reward"], "baseline": r["baseline"],
                             "ratio_mean": stats.get("ratio_mean"),
                             "ratio_min": stats.get("ratio_min"),
                             "ratio_max": stats.get("ratio_max"),
                             "ratio_clipped": stats.get("ratio_clipped"),
                             "loss": stats.get("loss"), "stepped": stats.get("stepped"),
                             "entropy": stats.get("entropy"),
                             "created_at": _iso(r["created_at"])})
        return {"search": name, "mutator": s["config"].get("mutator"), "after": after,
                "versions": versions,
                "mutation_size": [{"version": v, "mutation_size": sum(n) / len(n),
                                   "children": len(n)} for v, n in sorted(changed.items())]}

    def workers(self, name: str, *, after_event: int = 0) -> dict[str, Any]:
        """Running leases with their heartbeat age against the lease, the workers that
        ran this search's jobs, dead jobs with their error, and events past the cursor."""
        s = self._search(name)
        sid = s["id"]
        running, workers, dead, events, now = self.query(
            ("SELECT j.id AS job, j.kind, j.step_index, j.attempt, j.worker_id, j.heartbeat_at,"
             " j.claimed_at, j.progress, w.host, w.pid, w.device FROM jobs j "
             "LEFT JOIN workers w ON w.id = j.worker_id "
             "WHERE j.search_id = :sid AND j.state = 'running' ORDER BY j.id", {"sid": sid}),
            ("SELECT v.id, v.host, v.pid, v.device, v.state, v.started_at, v.heartbeat_at, "
             "v.jobs_done, v.failures FROM v_workers v WHERE v.id IN "
             "(SELECT DISTINCT worker_id FROM jobs WHERE search_id = :sid "
             "AND worker_id IS NOT NULL) ORDER BY v.id", {"sid": sid}),
            ("SELECT id AS job, kind, step_index, attempt, max_attempts, error, finished_at "
             "FROM jobs WHERE search_id = :sid AND state = 'dead' ORDER BY id DESC LIMIT 200",
             {"sid": sid}),
            ("SELECT id, kind, message, worker_id, job_id, created_at FROM events "
             "WHERE search_id = :sid AND id > :after ORDER BY id DESC LIMIT :lim",
             {"sid": sid, "after": after_event, "lim": EVENTS_PAGE}),
            (f"SELECT {self._now} AS now", {}))
        t = _time(now[0]["now"])
        lease = float(s["config"].get("lease_seconds") or 120.0)
        for r in running:
            r["heartbeat_age_s"] = _age(t, r.pop("heartbeat_at"))
            r["running_s"] = _age(t, r.pop("claimed_at"))
            r["lease_s"] = lease
        for r in workers:
            r["heartbeat_age_s"] = _age(t, r.pop("heartbeat_at"))
            r["started_at"] = _iso(r["started_at"])
        for r in dead:
            r["finished_at"] = _iso(r["finished_at"])
        for r in events:
            r["created_at"] = _iso(r["created_at"])
        events.reverse()
        return {"search": name, "lease_s": lease, "running": running, "workers": workers,
                "dead": dead, "events": events}

    def reports(self, name: str) -> dict[str, Any]:
        """Retrained networks ranked by validation accuracy, and the search's study."""
        s = self._search(name)
        ranked, study = self.query(
            ("SELECT i.id, i.parent_id AS source_id, p.fitness AS search_fitness, "
             "i.fitness AS val_accuracy, i.test_accuracy, i.n_params, i.mult_adds, "
             "i.train_seconds, i.genotype FROM individuals i "
             "LEFT JOIN individuals p ON p.id = i.parent_id "
             "WHERE i.search_id = :sid AND i.origin = 'retrain' "
             "ORDER BY i.fitness DESC, i.id", {"sid": s["id"]}),
            ("SELECT s.name, s.status, c.models_trained, "
             "(SELECT max(i.fitness) FROM individuals i WHERE i.search_id = s.id "
             " AND i.alive = :t AND i.origin <> 'retrain') AS best_fitness "
             "FROM searches s JOIN v_cost c ON c.search_id = s.id "
             "WHERE s.study = :study ORDER BY s.id",
             {"study": s["study"] or "", "t": True}))
        return {"search": name, "retrain": ranked,
                "study": {"name": s["study"], "searches": study} if s["study"] else None}

    def individual(self, individual_id: int) -> dict[str, Any]:
        """One individual, its lineage back to the initial population (with the mutation
        and gain on each edge), and whether its checkpoint file is there."""
        rows, chain = self.query(
            ("SELECT i.id, i.search_id, s.name AS search, s.checkpoint_root, i.origin, "
             "i.parent_id, i.genotype, i.fitness, i.val_loss, i.test_accuracy, i.alive, "
             "i.quarantined, i.n_params, i.mult_adds, i.mutation, i.controller_version, "
             "i.examples_seen, i.train_seconds, i.checkpoint_uri, i.checkpoint_sha256, "
             "i.created_at, i.died_at FROM individuals i JOIN searches s ON s.id = i.search_id "
             "WHERE i.id = :id", {"id": individual_id}),
            ("""
WITH RECURSIVE up(id, depth) AS (
  SELECT id, 0 FROM individuals WHERE id = :id
  UNION ALL
  SELECT i.parent_id, up.depth + 1 FROM up JOIN individuals i ON i.id = up.id
  WHERE i.parent_id IS NOT NULL AND up.depth < 100000)
SELECT i.id, i.origin, i.fitness, i.parent_id, i.mutation, i.genotype, i.alive,
       i.fitness - p.fitness AS gain, up.depth
FROM up JOIN individuals i ON i.id = up.id LEFT JOIN individuals p ON p.id = i.parent_id
ORDER BY up.depth""", {"id": individual_id}))
        if not rows:
            raise NotFoundError(f"no individual with id {individual_id}")
        me = rows[0]
        uri = me.pop("checkpoint_uri")
        root = me.pop("checkpoint_root")
        me["checkpoint"] = _checkpoint_state(root, uri, bool(me["alive"]))
        me.pop("checkpoint_sha256")
        me["mutation"] = _json(me["mutation"])
        me["alive"] = bool(me["alive"])
        me["quarantined"] = bool(me["quarantined"])
        me["created_at"] = _iso(me["created_at"])
        me["died_at"] = _iso(me["died_at"])
        for r in chain:
            r["mutation"] = _json(r["mutation"])
            r["alive"] = bool(r["alive"])
        me["lineage"] = chain
        return me


def nodes_changed(parent: str, child: str) -> int:
    """space.diff's count on the genotypes' text (stored canonical, as Genotype.to_text
    writes it), without parsing: the pairs `IN OP` that differ."""
    def pairs(text: str) -> list[str]:
        return [" ".join(h.split()) for block in text.split("|") for h in block.split("+")]
    a, b = pairs(parent), pairs(child)
    return sum(x != y for x, y in zip(a, b)) + abs(len(a) - len(b))


def _checkpoint_state(root: str | None, uri: str | None, alive: bool) -> str:
    """'present', 'missing' (alive, so it should be there), 'deleted' (dead: collected)
    or 'none' (never written)."""
    if not uri:
        return "none"
    from renas_db.checkpoints import open_store
    try:  # a folder or an object store (a HeadObject), as the workers see it
        there = open_store(root or ".").exists(uri)
    except (OSError, RenasError):
        there = False
    if there:
        return "present"
    return "missing" if alive else "deleted"
