"""The coordination protocol's data types and status values, with no SQL in sight.

The SQL layer (renas_db/db/) writes and reads these values; the worker, the executors,
the reports and the CLI speak them. Each status is a `str` enum, so it compares equal
to the text stored in the database and renders as that text.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from renas_db.errors import CheckpointError

if TYPE_CHECKING:
    from renas_db.config import SearchConfig


# a job's training progress callback: (examples done, examples total)
Progress = Callable[[int, int], None]


class _Text(str, Enum):
    def __str__(self) -> str:
        return str(self.value)


class SearchStatus(_Text):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    FINISHED = "finished"
    FAILED = "failed"


class JobState(_Text):
    QUEUED = "queued"
    RUNNING = "running"   # claimed: a worker holds its lease
    DONE = "done"
    DEAD = "dead"         # failed max_attempts times


class JobKind(_Text):
    INIT = "init"         # train a random cell of the initial population
    STEP = "step"         # one evolution step: mutate, inherit, fine-tune, evaluate
    RETRAIN = "retrain"   # train a cell from scratch with the full recipe


class Origin(_Text):
    """How an individual came to be (individuals.origin)."""
    INIT = "init"
    CHILD = "child"
    RETRAIN = "retrain"


# A search that still evolves; a job a worker may still finish.
ACTIVE_STATUSES = (SearchStatus.CREATED, SearchStatus.RUNNING)
PENDING_STATES = (JobState.QUEUED, JobState.RUNNING)
ORIGIN_OF_KIND = {JobKind.INIT: Origin.INIT, JobKind.STEP: Origin.CHILD,
                  JobKind.RETRAIN: Origin.RETRAIN}


@dataclass
class ParentInfo:
    """The individual a step mutates, as the claim read it."""
    id: int
    genotype: str
    fitness: float
    checkpoint_uri: str | None
    checkpoint_sha256: str | None


@dataclass
class ClaimedJob:
    """A job handed to one worker under one lease."""
    id: int
    search_id: int
    search_name: str
    kind: str
    step_index: int
    attempt: int
    lease_token: str
    config: SearchConfig
    checkpoint_root: str
    genotype: str | None = None
    parent: ParentInfo | None = None
    victim_id: int | None = None
    sample: list[int] | None = None
    params: dict[str, Any] | None = None   # the retrain recipe

    def checkpointed_parent(self) -> tuple[ParentInfo, str]:
        """The step's parent and its checkpoint URI. A parent whose checkpoint was
        collected is a CheckpointError, which the worker answers as it does a missing file
        (the parent quarantined, the step drawn again), not a failed attempt."""
        parent = self.parent
        if parent is None or not parent.checkpoint_uri:
            raise CheckpointError(f"job {self.id}: parent individual "
                                  f"{parent.id if parent else None} has no checkpoint")
        return parent, parent.checkpoint_uri


@dataclass
class JobResult:
    """What a finished job hands to the commit: the new individual and, for a step, the
    controller episode that produced it."""
    genotype: str
    arch_hash: str
    fitness: float
    val_loss: float | None
    checkpoint_uri: str | None
    checkpoint_sha256: str | None
    examples_seen: int
    train_seconds: float
    n_params: int | None = None
    mult_adds: int | None = None
    test_accuracy: float | None = None
    controller_version: int | None = None
    mutation: list[Any] | None = None
    # the episode (steps only)
    log_prob: float | None = None
    reward: float | None = None


def checkpoint_uri(job: ClaimedJob) -> str:
    """One checkpoint key per lease, not per job: a frozen worker that wakes up after
    losing its lease can never overwrite the checkpoint of the worker that took over."""
    return f"{job.search_name}/{job.id}-{job.lease_token[:8]}.pt"

