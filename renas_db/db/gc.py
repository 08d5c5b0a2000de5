"""Which checkpoints a search still needs, and which it may delete."""
from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from renas_db.db.models import Individual, Job
from renas_db.db.session import Store
from renas_db.db.statements import HOT
from renas_db.jobs import PENDING_STATES, JobKind


def _after_claims_in_flight(s: Session, search_id: int) -> None:
    """Wait for the claims on the search in flight now to commit (PostgreSQL: the shared
    form of the claims' advisory lock, released at the end of this short transaction).

    Without it a claim can draw a parent P while another worker's commit picks P as its
    victim (victims chosen at commit do not take the claims' lock): that commit's
    collector, reading before the claim commits, sees no job needing P and deletes P's
    checkpoint under the step just handed out. Every statement after the wait sees such a
    claim's job; a claim that starts later sees P dead and cannot draw it. SQLite needs
    none: its claims run in the one write transaction at a time, and read what the
    commit before them wrote."""
    conn = s.connection()
    if conn.dialect.name == "postgresql":
        HOT.run(conn, "lock_shared", {"sid": search_id})


def collectable_checkpoints(store: Store, search_id: int,
                            candidates: Sequence[int]) -> list[tuple[int, str]]:
    """Of the given individuals, the dead ones whose checkpoint no queued or running job
    still needs as its parent."""
    if not candidates:
        return []
    with store.transaction(write=False) as s:
        _after_claims_in_flight(s, search_id)
        needed = select(Job.parent_id).where(Job.search_id == search_id,
                                             Job.state.in_(PENDING_STATES),
                                             Job.parent_id.is_not(None))
        rows = s.execute(select(Individual.id, Individual.checkpoint_uri).where(
            Individual.id.in_(list(candidates)), Individual.alive.is_(False),
            Individual.checkpoint_uri.is_not(None), Individual.id.not_in(needed))).all()
        return [(r[0], r[1]) for r in rows]


def live_checkpoints(store: Store, search_id: int) -> set[str]:
    """Every checkpoint the search keeps: alive individuals, retrained networks and the
    parents of pending jobs."""
    with store.transaction(write=False) as s:
        _after_claims_in_flight(s, search_id)
        # three bounded lookups (alive index, retrain jobs, pending jobs), not one OR
        # that would scan the whole history
        alive = select(Individual.checkpoint_uri).where(
            Individual.search_id == search_id, Individual.alive.is_(True))
        retrained = select(Individual.checkpoint_uri).join(Job, Job.id == Individual.job_id) \
            .where(Job.search_id == search_id, Job.kind == JobKind.RETRAIN)
        parents = select(Individual.checkpoint_uri).join(Job, Job.parent_id == Individual.id) \
            .where(Job.search_id == search_id, Job.state.in_(PENDING_STATES))
        uris: set[str] = set()
        for q in (alive, retrained, parents):
            uris.update(u for u in s.scalars(q) if u)
        return uris


def mark_collected(store: Store, ids: Sequence[int]) -> None:
    with store.transaction() as s:
        s.execute(update(Individual).where(Individual.id.in_(list(ids)),
                                           Individual.alive.is_(False))
                  .values(checkpoint_uri=None, checkpoint_sha256=None))


def recent_checkpoints(store: Store, search_id: int, limit: int = 5) -> list[str]:
    """The checkpoint URIs of the search's newest alive, unquarantined individuals: a
    host that sees none of them does not see the search's checkpoint folder."""
    with store.transaction(write=False) as s:
        return list(s.scalars(select(Individual.checkpoint_uri).where(
            Individual.search_id == search_id, Individual.alive.is_(True),
            Individual.quarantined.is_(False), Individual.checkpoint_uri.is_not(None))
            .order_by(Individual.id.desc()).limit(limit)))
