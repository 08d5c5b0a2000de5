"""What a worker does with a claimed job: build, inherit, train, evaluate, checkpoint.

The worker loop owns the protocol; an executor owns the torch work and reads nothing
from the database: the job carries what it needs, and a step's mutator comes from the
worker (renas_db/shared_controller.py)."""
from __future__ import annotations

import threading
from collections.abc import Mapping
from contextlib import nullcontext
from typing import Protocol

import torch

from renas_db import levers, space
from renas_db.checkpoints import CheckpointCache, CheckpointStorage, store_for
from renas_db.config import SearchConfig
from renas_db.controller import controller_config
from renas_db.data import Dataset, load_dataset
from renas_db.datasets import data_dir_for
from renas_db.errors import RenasError
from renas_db.inherit import inherit, param_groups
from renas_db.jobs import ClaimedJob, JobKind, JobResult, Progress, checkpoint_uri
from renas_db.levers import old_paths
from renas_db.mutators import Mutator, mutation_rng
from renas_db.network import (
    Network,
    count_mult_adds,
    count_parameters,
    spec_for,
    trace_mult_adds,
)
from renas_db.ops import deferred_init
from renas_db.retrain import RetrainRecipe
from renas_db.timings import Timings
from renas_db.train import (
    evaluate,
    fine_tune,
    prepare,
    probe_device,
    recalibrate_bn,
    resolve_device,
    seeded_generator,
    train_from_scratch,
)


class Executor(Protocol):
    """Runs one claimed job to a result (or raises); writes the result's checkpoint."""

    def check(self, config: SearchConfig) -> None:
        """Whether this executor can serve a search: its device works and its dataset
        loads (and is kept); a HostError otherwise."""

    def run(self, job: ClaimedJob, mutator: Mutator | None, progress: Progress | None,
            stop: threading.Event) -> JobResult: ...


# The parents kept decoded in memory: a search-size child (N=2, F=24) is ~1 MiB of
# tensors, so this holds a population of 20 many times over.
CHECKPOINT_CACHE_BYTES = 256 * 2**20

def empty_result() -> JobResult:
    return JobResult(genotype="", arch_hash="", fitness=0.0, val_loss=None,
                     checkpoint_uri=None, checkpoint_sha256=None, examples_seen=0,
                     train_seconds=0.0)


def job_seed(job: ClaimedJob, salt: int) -> int:
    """The torch seed of one attempt of a job. An init job's depends on the initial
    population's seed and its index only, so two searches created with the same init seed
    (a study's --same-init, a paired benchmark) train the same initial networks, whatever
    their job ids; other jobs are seeded by the search seed and the job."""
    cfg = job.config
    if job.kind == JobKind.INIT:
        return hash((cfg.population_seed, job.step_index, job.attempt, salt, 7)) & 0x7FFFFFFF
    return hash((cfg.seed, job.id, job.attempt, salt)) & 0x7FFFFFFF


class TrainingExecutor:
    """Real training on one device, with the worker's datasets cached in memory."""

    def __init__(self, device: str | None, threads: int | None, checkpoint_root: str | None,
                 timings: Timings, data_dirs: Mapping[str, str] | None = None) -> None:
        self.device = resolve_device(device, threads)
        self.checkpoint_root = checkpoint_root
        self.data_dirs = dict(data_dirs or {})  # this host's --data-dir overrides
        self.timings = timings
        self._datasets: dict[tuple[str, str | None], Dataset] = {}
        self.old = old_paths()
        self.cache = CheckpointCache(0 if "cache" in self.old else CHECKPOINT_CACHE_BYTES)

    def check(self, config: SearchConfig) -> None:
        """A tiny allocation and kernel on the device, then the search's dataset loaded
        onto it (kept for the jobs)."""
        probe_device(self.device)
        with self.timings("load_data"):
            self.dataset(config.dataset, config.data_dir)

    def checkpoints(self, job: ClaimedJob) -> CheckpointStorage:
        return store_for(job, self.checkpoint_root)

    def dataset(self, name: str, data_dir: str | None) -> Dataset:
        """A dataset, loaded once per worker, on the device; `data_dir` is the search's
        (or recipe's) folder, which this host's --data-dir overrides."""
        data_dir = data_dir_for(name, data_dir, self.data_dirs)
        key = (name, data_dir)
        if key not in self._datasets:
            self._datasets[key] = load_dataset(name, data_dir).to(self.device)
        return self._datasets[key]

    def run(self, job: ClaimedJob, mutator: Mutator | None, progress: Progress | None,
            stop: threading.Event) -> JobResult:
        torch.manual_seed(job_seed(job, 1))
        result = empty_result()
        written: _Written | None = None
        if job.kind == JobKind.INIT:
            genotype, network = self._init(job, result, progress, stop)
        elif job.kind == JobKind.STEP:
            if mutator is None:
                raise RenasError(f"job {job.id}: a step needs a mutator")
            genotype, network, written = self._step(job, mutator, result, progress, stop)
        elif job.kind == JobKind.RETRAIN:
            genotype, network = self._retrain(job, result, progress, stop)
        else:
            raise RenasError(f"job kind {job.kind!r} is not supported by this worker")
        try:
            result.genotype = genotype.to_text()
            result.arch_hash = genotype.arch_hash()
            with self.timings("count"):
                result.n_params = count_parameters(network)
                result.mult_adds = (trace_mult_adds if "count" in self.old
                                    else count_mult_adds)(network)
        except BaseException:
            if written is not None:
                written.abandon()
            raise
        with self.timings("checkpoint_write"):  # a step's: only the wait for its thread
            if written is None:
                written = _Written(self, job, genotype, network, result)
            written.wait()
        return result

    def _write_checkpoint(self, job: ClaimedJob, genotype: space.Genotype, network: Network,
                          result: JobResult) -> None:
        uri = checkpoint_uri(job)
        # the cache packs the live tensors into its own copy (one per dtype)
        result.checkpoint_sha256 = self.cache.save(
            self.checkpoints(job), uri, {"genotype": genotype.to_text(),
                                         "state": network.state_dict()})
        result.checkpoint_uri = uri

    def _generator(self, job: ClaimedJob) -> torch.Generator:
        return seeded_generator(job_seed(job, 0))

    def _init(self, job: ClaimedJob, result: JobResult, progress: Progress | None,
              stop: threading.Event) -> tuple[space.Genotype, Network]:
        """Train a random cell from scratch; its validation accuracy is the fitness."""
        cfg, t = job.config, self.timings
        assert job.genotype is not None
        with t("load_data"):
            data = self.dataset(cfg.dataset, cfg.data_dir)
        genotype = space.parse(job.genotype)
        with t("build"):
            network = prepare(Network(genotype, spec_for(cfg.dataset, cells=cfg.cells,
                                                         filters=cfg.filters)), self.device)
        with t("train"):
            r = train_from_scratch(network, data, device=self.device, epochs=cfg.init_epochs,
                                   lr=cfg.init_lr, batch_size=cfg.batch_size,
                                   momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                   train_subset=cfg.train_subset, val_examples=cfg.val_examples,
                                   bn_batches=cfg.bn_batches,
                                   generator=self._generator(job), progress=progress, stop=stop)
        result.fitness, result.val_loss = r.val_accuracy, r.val_loss
        result.examples_seen, result.train_seconds = r.examples_seen, r.seconds
        return genotype, network

    def _step(self, job: ClaimedJob, mutator: Mutator, result: JobResult,
              progress: Progress | None, stop: threading.Event
              ) -> tuple[space.Genotype, Network, _Written]:
        """Mutate the parent, inherit its weights, fine-tune, evaluate."""
        cfg, t = job.config, self.timings
        parent, uri = job.checkpointed_parent()
        with t("load_data"):
            data = self.dataset(cfg.dataset, cfg.data_dir)
        with t("checkpoint_read"):
            payload = self.cache.load(self.checkpoints(job), uri, parent.checkpoint_sha256)
        parent_genotype = space.parse(parent.genotype)
        with t("mutate"):
            proposal = mutator.propose(parent_genotype,
                                       mutation_rng(cfg.seed, job.id, job.attempt))
            genotype = parent_genotype.apply(proposal.actions)
        with t("build"):
            spec = spec_for(cfg.dataset, cells=cfg.cells, filters=cfg.filters)
            with nullcontext() if "noinit" in self.old else deferred_init():
                network = Network(genotype, spec)  # inherit initialises what it does not copy
            report = inherit(parent_genotype, payload["state"], network)
            network = prepare(network, self.device)
            groups = param_groups(network, report, cfg.lr_new, cfg.lr_inherited)
        with t("train"):
            r = fine_tune(network, groups, data, device=self.device, batch_size=cfg.batch_size,
                          examples=cfg.finetune_examples or cfg.train_subset,
                          momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          train_subset=cfg.train_subset,
                          generator=self._generator(job), progress=progress, stop=stop)
        with t("recalibrate"):
            recalibrate_bn(network, data.train.head(cfg.train_subset), data,
                           batches_n=cfg.bn_batches, batch_size=cfg.batch_size,
                           generator=self._generator(job), device=self.device)
        # The weights and statistics are final: the checkpoint is written in a thread
        # while this one evaluates (which reads the network and changes nothing).
        written = _Written(self, job, genotype, network, result,
                           beside=not levers.old("overlap"))
        try:
            with t("evaluate"):
                result.fitness, result.val_loss = evaluate(
                    network, data.val.head(cfg.val_examples), data, device=self.device)
        except BaseException:
            written.abandon()
            raise
        result.examples_seen, result.train_seconds = r.examples_seen, r.seconds
        result.mutation = space.actions_to_json(proposal.actions)
        result.controller_version = proposal.controller_version
        result.log_prob = proposal.log_prob
        result.reward = controller_config(cfg).episode_reward(
            result.fitness, parent.fitness, proposal.entropy)
        return genotype, network, written

    def _retrain(self, job: ClaimedJob, result: JobResult, progress: Progress | None,
                 stop: threading.Event) -> tuple[space.Genotype, Network]:
        """Train a cell from scratch with the full recipe; validation and test accuracy."""
        cfg, t = job.config, self.timings
        assert job.genotype is not None
        recipe = RetrainRecipe.from_dict(job.params or {})
        genotype = space.parse(job.genotype)
        dataset_name = recipe.dataset or cfg.dataset
        with t("load_data"):
            data = self.dataset(dataset_name, recipe.data_dir if recipe.dataset
                                else cfg.data_dir)
        spec = spec_for(dataset_name, cells=recipe.cells or cfg.cells,
                        filters=recipe.filters or cfg.filters,
                        auxiliary=recipe.aux_weight > 0, dropout=recipe.dropout)
        torch.manual_seed(recipe.seed)
        with t("build"):
            network = prepare(Network(genotype, spec), self.device)
        with t("train"):
            r = train_from_scratch(network, data, device=self.device, epochs=recipe.epochs,
                                   lr=recipe.lr, batch_size=recipe.batch_size,
                                   momentum=cfg.momentum, weight_decay=recipe.weight_decay,
                                   aux_weight=recipe.aux_weight, drop_path=recipe.drop_path,
                                   cutout=recipe.cutout, train_subset=recipe.train_subset,
                                   bn_batches=cfg.bn_batches, test=True,
                                   generator=seeded_generator(recipe.seed),
                                   progress=progress, stop=stop)
        result.fitness, result.val_loss = r.val_accuracy, r.val_loss
        result.test_accuracy = r.test_accuracy
        result.examples_seen, result.train_seconds = r.examples_seen, r.seconds
        return genotype, network


class _Written:
    """A checkpoint write: in a thread of its own (`beside`: a step's, while the job
    evaluates), else when waited for. `wait` returns once it is durable and raises what
    the write raised; `abandon` (the job failed after all) waits and deletes it."""

    def __init__(self, executor: TrainingExecutor, job: ClaimedJob, genotype: space.Genotype,
                 network: Network, result: JobResult, beside: bool = False) -> None:
        self.executor, self.job, self.result = executor, job, result
        self._write = lambda: executor._write_checkpoint(job, genotype, network, result)
        self._error: BaseException | None = None
        self._ran = False
        self._thread: threading.Thread | None = None
        if beside:
            self._thread = threading.Thread(target=self._beside, name="checkpoint-write",
                                            daemon=True)
            self._thread.start()

    def _beside(self) -> None:
        try:
            with self.executor.timings("background_checkpoint_write"):
                self._write()
        except BaseException as exc:  # raised again by wait, in the job's thread
            self._error = exc

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            if self._error is not None:
                raise self._error
        elif not self._ran:
            self._ran = True
            self._write()

    def abandon(self) -> None:
        try:
            self.wait()
        except BaseException:
            return
        if self.result.checkpoint_uri:
            try:
                self.executor.checkpoints(self.job).delete(self.result.checkpoint_uri)
            except OSError:
                pass  # the orphan scan collects it
            self.result.checkpoint_uri = self.result.checkpoint_sha256 = None
