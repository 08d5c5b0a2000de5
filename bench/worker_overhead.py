"""Share of a worker's time per child spent outside fine-tune and evaluate (claim,
checkpoint read/write, mutation, inheritance, commit, controller update, GC), measured
on a real small search on Fashion-MNIST.

`--tiny` is the fixed-cost mode of issue 16: N=1, F=8, the synthetic dataset, 64
fine-tune examples per child, one worker, so the per-child fixed cost shows; it prints
medians per child. `--compare` runs the same search twice more in the same invocation,
first with every overhead lever switched back to its old path (RENAS_DB_OLD_PATH=all,
renas_db/executor.py), then with each lever alone switched back, and prints the
per-phase medians side by side.

    .venv/bin/python bench/worker_overhead.py --steps 16
    .venv/bin/python bench/worker_overhead.py --tiny --compare --repeats 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

WORK = ("train", "recalibrate", "evaluate")  # the job's work; everything else is overhead
# phases run in a thread beside the loop's (the controller update and GC beside the next
# job, a step's checkpoint write beside its evaluation): they are not part
# of any job's wall time (their cost shows only as they slow the loop's own phases)
BESIDE = "background_"


def run_search(args: argparse.Namespace, old_path: str) -> list[dict]:
    """The step jobs' stats of one search, with RENAS_DB_OLD_PATH=`old_path`."""
    exe = [sys.executable, "-m", "renas_db.cli.main"]
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, RENAS_DB_URL=f"sqlite:///{d}/o.sqlite", PYTHONSAFEPATH="1",
                   RENAS_DB_OLD_PATH=old_path)
        subprocess.run(exe + ["search", "create", "o", "--dataset", args.dataset,
                              "--population", str(args.population), "--sample", "3",
                              "--steps", str(args.steps), "--mutator", "renas",
                              "--cells", str(args.cells), "--filters", str(args.filters),
                              "--train-subset", str(args.train_subset),
                              "--init-epochs", "0.5", "--finetune-examples",
                              str(args.finetune_examples),
                              "--val-examples", str(args.val_examples),
                              "--checkpoint-root", f"{d}/ck"], env=env, check=True, cwd=d,
                       stdout=subprocess.DEVNULL)
        threads = max(1, (os.cpu_count() or 2) // args.workers)
        procs = [subprocess.Popen(exe + ["worker", "--search", "o", "--threads", str(threads),
                                         "--stats-json", f"{d}/w{i}.json"], env=env, cwd=d,
                                  stderr=subprocess.DEVNULL) for i in range(args.workers)]
        for p in procs:
            p.wait()
        jobs = []
        for i in range(args.workers):
            with open(f"{d}/w{i}.json") as fh:
                jobs += json.load(fh)["jobs"]
    return [j for j in jobs if j["kind"] == "step"]


def overhead(job: dict) -> float:
    return job["wall"] - sum(job.get(ph, 0.0) for ph in WORK)


def report(steps: list[dict]) -> None:
    """Totals and shares over the children (the original report)."""
    wall = sum(j["wall"] for j in steps)
    inside = sum(j.get(ph, 0.0) for j in steps for ph in WORK)
    phases = sorted({k for j in steps for k in j if k not in ("kind", "wall")})
    print(f"{len(steps)} children, {wall:.1f} s of worker time, "
          f"{100 * (wall - inside) / wall:.2f}% outside fine-tune, recalibrate and evaluate "
          "(target < 3%)")
    for ph in phases:
        total = sum(j.get(ph, 0.0) for j in steps)
        print(f"  {ph:<17} {total / len(steps) * 1000:8.1f} ms per child  "
              f"({100 * total / wall:5.2f}%)")
    unaccounted = wall - sum(sum(j.get(ph, 0.0) for ph in phases if not ph.startswith(BESIDE))
                             for j in steps)
    print(f"  {'other':<17} {unaccounted / len(steps) * 1000:8.1f} ms per child  "
          f"({100 * unaccounted / wall:5.2f}%)")


def medians(steps: list[dict]) -> dict[str, float]:
    """Median ms per child of each phase, of the overhead and of the wall."""
    phases = sorted({k for j in steps for k in j if k not in ("kind", "wall")})
    out = {ph: 1000 * statistics.median(j.get(ph, 0.0) for j in steps) for ph in phases}
    out["other"] = 1000 * statistics.median(
        j["wall"] - sum(j.get(ph, 0.0) for ph in phases if not ph.startswith(BESIDE))
        for j in steps)
    out["OVERHEAD"] = 1000 * statistics.median(overhead(j) for j in steps)
    out["wall"] = 1000 * statistics.median(j["wall"] for j in steps)
    return out


def compare(args: argparse.Namespace) -> None:
    runs = {"old (all)": "all", "new": ""}
    if args.levers:
        from renas_db.levers import LEVERS
        runs.update({f"old {lever}": lever for lever in LEVERS})
    # interleaved repeats: a drift of this shared machine's speed hits every column alike
    pooled: dict[str, list[dict]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, old in runs.items():
            pooled[name] += run_search(args, old)
    table = {name: medians(steps) for name, steps in pooled.items()}
    rows = sorted({k for m in table.values() for k in m},
                  key=lambda k: (k in ("OVERHEAD", "wall"), k in WORK, k))
    names = list(table)
    print(f"median ms per child ({args.repeats} x {args.steps} steps, N={args.cells} "
          f"F={args.filters}, "
          f"{args.finetune_examples} fine-tune examples, {args.workers} worker(s))")
    print("| phase | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for k in rows:
        tag = " (work)" if k in WORK else " (in a thread beside)" if k.startswith(BESIDE) \
            else ""
        print(f"| {k}{tag} | " + " | ".join(f"{table[n].get(k, 0.0):.1f}" for n in names)
              + " |")
    base, new = table["old (all)"]["OVERHEAD"], table["new"]["OVERHEAD"]
    print(f"fixed cost per child: {base:.1f} ms -> {new:.1f} ms ({base / new:.1f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--population", type=int, default=6)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--finetune-examples", type=int, default=2000)
    ap.add_argument("--filters", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tiny", action="store_true",
                    help="N=1 F=8 synthetic, 64 fine-tune examples, 1 worker, 40 steps")
    ap.add_argument("--compare", action="store_true",
                    help="old paths and new in the same run, per-phase medians")
    ap.add_argument("--repeats", type=int, default=1,
                    help="with --compare: run every column this many times, interleaved")
    ap.add_argument("--no-levers", dest="levers", action="store_false",
                    help="with --compare: skip the one-lever-switched-back runs")
    args = ap.parse_args()
    args.dataset, args.cells, args.train_subset, args.val_examples = \
        "fashion-mnist", 1, 2000, 1000
    if args.tiny:
        args.dataset, args.population, args.steps, args.finetune_examples = \
            "synthetic", 4, max(args.steps, 40), 64
        args.filters, args.workers, args.train_subset, args.val_examples = 8, 1, 512, 256
    if args.compare:
        compare(args)
    else:
        report(run_search(args, ""))


if __name__ == "__main__":
    main()
