"""What a worker does with a claimed job: build, inherit, train, evaluate, checkpoint.

The worker loop owns the protocol; this module owns the torch work."""
from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from renas_db import space
from renas_db.checkpoints import CheckpointStore
from renas_db.db.queries import INIT, RETRAIN, STEP, ClaimedJob, JobResult
from renas_db.db.session import Store
from renas_db.errors import RenasError

Progress = Callable[[int, int], None]


@dataclass
class Timings:
    """Seconds per phase, summed over jobs: the worker's overhead accounting."""
    phases: dict[str, float] = field(default_factory=dict)

    def add(self, phase: str, seconds: float) -> None:
        self.phases[phase] = self.phases.get(phase, 0.0) + seconds

    def timed(self, phase: str):  # type: ignore[no-untyped-def]
        timings = self

        class _T:
            def __enter__(self) -> None:
                self.t = time.perf_counter()

            def __exit__(self, *exc: object) -> None:
                timings.add(phase, time.perf_counter() - self.t)
        return _T()


def checkpoint_uri(job: ClaimedJob) -> str:
    # One file per lease, not per job: a frozen worker that wakes up after losing its
    # lease can never overwrite the checkpoint of the worker that took over.
    return f"{job.search_name}/{job.id}-{job.lease_token[:8]}.pt"


def search_folder(job: ClaimedJob) -> str:
    return job.search_name


class TrainingExecutor:
    def __init__(self, store: Store, device: str | None, threads: int | None,
                 checkpoint_root: str | None, timings: Timings) -> None:
        from renas_db.train import resolve_device
        self.store = store
        self.device = resolve_device(device, threads)
        self.checkpoint_root = checkpoint_root
        self.timings = timings
        self._datasets: dict[tuple, object] = {}
        self._controllers: dict[int, object] = {}

    def checkpoints(self, job: ClaimedJob) -> CheckpointStore:
        return CheckpointStore(self.checkpoint_root or job.checkpoint_root)

    def dataset(self, job: ClaimedJob, name: str | None = None,
                data_dir: str | None = None):  # type: ignore[no-untyped-def]
        """The search's dataset (or the named one), loaded once per worker, on the device."""
        from renas_db.data import load_dataset
        key = (name, data_dir) if name else (job.config.dataset, job.config.data_dir)
        if key not in self._datasets:
            self._datasets[key] = load_dataset(*key).to(self.device)
        return self._datasets[key]

    def mutator(self, job: ClaimedJob):  # type: ignore[no-untyped-def]
        from renas_db import mutators
        kind = job.config.mutator
        if kind == "random":
            return mutators.RandomMutator()
        if kind == "single":
            return mutators.SingleMutator()
        return mutators.RenasMutator(self.controller(job))

    def controller(self, job: ClaimedJob):  # type: ignore[no-untyped-def]
        """The search's newest controller snapshot, kept in memory between jobs (loaded
        again only when another worker has written a newer version)."""
        from renas_db.controller import ControllerTrainer, controller_config
        from renas_db.db.snapshots import latest_snapshot, latest_version
        cached = self._controllers.get(job.search_id)
        if cached is None or cached.version != latest_version(self.store, job.search_id):
            _, state, _ = latest_snapshot(self.store, job.search_id)
            cached = ControllerTrainer.from_bytes(state, controller_config(job.config))
            self._controllers[job.search_id] = cached
        return cached

    def forget_controller(self, search_id: int) -> None:
        self._controllers.pop(search_id, None)

    def run(self, job: ClaimedJob, progress: Progress | None,
            stop: threading.Event) -> JobResult:
        import torch
        from renas_db.network import count_mult_adds, count_parameters
        cfg = job.config
        torch.manual_seed(hash((cfg.seed, job.id, job.attempt, 1)) & 0x7FFFFFFF)
        result = JobResult(genotype="", arch_hash="", fitness=0.0, val_loss=None,
                           checkpoint_uri=None, checkpoint_sha256=None, examples_seen=0,
                           train_seconds=0.0)
        run_kind = {INIT: self._init, STEP: self._step, RETRAIN: self._retrain}.get(job.kind)
        if run_kind is None:
            raise RenasError(f"job kind {job.kind!r} is not supported by this worker")
        genotype, network = run_kind(job, result, progress, stop)
        result.genotype = genotype.to_text()
        result.arch_hash = genotype.arch_hash()
        with self.timings.timed("count"):
            result.n_params = count_parameters(network)
            result.mult_adds = count_mult_adds(network)
        with self.timings.timed("checkpoint_write"):
            uri = checkpoint_uri(job)
            state = {k: v.detach().to("cpu").contiguous()
                     for k, v in network.state_dict().items()}
            result.checkpoint_sha256 = self.checkpoints(job).save(
                uri, {"genotype": result.genotype, "state": state})
            result.checkpoint_uri = uri
        return result

    def _generator(self, job: ClaimedJob):  # type: ignore[no-untyped-def]
        from renas_db.train import seeded_generator
        return seeded_generator(hash((job.config.seed, job.id, job.attempt)) & 0x7FFFFFFF)

    def _init(self, job: ClaimedJob, result: JobResult, progress: Progress | None,
              stop: threading.Event):  # type: ignore[no-untyped-def]
        """Train a random cell from scratch; its validation accuracy is the fitness."""
        from renas_db.network import Network, spec_for
        from renas_db.train import prepare, train_from_scratch
        cfg, t = job.config, self.timings
        with t.timed("load_data"):
            data = self.dataset(job)
        genotype = space.parse(job.genotype)
        with t.timed("build"):
            network = prepare(Network(genotype, spec_for(cfg.dataset, cells=cfg.cells,
                                                         filters=cfg.filters)), self.device)
        with t.timed("train"):
            r = train_from_scratch(network, data, device=self.device, epochs=cfg.init_epochs,
                                   lr=cfg.init_lr, batch_size=cfg.batch_size,
                                   momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                   train_subset=cfg.train_subset, val_examples=cfg.val_examples,
                                   bn_batches=cfg.bn_batches,
                                   generator=self._generator(job), progress=progress, stop=stop)
        result.fitness, result.val_loss = r.val_accuracy, r.val_loss
        result.examples_seen, result.train_seconds = r.examples_seen, r.seconds
        return genotype, network

    def _step(self, job: ClaimedJob, result: JobResult, progress: Progress | None,
              stop: threading.Event):  # type: ignore[no-untyped-def]
        """Mutate the parent, inherit its weights, fine-tune, evaluate."""
        from renas_db.controller import controller_config
        from renas_db.inherit import inherit, param_groups
        from renas_db.mutators import mutation_rng
        from renas_db.network import Network, spec_for
        from renas_db.train import evaluate_recalibrated, fine_tune, prepare
        cfg, t = job.config, self.timings
        assert job.parent is not None
        with t.timed("load_data"):
            data = self.dataset(job)
        with t.timed("checkpoint_read"):
            payload = self.checkpoints(job).load(job.parent.checkpoint_uri,
                                                 job.parent.checkpoint_sha256)
        parent_genotype = space.parse(job.parent.genotype)
        with t.timed("mutate"):
            proposal = self.mutator(job).propose(parent_genotype,
                                                 mutation_rng(cfg.seed, job.id, job.attempt))
            genotype = parent_genotype.apply(proposal.actions)
        with t.timed("build"):
            network = Network(genotype, spec_for(cfg.dataset, cells=cfg.cells,
                                                 filters=cfg.filters))
            report = inherit(parent_genotype, payload["state"], network)
            network = prepare(network, self.device)
            groups = param_groups(network, report, cfg.lr_new, cfg.lr_inherited)
        with t.timed("train"):
            r = fine_tune(network, groups, data, device=self.device, batch_size=cfg.batch_size,
                          examples=cfg.finetune_examples or cfg.train_subset,
                          momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          train_subset=cfg.train_subset,
                          generator=self._generator(job), progress=progress, stop=stop)
        with t.timed("evaluate"):
            result.fitness, result.val_loss = evaluate_recalibrated(
                network, data, device=self.device, bn_batches=cfg.bn_batches,
                batch_size=cfg.batch_size, train_subset=cfg.train_subset,
                val_examples=cfg.val_examples, generator=self._generator(job))
        result.examples_seen, result.train_seconds = r.examples_seen, r.seconds
        result.mutation = space.actions_to_json(proposal.actions)
        result.controller_version = proposal.controller_version
        result.log_prob = proposal.log_prob
        result.reward = controller_config(cfg).episode_reward(
            result.fitness, job.parent.fitness, proposal.entropy)
        return genotype, network

    def _retrain(self, job: ClaimedJob, result: JobResult, progress: Progress | None,
                 stop: threading.Event):  # type: ignore[no-untyped-def]
        """Train a cell from scratch with the full recipe; validation and test accuracy."""
        import torch
        from renas_db.network import Network, spec_for
        from renas_db.retrain import RetrainRecipe
        from renas_db.train import prepare, seeded_generator, train_from_scratch
        cfg, t = job.config, self.timings
        recipe = RetrainRecipe.from_dict(job.params or {})
        genotype = space.parse(job.genotype)
        dataset_name = recipe.dataset or cfg.dataset
        with t.timed("load_data"):
            data = self.dataset(job, recipe.dataset, recipe.data_dir)
        spec = spec_for(dataset_name, cells=recipe.cells or cfg.cells,
                        filters=recipe.filters or cfg.filters,
                        auxiliary=recipe.aux_weight > 0, dropout=recipe.dropout)
        torch.manual_seed(recipe.seed)
        with t.timed("build"):
            network = prepare(Network(genotype, spec), self.device)
        with t.timed("train"):
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


class DryRunExecutor(TrainingExecutor):
    """No training: fitness is a deterministic function of the genotype and a tiny
    checkpoint is written. For coordination tests and benchmarks."""

    def __init__(self, store: Store, checkpoint_root: str | None, timings: Timings,
                 seconds: float = 0.0) -> None:
        self.store = store
        self.checkpoint_root = checkpoint_root
        self.timings = timings
        self.seconds = seconds
        self._controllers = {}

    def run(self, job: ClaimedJob, progress: Progress | None,
            stop: threading.Event) -> JobResult:
        from renas_db.errors import TrainingStopped
        from renas_db.mutators import mutation_rng
        cfg = job.config
        proposal = None
        if job.kind == STEP:
            parent = space.parse(job.parent.genotype)
            self.checkpoints(job).load(job.parent.checkpoint_uri, job.parent.checkpoint_sha256)
            proposal = self.mutator(job).propose(parent, mutation_rng(cfg.seed, job.id,
                                                                       job.attempt))
            genotype = parent.apply(proposal.actions)
        else:
            genotype = space.parse(job.genotype)
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline:
            if stop.is_set():
                raise TrainingStopped("stopped")
            time.sleep(min(0.05, self.seconds))
        if stop.is_set():
            raise TrainingStopped("stopped")
        digest = hashlib.sha256(genotype.to_text().encode()).digest()
        fitness = 0.5 + digest[0] / 255 * 0.45
        uri = checkpoint_uri(job)
        sha = self.checkpoints(job).save(uri, {"genotype": genotype.to_text(), "state": {}})
        result = JobResult(genotype=genotype.to_text(), arch_hash=genotype.arch_hash(),
                           fitness=fitness, val_loss=1.0 - fitness, checkpoint_uri=uri,
                           checkpoint_sha256=sha, examples_seen=0, train_seconds=self.seconds)
        if proposal is not None:
            from renas_db.controller import controller_config
            result.mutation = space.actions_to_json(proposal.actions)
            result.controller_version = proposal.controller_version
            result.log_prob = proposal.log_prob
            result.reward = controller_config(cfg).episode_reward(
                fitness, job.parent.fitness, proposal.entropy)
        return result
