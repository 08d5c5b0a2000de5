"""Search quality at equal budget: RENAS (renas) against the paper's baseline EA (random)
and regularized evolution (single + removal=oldest), same initial populations, several
seeds, on Fashion-MNIST at a CPU-sized scale.

    .venv/bin/python bench/search_quality.py --mode quick     # about 20-30 min on 2 cores
    .venv/bin/python bench/search_quality.py --mode full      # for a GPU machine
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

MODES = {
    "quick": dict(population=8, sample=3, steps=16, cells=1, filters=8, train_subset=2000,
                  init_epochs=1.0, finetune_examples=1000, val_examples=1000, seeds=2),
    "full": dict(population=20, sample=5, steps=400, cells=2, filters=24, train_subset=None,
                 init_epochs=2.0, finetune_examples=None, val_examples=None, seeds=5),
}
VARIANTS = [("renas", ["--mutator", "renas"]), ("random", ["--mutator", "random"]),
            ("single+oldest", ["--mutator", "single", "--removal", "oldest"])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=sorted(MODES), default="quick")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seeds", type=int)
    args = ap.parse_args()
    m = dict(MODES[args.mode])
    seeds = args.seeds or m.pop("seeds")
    m.pop("seeds", None)
    exe = [sys.executable, "-m", "renas_db.cli.main"]
    results: dict[str, list[dict]] = {v: [] for v, _ in VARIANTS}
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, RENAS_DB_URL=f"sqlite:///{d}/q.sqlite", PYTHONSAFEPATH="1")
        for seed in range(seeds):
            for variant, flags in VARIANTS:
                name = f"q-{variant.replace('+', '-')}-{seed}"
                opts = [f"--{k.replace('_', '-')}={v}" for k, v in m.items() if v is not None]
                # same initial population for every variant of a seed; own evolution seed
                subprocess.run(exe + ["run", name, "--workers", str(args.workers),
                                      "--dataset", "fashion-mnist", "--seed", str(seed),
                                      "--init-seed", str(seed), "--checkpoint-root",
                                      f"{d}/ck", *opts, *flags], env=env, cwd=d, check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                st = json.loads(subprocess.run(exe + ["status", name, "--json"], env=env,
                                               cwd=d, check=True, capture_output=True,
                                               text=True).stdout)
                results[variant].append(st)
                print(f"seed {seed} {variant:<14} best {st['best_fitness']:.4f} mean "
                      f"{st['mean_fitness']:.4f} examples {st['examples']}", flush=True)
    print(f"\n{args.mode} mode, {seeds} seeds, P={m['population']} S={m['sample']} "
          f"E={m['steps']}: mean (spread = stdev) over seeds")
    def sd(xs: list[float]) -> float:
        return statistics.stdev(xs) if len(xs) > 1 else 0.0

    for variant, _ in VARIANTS:
        rs = results[variant]
        best = [r["best_fitness"] for r in rs]
        mean = [r["mean_fitness"] for r in rs]
        print(f"{variant:<14} best {statistics.mean(best):.4f} ({sd(best):.4f})  "
              f"population mean {statistics.mean(mean):.4f} ({sd(mean):.4f})  "
              f"examples {statistics.mean(r['examples'] for r in rs):.0f}")


if __name__ == "__main__":
    main()
