"""An executor with no training, for coordination tests and benchmarks: the fitness is a
deterministic function of the genotype, and a tiny checkpoint is written and read as a
real one would be."""
from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Mapping

from renas_db import space
from renas_db.checkpoints import CheckpointStorage, store_for
from renas_db.config import SearchConfig
from renas_db.controller import controller_config
from renas_db.data import load_dataset
from renas_db.datasets import data_dir_for
from renas_db.errors import TrainingStopped
from renas_db.jobs import ClaimedJob, JobKind, JobResult, Progress, checkpoint_uri
from renas_db.mutators import Mutator, mutation_rng


def dry_fitness(genotype: space.Genotype) -> float:
    """A fitness in [0.5, 0.95] that depends only on the genotype."""
    return 0.5 + hashlib.sha256(genotype.to_text().encode()).digest()[0] / 255 * 0.45


FAIL_FILE = "RENAS_DRY_RUN_FAIL_FILE"
HANG_FILE = "RENAS_DRY_RUN_HANG_FILE"
FAIL_GENOTYPE = "RENAS_DRY_RUN_FAIL_GENOTYPE"


def _injected_job_fault(genotype: space.Genotype) -> None:
    """An error of the job itself, which tests control from outside: training the
    genotype named by RENAS_DRY_RUN_FAIL_GENOTYPE raises (as a network that diverges or
    runs out of memory would)."""
    if os.environ.get(FAIL_GENOTYPE) == genotype.to_text():
        raise RuntimeError(f"injected fault: training {genotype.to_text()} raised")


def _injected_faults() -> None:
    """Faults tests control from outside a worker process: while the file named by
    RENAS_DRY_RUN_FAIL_FILE exists every job fails at its start (an outage); while the
    file named by RENAS_DRY_RUN_HANG_FILE exists a job hangs there, reporting no progress
    and deaf to the stop flag (a training call that never returns)."""
    fail, hang = os.environ.get(FAIL_FILE), os.environ.get(HANG_FILE)
    if fail and os.path.exists(fail):
        raise OSError(f"injected fault: {fail} exists")
    while hang and os.path.exists(hang):
        time.sleep(0.05)


class DryRunExecutor:
    def __init__(self, checkpoint_root: str | None, seconds: float = 0.0,
                 data_dirs: Mapping[str, str] | None = None) -> None:
        self.checkpoint_root = checkpoint_root
        self.seconds = seconds
        self.data_dirs = dict(data_dirs or {})

    def check(self, config: SearchConfig) -> None:
        """The same dataset check as a training worker's (the data is loaded, on the CPU);
        no device to probe."""
        load_dataset(config.dataset, data_dir_for(config.dataset, config.data_dir,
                                                  self.data_dirs))

    def checkpoints(self, job: ClaimedJob) -> CheckpointStorage:
        return store_for(job, self.checkpoint_root)

    def run(self, job: ClaimedJob, mutator: Mutator | None, progress: Progress | None,
            stop: threading.Event) -> JobResult:
        proposal = None
        if job.kind == JobKind.STEP:
            info, uri = job.checkpointed_parent()
            assert mutator is not None
            parent = space.parse(info.genotype)
            self.checkpoints(job).load(uri, info.checkpoint_sha256)
            proposal = mutator.propose(parent, mutation_rng(job.config.seed, job.id,
                                                            job.attempt))
            genotype = parent.apply(proposal.actions)
        else:
            assert job.genotype is not None
            genotype = space.parse(job.genotype)
        _injected_job_fault(genotype)
        _injected_faults()
        start = time.monotonic()
        deadline = start + self.seconds
        total = max(int(self.seconds * 1000), 1)
        while time.monotonic() < deadline and not stop.is_set():
            time.sleep(min(0.05, self.seconds))
            if progress is not None:  # "examples" are the milliseconds slept
                progress(min(int((time.monotonic() - start) * 1000), total), total)
        if stop.is_set():
            raise TrainingStopped("stopped")
        fitness = dry_fitness(genotype)
        uri = checkpoint_uri(job)
        sha = self.checkpoints(job).save(uri, {"genotype": genotype.to_text(), "state": {}})
        result = JobResult(genotype=genotype.to_text(), arch_hash=genotype.arch_hash(),
                           fitness=fitness, val_loss=1.0 - fitness, checkpoint_uri=uri,
                           checkpoint_sha256=sha, examples_seen=0, train_seconds=self.seconds)
        if proposal is not None:
            result.mutation = space.actions_to_json(proposal.actions)
            result.controller_version = proposal.controller_version
            result.log_prob = proposal.log_prob
            result.reward = controller_config(job.config).episode_reward(
                fitness, job.parent.fitness if job.parent else fitness, proposal.entropy)
        return result
