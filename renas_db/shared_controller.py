"""The search's controller as every worker shares it: the newest snapshot, cached in
memory between jobs, and the optimistic fold of finished episodes into the next one.

Snapshot versions are the try-lock: writing version v+1 succeeds for exactly one
worker, and it consumes exactly the episodes it folded (renas_db/db/snapshots.py).

A worker folds in a thread of its own while its next job runs (renas_db/worker.py), so
the cached trainers are copy-on-write: a fold updates a deep copy and publishes it only
once its snapshot is saved, and a mutator never sees a trainer change under it."""
from __future__ import annotations

import copy
import logging
import threading

from renas_db import space
from renas_db.config import SearchConfig
from renas_db.controller import ControllerTrainer, Episode, controller_config
from renas_db.db import snapshots
from renas_db.db.session import Store
from renas_db.jobs import ClaimedJob
from renas_db.mutators import Mutator, mutator_spec
from renas_db.retry import retrying

log = logging.getLogger("renas_db.worker")
FOLD_TRIES = 20  # a worker that keeps losing the race gives up; the winners fold its episodes


class SharedController:
    def __init__(self, store: Store) -> None:
        self.store = store
        # search id -> the newest trainer this worker has; never changed once published
        self._trainers: dict[int, ControllerTrainer] = {}
        self._lock = threading.Lock()

    def trainer(self, job: ClaimedJob) -> ControllerTrainer:
        """The newest snapshot of the job's search, read again only when another worker
        has written a newer version."""
        return self._trainer(job.search_id, job.config)

    def _trainer(self, search_id: int, config: SearchConfig) -> ControllerTrainer:
        with self._lock:
            cached = self._trainers.get(search_id)
        latest = retrying("snapshot version", snapshots.latest_version, self.store,
                          search_id)
        if cached is None or cached.version != latest:
            _, state, _ = retrying("snapshot", snapshots.latest_snapshot, self.store,
                                   search_id)
            cached = ControllerTrainer.from_bytes(state, controller_config(config))
            self._publish(search_id, cached)
        return cached

    def _publish(self, search_id: int, trainer: ControllerTrainer) -> None:
        """Keep `trainer` unless a newer one is kept already (a fold in the other thread
        may have published its update while this one was being read)."""
        with self._lock:
            kept = self._trainers.get(search_id)
            if kept is None or kept.version <= trainer.version:
                self._trainers[search_id] = trainer

    def mutator(self, job: ClaimedJob) -> Mutator:
        """The search's mutator, with the newest snapshot where it needs the controller."""
        spec = mutator_spec(job.config.mutator)
        return spec.factory(self.trainer(job) if spec.trains_controller else None)

    def trains(self, job: ClaimedJob) -> bool:
        return mutator_spec(job.config.mutator).trains_controller

    def fold(self, job: ClaimedJob) -> dict[str, float] | None:
        """Fold every unconsumed episode of the job's search into snapshot version+1.
        A worker that loses the race re-reads and tries again until nothing is left.
        Returns the update's statistics, or None if there was nothing to fold (or
        another worker folded it)."""
        return self.fold_search(job.search_id, job.config)

    def fold_search(self, search_id: int, config: SearchConfig) -> dict[str, float] | None:
        """`fold` for a search by id and config (`renas-db recover` folds the episodes
        a committer that died before its update left behind)."""
        if not mutator_spec(config.mutator).trains_controller:
            return None
        for _ in range(FOLD_TRIES):
            episodes = retrying("episodes", snapshots.unconsumed_episodes, self.store,
                                search_id)
            if not episodes:
                return None
            # a copy: the published trainer may be sampling in the worker's main thread
            trainer = copy.deepcopy(self._trainer(search_id, config))
            version = trainer.version
            # the reward as recorded when the child was made (its entropy bonus
            # is that of the decisions as they were sampled)
            stats = trainer.update([Episode(space.parse(e.parent_genotype),
                                            space.actions_from_json(e.actions),
                                            e.log_prob, e.fitness,
                                            parent_fitness=e.parent_fitness,
                                            reward=e.reward) for e in episodes])
            state = trainer.to_bytes()
            saved = retrying(
                "controller update", snapshots.save_update, self.store, search_id,
                version, state, [e.id for e in episodes],
                episodes_seen=trainer.episodes_seen, mean_reward=stats["mean_reward"],
                baseline=stats["baseline"], stats=stats)
            if saved:
                self._publish(search_id, trainer)
                log.info("controller v%d: %d episodes, mean reward %.3f", version + 1,
                         len(episodes), stats["mean_reward"])
                return stats
        return None


def fold_leftovers(store: Store, name: str) -> int:
    """Fold the unconsumed episodes of a search (its last committer died before its
    controller update). Returns how many were folded."""
    from renas_db.db.admin import get_search
    with store.transaction(write=False) as s:
        search = get_search(s, name)
        sid, config = search.id, SearchConfig.from_dict(search.config)
    stats = SharedController(store).fold_search(sid, config)
    return int(stats["episodes"]) if stats and "episodes" in stats else (1 if stats else 0)
