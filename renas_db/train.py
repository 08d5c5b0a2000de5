"""Turning a network into a fitness: fine-tuning, evaluation, training from scratch."""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from renas_db.data import Dataset, Split, augment_batch, batches, normalise, to_device
from renas_db.errors import DeviceError, TrainingStopped
from renas_db.jobs import Progress
from renas_db.network import Network


def resolve_device(device: str | None, threads: int | None = None) -> torch.device:
    """'cpu', 'cuda', 'cuda:N' (checked against the device count) or None (cpu)."""
    if threads:
        torch.set_num_threads(threads)
    if device in (None, "", "cpu"):
        return torch.device("cpu")
    if not device.startswith("cuda"):
        raise DeviceError(f"unknown device {device!r} (cpu, cuda:N)")
    if not torch.cuda.is_available():
        raise DeviceError(f"{device} requested but CUDA is not available on this machine "
                          "(no GPU, or no working driver); start the worker with --cpu or on "
                          "a host with a GPU")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise DeviceError(f"bad device {device!r}") from None
    index = dev.index or 0
    if index >= torch.cuda.device_count():
        raise DeviceError(f"{device} does not exist: this machine has "
                          f"{torch.cuda.device_count()} CUDA device(s)")
    torch.cuda.set_device(index)
    # cuDNN's autotuner on: it picks each convolution's fastest algorithm once per input
    # shape and process. A search's children differ in wiring but draw their convolutions
    # from a small set of shapes (3 widths x 3 kernels x 2 strides x the batch sizes), so
    # a long-lived worker pays the tuning in its first children and never again, while
    # every fine-tune and evaluation batch after that runs the tuned kernels.
    torch.backends.cudnn.benchmark = True
    return torch.device("cuda", index)


def probe_device(device: torch.device) -> None:
    """A tiny allocation and convolution on a CUDA device, synchronised: DeviceError if
    the device (or its driver, or cuDNN) does not work. The CPU is not probed."""
    if device.type != "cuda":
        return
    try:
        x = torch.ones((2, 1, 8, 8), device=device)
        w = torch.ones((2, 1, 3, 3), device=device)
        value = float(torch.nn.functional.conv2d(x, w).sum().item())
        torch.cuda.synchronize(device)
    except Exception as exc:  # a broken driver raises RuntimeError, AssertionError, ...
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise DeviceError(f"device {device} does not work ({reason})") from None
    if value != 2 * 2 * 6 * 6 * 9:
        raise DeviceError(f"device {device} does not work (a test convolution gave "
                          f"{value:g}, expected {2 * 2 * 6 * 6 * 9})")


def _autocast(device: torch.device) -> AbstractContextManager[Any]:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _inputs(x: torch.Tensor, dataset: Dataset) -> torch.Tensor:
    return normalise(x, dataset.mean, dataset.std).contiguous(
        memory_format=torch.channels_last)


def prepare(network: Network, device: torch.device) -> Network:
    # channels_last: 1.6-2.7x for the depthwise-heavy cells (measured on the 2-core
    # development VM). torch's stubs lack the (device, memory_format) overload of .to().
    return network.to(device=device, memory_format=torch.channels_last)  # type: ignore[call-overload]


@dataclass
class FineTuneResult:
    examples_seen: int
    seconds: float
    loss: float


def fine_tune(network: Network, param_groups: list[dict], dataset: Dataset, *,
              device: torch.device, batch_size: int, examples: int | None = None,
              momentum: float = 0.9, weight_decay: float = 3e-4,
              train_subset: int | None = None, generator: torch.Generator | None = None,
              progress: Progress | None = None,
              stop: threading.Event | None = None) -> FineTuneResult:
    """One pass over the training split (or `examples`) with the inheritance groups.
    `train_subset`: the first that many training images, the same subset the initial
    population was trained on."""
    start = time.perf_counter()
    train = dataset.train.head(train_subset)
    total = len(train) if examples is None else examples
    # foreach: one fused update over all tensors instead of a Python loop per parameter
    optimizer = torch.optim.SGD(param_groups, momentum=momentum, weight_decay=weight_decay,
                                foreach=True)
    network.train()
    seen, last_loss = 0, float("nan")
    for idx in batches(len(train), batch_size, generator, examples=total):
        if stop is not None and stop.is_set():
            raise TrainingStopped(f"stopped after {seen} examples")
        idx = to_device(idx, train.images.device)
        x = _inputs(augment_batch(train.images[idx], dataset.augment, generator), dataset)
        y = train.labels[idx]
        with _autocast(device):
            loss = F.cross_entropy(network(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(idx)
        if progress is not None:
            last_loss = float(loss.detach())
            progress(seen, total)
    if progress is None and seen:
        last_loss = float(loss.detach())
    return FineTuneResult(seen, time.perf_counter() - start, last_loss)


def evaluate(network: Network, split: Split, dataset: Dataset, *, device: torch.device,
             batch_size: int = 256) -> tuple[float, float]:
    """(accuracy, mean loss) under inference_mode."""
    network.eval()
    correct, loss_sum = 0, 0.0
    with torch.inference_mode(), _autocast(device):
        for idx in batches(len(split), batch_size, None):
            idx = to_device(idx, split.images.device)
            logits = network(_inputs(split.images[idx], dataset)).float()
            y = split.labels[idx]
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
    n = max(len(split), 1)
    return correct / n, loss_sum / n


def recalibrate_bn(network: Network, split: Split, dataset: Dataset, *, batches_n: int,
                   batch_size: int, generator: torch.Generator | None,
                   device: torch.device) -> int:
    """Reset every batch-norm layer's running statistics and re-estimate them as the
    cumulative average over `batches_n` training batches (train mode, forward only).

    Why: a fresh BN layer starts at running_var = 1 and moves by momentum 0.1 a step, so
    after the few dozen SGD steps of a small fine-tune the deep layers' running variance
    is several times too large and the stale statistics, not the weights, decide the
    validation accuracy. Images are not augmented: the statistics are for evaluation
    inputs. Returns the number of images seen (0 = nothing done)."""
    layers = [m for m in network.modules()
              if isinstance(m, torch.nn.BatchNorm2d) and m.track_running_stats]
    if batches_n <= 0 or not layers or len(split) == 0:
        return 0
    momenta = [m.momentum for m in layers]
    was_training, drop = network.training, network.drop_prob
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # None = cumulative moving average over the batches seen
    network.train()
    network.drop_prob = 0.0
    seen = 0
    try:
        with torch.no_grad(), _autocast(device):
            for idx in batches(len(split), batch_size, generator,
                               examples=min(batches_n * batch_size, len(split))):
                idx = to_device(idx, split.images.device)
                network(_inputs(split.images[idx], dataset))
                seen += len(idx)
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        network.drop_prob = drop
        network.train(was_training)
    return seen


def evaluate_recalibrated(network: Network, dataset: Dataset, *, device: torch.device,
                          bn_batches: int, batch_size: int, train_subset: int | None = None,
                          val_examples: int | None = None,
                          generator: torch.Generator | None = None,
                          timed: Callable[[str], AbstractContextManager[Any]] | None = None
                          ) -> tuple[float, float]:
    """The fitness: recalibrate batch norm on the (subset of the) training split, then
    (accuracy, mean loss) on the first `val_examples` validation images. The network
    keeps the recalibrated statistics, so its checkpoint stores them. `timed` (a
    Timings) gets the phases "recalibrate" and "evaluate"."""
    phase = timed or _untimed
    with phase("recalibrate"):
        recalibrate_bn(network, dataset.train.head(train_subset), dataset,
                       batches_n=bn_batches, batch_size=batch_size, generator=generator,
                       device=device)
    with phase("evaluate"):
        return evaluate(network, dataset.val.head(val_examples), dataset, device=device)


def _untimed(_phase: str) -> AbstractContextManager[Any]:
    return nullcontext()


@dataclass
class ScratchResult:
    val_accuracy: float
    val_loss: float
    test_accuracy: float | None
    examples_seen: int
    seconds: float


def train_from_scratch(network: Network, dataset: Dataset, *, device: torch.device,
                       epochs: float, lr: float = 0.05, batch_size: int = 64,
                       momentum: float = 0.9, weight_decay: float = 3e-4,
                       aux_weight: float = 0.4, drop_path: float = 0.0, cutout: int = 0,
                       train_subset: int | None = None, val_examples: int | None = None,
                       bn_batches: int = 0, test: bool = False,
                       generator: torch.Generator | None = None,
                       progress: Progress | None = None,
                       stop: threading.Event | None = None) -> ScratchResult:
    """The full recipe: cosine learning rate, auxiliary head, drop-path ramped linearly
    to its target, optional cutout; batch norm recalibrated on `bn_batches` training
    batches before evaluation (0 = not); test accuracy when asked."""
    start = time.perf_counter()
    train = dataset.train.head(train_subset)
    total = max(1, int(round(epochs * len(train))))
    aug = replace(dataset.augment, cutout=cutout)
    optimizer = torch.optim.SGD(network.parameters(), lr=lr, momentum=momentum,
                                weight_decay=weight_decay, nesterov=momentum > 0)
    steps = math.ceil(total / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    network.train()
    seen = 0
    for idx in batches(len(train), batch_size, generator, examples=total):
        if stop is not None and stop.is_set():
            raise TrainingStopped(f"stopped after {seen} examples")
        network.drop_prob = drop_path * seen / total
        idx = to_device(idx, train.images.device)
        x = _inputs(augment_batch(train.images[idx], aug, generator), dataset)
        y = train.labels[idx]
        with _autocast(device):
            logits, aux = network.forward_with_aux(x)
            loss = F.cross_entropy(logits, y)
            if aux is not None and aux_weight:
                loss = loss + aux_weight * F.cross_entropy(aux, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 5.0)
        optimizer.step()
        schedule.step()
        seen += len(idx)
        if progress is not None:
            progress(seen, total)
    network.drop_prob = 0.0
    val_acc, val_loss = evaluate_recalibrated(network, dataset, device=device,
                                              bn_batches=bn_batches, batch_size=batch_size,
                                              train_subset=train_subset,
                                              val_examples=val_examples, generator=generator)
    test_acc = evaluate(network, dataset.test, dataset, device=device)[0] if test else None
    return ScratchResult(val_acc, val_loss, test_acc, seen, time.perf_counter() - start)


def seeded_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
