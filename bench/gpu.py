"""The GPU benchmark, one prepared script: fine-tune images/s of the search network
(N=2, F=24, 32x32x3, batches 64 and 256) against the same network in a plain DataLoader
loop; per-child fixed cost on the device; children per hour with 1, 2, 4 and 8 workers
sharing the device; the projected device-hours of the paper's search (P=20, S=5, E=4000,
45k examples per child; the paper: 4 Titan Xp for 1.5 days = 144 GPU-hours).

CIFAR-10 is read from --data-dir when it is there; otherwise synthetic CIFAR-shaped
batches are written to a temporary folder in CIFAR-10's format (the numbers then measure
speed, not accuracy). Run the worker processes under CUDA MPS for them to overlap
(docs/cluster.md).

    .venv/bin/python bench/gpu.py                       # on a GPU host, a few minutes
    .venv/bin/python bench/gpu.py --device cpu --quick  # that the script works
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PAPER = {"population": 20, "sample": 5, "steps": 4000, "examples": 45000, "hours": 144.0}


def fake_cifar(folder: Path, n_per_batch: int) -> None:
    """CIFAR-10's python batches (5 train, 1 test) of class-dependent random images."""
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, n_per_batch)
        data = (rng.integers(0, 160, (n_per_batch, 3072)) + 9 * labels[:, None]).astype(
            np.uint8)
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": data, b"labels": labels.tolist()}, fh)


def data_dir(args: argparse.Namespace, tmp: str) -> tuple[str, str]:
    """(folder, "real" or "synthetic")."""
    if args.data_dir and (Path(args.data_dir) / "cifar-10-batches-py").is_dir() or \
            args.data_dir and (Path(args.data_dir) / "data_batch_1").is_file():
        return args.data_dir, "real"
    fake_cifar(Path(tmp), 1000 if args.quick else 10000)
    return tmp, "synthetic"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(args: argparse.Namespace, folder: str, batch: int) -> tuple[float, float]:
    """(plain DataLoader loop img/s, renas-db fine_tune img/s), same network and batch."""
    from renas_db.data import load_dataset
    from renas_db.inherit import InheritReport, param_groups
    from renas_db.network import Network, spec_for
    from renas_db.space import parse
    from renas_db.train import fine_tune, prepare, resolve_device
    device = resolve_device(args.device)
    data = load_dataset("cifar10", folder).to(device)
    spec = spec_for("cifar10", cells=2, filters=24)
    images = args.images
    # plain: float NCHW tensors on the host, DataLoader, copies per batch, no autocast
    cpu = load_dataset("cifar10", folder)
    x = (cpu.train.images.float() / 255 - 0.45) / 0.25
    ds = torch.utils.data.TensorDataset(x, cpu.train.labels)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True,
                                         pin_memory=device.type == "cuda")
    net = Network(parse("renasnet"), spec).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    seen, start = 0, 0.0
    for step, (xb, yb) in enumerate(loader):
        if step == 2:  # after a warm-up (allocator, cuDNN autotuning)
            sync(device)
            start, seen = time.perf_counter(), 0
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        loss = torch.nn.functional.cross_entropy(net(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(yb)
        if step >= 2 and seen >= images:
            break
    sync(device)
    plain = seen / (time.perf_counter() - start)
    ours = prepare(Network(parse("renasnet"), spec), device)
    groups = param_groups(ours, InheritReport(), 0.01, 0.001)
    fine_tune(ours, groups, data, device=device, batch_size=batch, examples=2 * batch)
    sync(device)
    start = time.perf_counter()
    r = fine_tune(ours, groups, data, device=device, batch_size=batch, examples=images)
    sync(device)
    return plain, r.examples_seen / (time.perf_counter() - start)


def search(args: argparse.Namespace, folder: str, workers: int, steps: int) -> dict:
    """A small search with `workers` processes on the device: its step jobs' stats."""
    exe = [sys.executable, "-m", "renas_db.cli.main"]
    dev = ["--cpu"] if args.device == "cpu" else ["--gpu", args.device.partition(":")[2] or "0"]
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, RENAS_DB_URL=f"sqlite:///{d}/g.sqlite", PYTHONSAFEPATH="1")
        subprocess.run(exe + ["search", "create", "g", "--dataset", "cifar10",
                              "--data-dir", folder, "--population", str(args.population),
                              "--sample", "3", "--steps", str(steps), "--mutator", "renas",
                              "--cells", "2", "--filters", "24", "--init-epochs", "0.1",
                              "--finetune-examples", str(args.child_examples),
                              "--val-examples", str(args.val_examples),
                              "--checkpoint-root", f"{d}/ck"], env=env, check=True, cwd=d,
                       stdout=subprocess.DEVNULL)
        threads = max(1, (os.cpu_count() or 2) // workers)
        procs = [subprocess.Popen(exe + ["worker", "--search", "g", "--threads", str(threads),
                                         *dev, "--stats-json", f"{d}/w{i}.json"], env=env,
                                  cwd=d, stderr=subprocess.DEVNULL) for i in range(workers)]
        for p in procs:
            p.wait()
        jobs = []
        for i in range(workers):
            with open(f"{d}/w{i}.json") as fh:
                jobs += json.load(fh)["jobs"]
    steps_done = [j for j in jobs if j["kind"] == "step"]
    work = ("train", "recalibrate", "evaluate")
    # children per hour: step children over the span of the step phase, all workers
    span = max(sum(j["wall"] for j in steps_done) / workers, 1e-9)
    return {"children": len(steps_done),
            "per_hour": 3600 * len(steps_done) / span,
            "fixed_ms": 1000 * statistics.median(
                j["wall"] - sum(j.get(p, 0.0) for p in work) for j in steps_done),
            "child_s": statistics.median(j["wall"] for j in steps_done)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--data-dir", help="a CIFAR-10 folder (else synthetic CIFAR-shaped)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: the script works")
    args = ap.parse_args()
    args.images = 256 if args.quick else 20000
    args.population = 4 if args.quick else 8
    args.child_examples = 128 if args.quick else PAPER["examples"]
    args.val_examples = 128 if args.quick else 5000
    steps = 4 if args.quick else 16
    worker_counts = (1, 2) if args.quick else (1, 2, 4, 8)
    with tempfile.TemporaryDirectory() as tmp:
        folder, kind = data_dir(args, tmp)
        print(f"device {args.device}, {kind} CIFAR-10-shaped data, N=2 F=24"
              + (" (--quick: sizes too small for the figures to mean anything)"
                 if args.quick else ""))
        print("| batch | plain DataLoader loop | renas-db fine_tune | ratio |\n|---|---|---|---|")
        for batch in (64, 256):
            plain, ours = throughput(args, folder, batch)
            print(f"| {batch} | {plain:.0f} img/s | {ours:.0f} img/s | {ours / plain:.2f}x |")
        print(f"\nsearch children ({args.child_examples} fine-tune examples each)")
        print("| workers | children/hour | median child | fixed cost per child | share |\n"
              "|---|---|---|---|---|")
        best = None
        for k in worker_counts:
            r = search(args, folder, k, steps * k)
            share = r["fixed_ms"] / 1000 / r["child_s"]
            print(f"| {k} | {r['per_hour']:.0f} | {r['child_s']:.2f} s | "
                  f"{r['fixed_ms']:.1f} ms | {100 * share:.1f}% |")
            best = r if best is None or r["per_hour"] > best["per_hour"] else best
        assert best is not None
        hours = (PAPER["steps"] + PAPER["population"]) / best["per_hour"]
        print(f"\nprojected paper search (P=20 S=5 E=4000, {args.child_examples} examples "
              f"per child, initial population counted as children): {hours:.1f} "
              f"device-hours at the best worker count, against the paper's "
              f"{PAPER['hours']:.0f} GPU-hours ({PAPER['hours'] / hours:.0f}x)")


if __name__ == "__main__":
    main()
