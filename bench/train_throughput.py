"""fine_tune images/s against a plain baseline loop, same network, same batch size.

Baseline: torchvision FashionMNIST + DataLoader + per-image transforms (pad-crop, flip,
normalise), NCHW float32. renas-db: uint8 tensors in memory, batched on-device
augmentation, channels_last, and renas_db.ops.BatchNorm's way around torch's slow CPU
channels_last batch-norm paths. Each round runs both loops back to back; the headline is
the median of the per-round ratios.

    .venv/bin/python bench/train_throughput.py --threads 2
"""
from __future__ import annotations

import argparse
import gzip
import os
import shutil
import statistics
import tempfile
import time

import torch


def _torchvision_root(data_dir: str) -> str:
    """torchvision reads <root>/FashionMNIST/raw/<name> (not the Debian .gz names)."""
    root = tempfile.mkdtemp(prefix="fmnist-tv-")
    raw = os.path.join(root, "FashionMNIST", "raw")
    os.makedirs(raw)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(os.path.join(data_dir, name + ".gz")) as src, \
                open(os.path.join(raw, name), "wb") as dst:
            shutil.copyfileobj(src, dst)
    return root


def baseline_round(root: str, genotype, spec, images: int, batch: int) -> float:
    import torchvision
    from torchvision import transforms

    from renas_db.network import Network
    tf = transforms.Compose([transforms.RandomCrop(28, padding=2),
                             transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                             transforms.Normalize((0.2860,), (0.3530,))])
    ds = torchvision.datasets.FashionMNIST(root, train=True, download=False, transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=0)
    net = Network(genotype, spec)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=3e-4)
    seen = 0
    start = time.perf_counter()
    for x, y in loader:
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(y)
        if seen >= images:
            break
    return seen / (time.perf_counter() - start)


def renas_round(data, genotype, spec, images: int, batch: int) -> float:
    from renas_db.network import Network
    from renas_db.train import fine_tune, prepare
    net = prepare(Network(genotype, spec), torch.device("cpu"))
    groups = [{"params": list(net.parameters()), "lr": 0.01}]
    r = fine_tune(net, groups, data, device=torch.device("cpu"), batch_size=batch,
                  examples=images, generator=torch.Generator().manual_seed(0))
    return r.examples_seen / r.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--images", type=int, default=1280)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--cells", type=int, default=1)
    ap.add_argument("--filters", type=int, default=8)
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from renas_db.data import load_fashion_mnist
    from renas_db.network import spec_for
    from renas_db.space import parse
    genotype = parse("renasnet")
    spec = spec_for("fashion-mnist", cells=args.cells, filters=args.filters)
    data = load_fashion_mnist(args.data_dir)
    root = _torchvision_root(args.data_dir)
    try:
        base, ours = [], []
        # warm-up both paths once (allocator, kernels), untimed
        baseline_round(root, genotype, spec, args.batch * 2, args.batch)
        renas_round(data, genotype, spec, args.batch * 2, args.batch)
        for r in range(args.rounds):
            base.append(baseline_round(root, genotype, spec, args.images, args.batch))
            ours.append(renas_round(data, genotype, spec, args.images, args.batch))
            print(f"round {r}: baseline {base[-1]:.1f} img/s, fine_tune {ours[-1]:.1f} img/s, "
                  f"ratio {ours[-1] / base[-1]:.2f}x", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    b, o = statistics.median(base), statistics.median(ours)
    # Each round runs the two loops back to back, so the per-round ratio cancels the
    # machine's slow drifts; its median is the headline (a noisy round moves it least).
    paired = statistics.median(x / y for x, y in zip(ours, base))
    print(f"RENASNet N={args.cells} F={args.filters}, batch {args.batch}, {args.threads} "
          f"threads: baseline {b:.1f} img/s, fine_tune {o:.1f} img/s (medians, ratio "
          f"{o / b:.2f}x); median of the per-round ratios {paired:.2f}x (target >= 1.5x)")


if __name__ == "__main__":
    main()
