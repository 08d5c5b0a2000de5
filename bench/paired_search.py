"""Paired end-to-end run: RENAS against the random-mutation baseline, from the same
initial population per seed, E steps (past the controller's E*), on Fashion-MNIST.

Primary metric: the mean child-minus-parent fitness change over the last half of the
children (by step index), renas minus random, paired by seed. Both searches of a seed
use the same init seed, so their initial populations are the same genotypes trained with
the same seed; the script checks that their initial fitnesses agree (same trained
population) and says so.

    .venv/bin/python bench/paired_search.py --seeds 2 --steps 200 --out docs/paired.json
    # a GPU cluster: --seeds 5 --steps 1000 --filters 16 --cells 2 --finetune-examples 5000
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

MUTATORS = ("renas", "random")


def child_changes(db: str, name: str) -> tuple[list[float], list[float]]:
    """(initial fitnesses sorted by job, child - parent per child in step order)."""
    con = sqlite3.connect(db)
    try:
        sid = con.execute("SELECT id FROM searches WHERE name = ?", (name,)).fetchone()[0]
        init = [r[0] for r in con.execute(
            "SELECT i.fitness FROM individuals i JOIN jobs j ON j.id = i.job_id "
            "WHERE i.search_id = ? AND i.origin = 'init' ORDER BY j.step_index", (sid,))]
        deltas = [r[0] for r in con.execute(
            "SELECT c.fitness - p.fitness FROM individuals c JOIN individuals p "
            "ON p.id = c.parent_id JOIN jobs j ON j.id = c.job_id "
            "WHERE c.search_id = ? AND c.origin = 'child' ORDER BY j.step_index", (sid,))]
    finally:
        con.close()
    return init, deltas


def mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else float("nan")


def sd(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--sample", type=int, default=3)
    ap.add_argument("--cells", type=int, default=1)
    ap.add_argument("--filters", type=int, default=8)
    ap.add_argument("--train-subset", type=int, default=2000)
    ap.add_argument("--finetune-examples", type=int, default=500)
    ap.add_argument("--val-examples", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", help="write the raw numbers here (JSON)")
    args = ap.parse_args()
    exe = [sys.executable, "-m", "renas_db.cli.main"]
    runs: dict[str, dict[str, dict]] = {}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as d:
        db = f"{d}/p.sqlite"
        env = dict(os.environ, RENAS_DB_URL=f"sqlite:///{db}", PYTHONSAFEPATH="1")
        for seed in range(args.seeds):
            for m in MUTATORS:
                name = f"p-{m}-{seed}"
                subprocess.run(exe + [
                    "run", name, "--workers", str(args.workers), "--dataset", "fashion-mnist",
                    "--seed", str(seed), "--init-seed", str(seed), "--mutator", m,
                    "--population", str(args.population), "--sample", str(args.sample),
                    "--steps", str(args.steps), "--cells", str(args.cells),
                    "--filters", str(args.filters), "--train-subset", str(args.train_subset),
                    "--finetune-examples", str(args.finetune_examples),
                    "--val-examples", str(args.val_examples), "--init-epochs", "1",
                    "--checkpoint-root", f"{d}/ck-{name}"],
                    env=env, cwd=d, check=True, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
                init, deltas = child_changes(db, name)
                half = deltas[len(deltas) // 2:]
                runs.setdefault(str(seed), {})[m] = {
                    "init": init, "deltas": deltas, "first_half": mean(deltas[:len(deltas) // 2]),
                    "last_half": mean(half), "last_half_sd": sd(half),
                    "improved_last_half": sum(x > 0 for x in half) / max(len(half), 1)}
                print(f"seed {seed} {m:<7} children {len(deltas)}  mean change first half "
                      f"{runs[str(seed)][m]['first_half']:+.4f}  last half "
                      f"{runs[str(seed)][m]['last_half']:+.4f} (sd {sd(half):.4f})  "
                      f"[{time.time() - t0:.0f} s]", flush=True)
    print(f"\nP={args.population} S={args.sample} E={args.steps}, N={args.cells} "
          f"F={args.filters}, fine-tune {args.finetune_examples} examples, fitness on "
          f"{args.val_examples} validation images, {args.seeds} seeds")
    diffs = []
    for seed, r in runs.items():
        same = r["renas"]["init"] == r["random"]["init"]
        diff = r["renas"]["last_half"] - r["random"]["last_half"]
        diffs.append(diff)
        print(f"seed {seed}: renas - random (last half) {diff:+.4f}; initial populations "
              f"{'identical' if same else 'DIFFER'} (mean {mean(r['renas']['init']):.4f})")
    print(f"paired difference renas - random: {mean(diffs):+.4f} (sd {sd(diffs):.4f}, "
          f"{len(diffs)} seeds); wall {time.time() - t0:.0f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "runs": runs, "paired_diffs": diffs}, f, indent=1)


if __name__ == "__main__":
    main()
