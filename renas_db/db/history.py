"""Reading a search's history for people: lineage, individuals, progress, exports."""
from __future__ import annotations

from typing import Any

from sqlalchemy import select, text

from renas_db.db.admin import get_search
from renas_db.db.models import ControllerSnapshot, Individual, Search
from renas_db.db.session import Store
from renas_db.errors import NotFoundError
from renas_db.jobs import Origin


def _row(i: Individual) -> dict[str, Any]:
    return {"id": i.id, "search_id": i.search_id, "origin": i.origin,
            "parent_id": i.parent_id, "genotype": i.genotype, "fitness": i.fitness,
            "val_loss": i.val_loss, "test_accuracy": i.test_accuracy, "alive": i.alive,
            "n_params": i.n_params, "mult_adds": i.mult_adds, "mutation": i.mutation,
            "controller_version": i.controller_version, "examples_seen": i.examples_seen,
            "created_at": i.created_at.isoformat(sep=" ", timespec="seconds")}


def individual(store: Store, individual_id: int) -> dict[str, Any]:
    with store.transaction(write=False) as s:
        i = s.get(Individual, individual_id)
        if i is None:
            raise NotFoundError(f"no individual with id {individual_id}")
        row = _row(i)
        row["search"] = s.scalar(select(Search.name).where(Search.id == i.search_id))
        return row


def lineage(store: Store, individual_id: int) -> list[dict[str, Any]]:
    """The individual and its ancestors back to the initial population, newest first,
    each with the mutation that made it and its fitness change."""
    chain: list[dict[str, Any]] = []
    with store.transaction(write=False) as s:
        current = s.get(Individual, individual_id)
        if current is None:
            raise NotFoundError(f"no individual with id {individual_id}")
        seen = set()
        while current is not None and current.id not in seen:
            seen.add(current.id)
            row = _row(current)
            parent = s.get(Individual, current.parent_id) if current.parent_id else None
            row["gain"] = current.fitness - parent.fitness if parent else None
            chain.append(row)
            current = parent
    return chain


def best_individual(store: Store, name: str) -> int:
    with store.transaction(write=False) as s:
        search = get_search(s, name)
        best = s.scalar(select(Individual.id).where(
            Individual.search_id == search.id, Individual.origin != Origin.RETRAIN)
            .order_by(Individual.alive.desc(), Individual.fitness.desc(), Individual.id)
            .limit(1))
        if best is None:
            raise NotFoundError(f"search {name!r} has no evaluated individuals yet")
        return best


def progress(store: Store, name: str) -> dict[str, list]:
    """The data of `plot`: v_progress, every child's fitness, the controller's reward."""
    with store.transaction(write=False) as s:
        search = get_search(s, name)
        rows = s.execute(text(
            "SELECT step, best_fitness, mean_fitness, std_fitness, child_fitness "
            "FROM v_progress WHERE search_id = :sid ORDER BY step"), {"sid": search.id}).all()
        ctrl = s.execute(select(ControllerSnapshot.version, ControllerSnapshot.mean_reward)
                         .where(ControllerSnapshot.search_id == search.id,
                                ControllerSnapshot.version > 0)
                         .order_by(ControllerSnapshot.version)).all()
        series: dict[str, Any] = {"step": [r[0] for r in rows], "best": [r[1] for r in rows],
                "mean": [r[2] for r in rows], "std": [r[3] for r in rows],
                "child": [r[4] for r in rows],
                "controller_version": [r[0] for r in ctrl],
                "controller_reward": [r[1] for r in ctrl],
                  "mutator": search.config.get("mutator")}
        return series


def export_document(store: Store, individual_id: int) -> dict[str, Any]:
    chain = lineage(store, individual_id)
    me = chain[0]
    with store.transaction(write=False) as s:
        search = s.get_one(Search, me["search_id"])
        config = search.config
    return {"format": "renas-db-export-1", "search": search.name, "individual": me["id"],
            "genotype": me["genotype"], "fitness": me["fitness"], "val_loss": me["val_loss"],
            "n_params": me["n_params"], "mult_adds": me["mult_adds"], "origin": me["origin"],
            "config": config,
            "lineage": {"depth": len(chain) - 1, "root_id": chain[-1]["id"],
                        "root_fitness": chain[-1]["fitness"],
                        "ancestors": [{"id": r["id"], "fitness": r["fitness"],
                                       "mutation": r["mutation"]} for r in chain[1:]]}}
