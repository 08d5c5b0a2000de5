"""Deleting checkpoints nobody needs any more: a victim's once no pending job uses it as
its parent, a lost lease's, and (every few commits) files no row references."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from renas_db.checkpoints import CheckpointStorage, store_for
from renas_db.db import gc
from renas_db.db.session import Store
from renas_db.jobs import ClaimedJob
from renas_db.retry import retrying

log = logging.getLogger("renas_db.worker")
SCAN_EVERY = 10  # scan for orphaned checkpoint files every this many commits


class CheckpointCollector:
    def __init__(self, store: Store, checkpoint_root: str | None) -> None:
        self.store = store
        self.checkpoint_root = checkpoint_root  # this host's override of the search's root
        self.commits = 0

    def checkpoints(self, job: ClaimedJob) -> CheckpointStorage:
        return store_for(job, self.checkpoint_root)

    def discard(self, job: ClaimedJob, uri: str | None) -> None:
        """The checkpoint of a result that will never be committed (its lease was lost)."""
        if uri:
            _tolerant(f"deleting {uri}", self.checkpoints(job).delete, uri)

    def after_commit(self, job: ClaimedJob) -> None:
        """Delete what the commit made collectable: the victim's checkpoint and the
        parent's, if dead and no pending job needs it. The commit is durable first."""
        self.commits += 1
        files = self.checkpoints(job)
        candidates = [i for i in (job.victim_id, job.parent.id if job.parent else None) if i]
        gone = retrying("gc", gc.collectable_checkpoints, self.store, job.search_id,
                        candidates)
        # A file that cannot be deleted (permissions, an I/O error of the store) keeps
        # its URI and is left to a later orphan scan: the commit stands, the worker goes on.
        deleted = [i for i, uri in gone if _tolerant(f"deleting {uri}", files.delete, uri)]
        if deleted:
            retrying("gc", gc.mark_collected, self.store, deleted)
        if self.commits % SCAN_EVERY == 0:
            keep = retrying("gc", gc.live_checkpoints, self.store, job.search_id)
            # every key of a search starts with its name (jobs.checkpoint_uri)
            _tolerant(f"scanning {job.search_name}", files.collect, job.search_name, keep,
                      grace_seconds=2 * job.config.lease_seconds)


def _tolerant(what: str, fn: Callable[..., object], *args: Any, **kwargs: Any) -> bool:
    """fn(...), an OSError logged as a warning instead of raised. True if it ran."""
    try:
        fn(*args, **kwargs)
        return True
    except OSError as exc:
        log.warning("checkpoint GC: %s failed, left for later: %s", what, exc)
        return False
