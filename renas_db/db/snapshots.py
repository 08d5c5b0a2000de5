"""Controller snapshots and the episodes that train them.

An update is optimistic: the (search_id, version) primary key is the try-lock, and
episodes are consumed only WHERE consumed_in_version IS NULL, so each is folded once.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import func, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from renas_db.db.models import ControllerSnapshot, Episode, Individual, Job, db_now
from renas_db.db.session import Store
from renas_db.errors import ConflictError, IntegrityViolation, SnapshotError

KEEP_NEWEST = 3
KEEP_EVERY = 100  # snapshot weights are ~2 MB: keep the newest few and every 100th


@dataclass
class EpisodeRow:
    id: int
    job_id: int
    parent_genotype: str
    parent_fitness: float | None
    controller_version: int
    actions: list
    log_prob: float
    reward: float
    fitness: float


def insert_snapshot(s: Session, search_id: int, version: int, state: bytes, *,
                    episodes_seen: int, mean_reward: float | None = None,
                    baseline: float | None = None, stats: dict[str, Any] | None = None) -> None:
    s.add(ControllerSnapshot(search_id=search_id, version=version, state=state,
                             created_at=db_now(), episodes_seen=episodes_seen,
                             mean_reward=mean_reward, baseline=baseline, stats=stats))


def latest_snapshot(store: Store, search_id: int) -> tuple[int, bytes, int]:
    """(version, state, episodes_seen) of the newest snapshot."""
    with store.transaction(write=False) as s:
        row = s.execute(select(ControllerSnapshot.version, ControllerSnapshot.state,
                               ControllerSnapshot.episodes_seen)
                        .where(ControllerSnapshot.search_id == search_id)
                        .order_by(ControllerSnapshot.version.desc()).limit(1)).first()
    if row is None or row[1] is None:
        raise SnapshotError(f"search {search_id} has no controller snapshot")
    return row[0], row[1], row[2]


def latest_version(store: Store, search_id: int) -> int | None:
    with store.transaction(write=False) as s:
        return s.scalar(select(func.max(ControllerSnapshot.version))
                        .where(ControllerSnapshot.search_id == search_id))


def unconsumed_episodes(store: Store, search_id: int, limit: int = 1000) -> list[EpisodeRow]:
    """Episodes not folded into any snapshot yet, with their parent's genotype."""
    with store.transaction(write=False) as s:
        rows = s.execute(select(Episode, Individual.genotype, Individual.fitness)
                         .join(Job, Job.id == Episode.job_id)
                         .join(Individual, Individual.id == Job.parent_id)
                         .where(Episode.search_id == search_id,
                                Episode.consumed_in_version.is_(None))
                         .order_by(Episode.id).limit(limit)).all()
        return [EpisodeRow(e.id, e.job_id, g, f, e.controller_version, e.actions, e.log_prob,
                           e.reward, e.fitness) for e, g, f in rows]


def save_update(store: Store, search_id: int, base_version: int, state: bytes,
                episode_ids: Sequence[int], *, episodes_seen: int, mean_reward: float,
                baseline: float, stats: dict[str, Any]) -> bool:
    """Write snapshot base_version+1 consuming `episode_ids`. False if another worker
    got there first (its snapshot exists or it consumed one of the episodes)."""
    version = base_version + 1
    try:
        with store.transaction() as s:
            if s.get(ControllerSnapshot, (search_id, version)) is not None:
                return False
            insert_snapshot(s, search_id, version, state, episodes_seen=episodes_seen,
                            mean_reward=mean_reward, baseline=baseline, stats=stats)
            s.flush()
            # Session.execute is typed as Result; a bulk UPDATE's is a CursorResult
            n = cast(CursorResult[Any], s.execute(
                update(Episode).where(Episode.id.in_(list(episode_ids)),
                                      Episode.consumed_in_version.is_(None))
                .values(consumed_in_version=version)
                .execution_options(synchronize_session=False))).rowcount
            if n != len(episode_ids):
                raise _Lost()
            s.execute(update(ControllerSnapshot).where(
                ControllerSnapshot.search_id == search_id,
                ControllerSnapshot.version < version - KEEP_NEWEST + 1,
                ControllerSnapshot.version % KEEP_EVERY != 0,
                ControllerSnapshot.state.is_not(None)).values(state=None)
                .execution_options(synchronize_session=False))
        return True
    except (_Lost, ConflictError, IntegrityViolation):
        return False


class _Lost(Exception):
    """Rolls the update back: a concurrent update consumed an episode first."""
