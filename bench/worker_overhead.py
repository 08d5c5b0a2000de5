"""Share of a worker's time per child spent outside fine-tune and evaluate (claim,
checkpoint read/write, mutation, inheritance, commit, controller update, GC), measured
on a real small search with 2 workers on Fashion-MNIST.

    .venv/bin/python bench/worker_overhead.py --steps 16
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--population", type=int, default=6)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--finetune-examples", type=int, default=2000)
    ap.add_argument("--filters", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    exe = [sys.executable, "-m", "renas_db.cli.main"]
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, RENAS_DB_URL=f"sqlite:///{d}/o.sqlite", PYTHONSAFEPATH="1")
        subprocess.run(exe + ["search", "create", "o", "--dataset", "fashion-mnist",
                              "--population", str(args.population), "--sample", "3",
                              "--steps", str(args.steps), "--mutator", "renas", "--cells", "1",
                              "--filters", str(args.filters), "--train-subset", "2000",
                              "--init-epochs", "0.5", "--finetune-examples",
                              str(args.finetune_examples), "--val-examples", "1000",
                              "--checkpoint-root", f"{d}/ck"], env=env, check=True, cwd=d)
        threads = max(1, (os.cpu_count() or 2) // args.workers)
        procs = [subprocess.Popen(exe + ["worker", "--search", "o", "--threads", str(threads),
                                         "--stats-json", f"{d}/w{i}.json"], env=env, cwd=d,
                                  stderr=subprocess.DEVNULL) for i in range(args.workers)]
        for p in procs:
            p.wait()
        jobs = []
        for i in range(args.workers):
            jobs += json.load(open(f"{d}/w{i}.json"))["jobs"]
    steps = [j for j in jobs if j["kind"] == "step"]
    wall = sum(j["wall"] for j in steps)
    # batch-norm recalibration is part of measuring the fitness (issue: stale statistics)
    inside = sum(j.get("train", 0) + j.get("recalibrate", 0) + j.get("evaluate", 0)
                 for j in steps)
    phases = sorted({k for j in steps for k in j if k not in ("kind", "wall")})
    print(f"{len(steps)} children, {wall:.1f} s of worker time, "
          f"{100 * (wall - inside) / wall:.2f}% outside fine-tune, recalibrate and evaluate "
          "(target < 3%)")
    for ph in phases:
        total = sum(j.get(ph, 0.0) for j in steps)
        print(f"  {ph:<17} {total / len(steps) * 1000:8.1f} ms per child  "
              f"({100 * total / wall:5.2f}%)")
    unaccounted = wall - sum(sum(j.get(ph, 0.0) for ph in phases) for j in steps)
    print(f"  {'other':<17} {unaccounted / len(steps) * 1000:8.1f} ms per child  "
          f"({100 * unaccounted / wall:5.2f}%)")


if __name__ == "__main__":
    main()
