"""Can the mutation controller learn anything at the scale it is run at?

Part 1 (`--part real`): real Fashion-MNIST fine-tunes at CPU scale (N=1, F=8, parents
trained 1 epoch on 2000 images, children fine-tuned on 1000 of them, fitness on 1000
validation images after batch-norm recalibration): the noise of one child's fitness
(the same clone child fine-tuned with different seeds) and the fitness change of clone,
single and random children against their parents, per number of changed nodes and per
op / input change. The same parents and single children are also run the old way
(running statistics, no recalibration) for comparison.

Part 2 (`--part surrogate`): a surrogate fitted to part 1 (child fitness = parent fitness
+ a linear function of the changed nodes + Gaussian noise of the measured size) drives
the real ControllerTrainer inside a small evolution (P=20, S=5) per variant and seed.
Metric at each checkpoint: the expected noise-free fitness change of the controller's
mutations minus that of the random mutator's, over a fixed panel of 30 parents (computed
exactly from the policy's probabilities, so the spread over seeds is the training's). E*: the first
checkpoint from which that advantage minus its spread over seeds stays above zero;
E*_noise: above the measured fitness noise of one child instead (a practical margin).

Part `bn`: fitness against the number of recalibration batches (the bn_batches default).

    OMP_NUM_THREADS=1 nice -n 19 python bench/controller_learnability.py --part bn
    OMP_NUM_THREADS=1 nice -n 19 python bench/controller_learnability.py --part real \\
        --parents 5 --out docs/learnability_real.json
    OMP_NUM_THREADS=1 nice -n 19 python bench/controller_learnability.py --part surrogate \\
        --real docs/learnability_real.json --episodes 4000 --seeds 5 \\
        --out docs/learnability_surrogate.json --plot docs/learnability.png
    (--quick: a few parents, 300 episodes, 2 seeds, to check that it runs)
"""
from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
from dataclasses import replace
from typing import Any

import torch

from renas_db.controller import ControllerConfig, ControllerTrainer, Episode
from renas_db.mutators import RandomMutator, SingleMutator
from renas_db.space import OPS, SHORT, SLOTS, Action, Genotype, diff, parse, random_genotype

CPU = torch.device("cpu")
# 250..4000 are the study's; the earlier ones resolve variants that are clear before 250
CHECKPOINTS = (25, 50, 100, 250, 500, 1000, 2000, 4000)


# -- part 1: real fine-tunes ------------------------------------------------------------
def _changes(parent: Genotype, child: Genotype) -> list[dict[str, Any]]:
    out = []
    for n in diff(parent, child):
        p, c = parent.blocks[n.block], child.blocks[n.block]
        pin, pop = (p.in1, p.op1) if n.pair == 0 else (p.in2, p.op2)
        cin, cop = (c.in1, c.op1) if n.pair == 0 else (c.in2, c.op2)
        out.append({"block": n.block, "pair": n.pair, "in_old": pin, "in_new": cin,
                    "op_old": SHORT[pop], "op_new": SHORT[cop]})
    return out


def part_real(args: argparse.Namespace) -> dict[str, Any]:
    from renas_db.data import load_dataset
    from renas_db.inherit import inherit, param_groups
    from renas_db.network import Network, spec_for
    from renas_db.train import (
        evaluate,
        evaluate_recalibrated,
        fine_tune,
        prepare,
        seeded_generator,
        train_from_scratch,
    )
    data = load_dataset("fashion-mnist")
    spec = spec_for("fashion-mnist", cells=1, filters=args.filters)
    rng = random.Random(args.seed)
    parents = [parse("renasnet")] + [random_genotype(5, rng) for _ in range(args.parents - 1)]
    sub, val_n, bs, ft = args.train_subset, args.val_examples, 64, args.finetune_examples

    def fitness(net: Network, recal: bool, seed: int) -> float:
        if recal:
            return evaluate_recalibrated(net, data, device=CPU, bn_batches=args.bn_batches,
                                         batch_size=bs, train_subset=sub, val_examples=val_n,
                                         generator=seeded_generator(10_000 + seed))[0]
        return evaluate(net, data.val.head(val_n), data, device=CPU)[0]

    def child_fitness(pg: Genotype, state: dict, cg: Genotype, seed: int, recal: bool) -> float:
        torch.manual_seed(seed)
        child = Network(cg, spec)
        report = inherit(pg, state, child)
        child = prepare(child, CPU)
        fine_tune(child, param_groups(child, report, 0.01, 0.001), data, device=CPU,
                  batch_size=bs, examples=ft, train_subset=sub if recal else None,
                  generator=seeded_generator(seed))
        return fitness(child, recal, seed)

    records: list[dict[str, Any]] = []
    start = time.perf_counter()
    for pi, pg in enumerate(parents):
        torch.manual_seed(pi)
        net = prepare(Network(pg, spec), CPU)
        train_from_scratch(net, data, device=CPU, epochs=1.0, lr=0.1, batch_size=bs,
                           train_subset=sub, val_examples=val_n,
                           generator=seeded_generator(pi))
        stale_state = {k: v.clone() for k, v in net.state_dict().items()}
        f_stale = fitness(net, False, 0)
        f_parent = fitness(net, True, 0)
        state = {k: v.clone() for k, v in net.state_dict().items()}
        mrng = random.Random(1000 + pi)
        kids: list[tuple[str, Genotype]] = [("clone", pg)] * args.clones
        kids += [("single", pg.apply(SingleMutator().propose(pg, mrng).actions))
                 for _ in range(args.singles)]
        kids += [("random", pg.apply(RandomMutator().propose(pg, mrng).actions))
                 for _ in range(args.randoms)]
        # the old way too for the first clone and the first legacy-1 singles
        legacy = {0} | set(range(args.clones, args.clones + args.legacy - 1))
        legacy = legacy if args.legacy else set()
        for ki, (kind, cg) in enumerate(kids):
            seed = 100 * pi + ki
            rec = {"parent": pi, "parent_genotype": pg.to_text(), "kind": kind,
                   "child_genotype": cg.to_text(), "seed": seed, "parent_fitness": f_parent,
                   "fitness": child_fitness(pg, state, cg, seed, True),
                   "changes": _changes(pg, cg), "recalibrated": True}
            records.append(rec)
            if ki in legacy:  # the old pipeline: stale statistics, whole split
                records.append({**rec, "recalibrated": False, "parent_fitness": f_stale,
                                "fitness": child_fitness(pg, stale_state, cg, seed, False)})
        print(f"parent {pi}: stale {f_stale:.3f}, recalibrated {f_parent:.3f}, "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    return {"args": vars(args), "records": records, "summary": summarise_real(records)}


def summarise_real(records: list[dict[str, Any]]) -> dict[str, Any]:
    new = [r for r in records if r["recalibrated"]]
    old = [r for r in records if not r["recalibrated"]]
    by_parent: dict[int, list[float]] = {}
    for r in new:
        if r["kind"] == "clone":
            by_parent.setdefault(r["parent"], []).append(r["fitness"])
    sds = [statistics.stdev(v) for v in by_parent.values() if len(v) > 1]
    noise = math.sqrt(statistics.mean([s * s for s in sds])) if sds else float("nan")

    def deltas(rows: list[dict[str, Any]], **match: Any) -> dict[str, float]:
        d = [r["fitness"] - r["parent_fitness"] for r in rows
             if all(r.get(k) == v for k, v in match.items())]
        return {"n": len(d), "mean": statistics.mean(d) if d else float("nan"),
                "sd": statistics.stdev(d) if len(d) > 1 else float("nan")}

    per_nodes: dict[str, dict[str, float]] = {}
    for k in sorted({len(r["changes"]) for r in new}):
        d = [r["fitness"] - r["parent_fitness"] for r in new if len(r["changes"]) == k]
        per_nodes[str(k)] = {"n": len(d), "mean": statistics.mean(d),
                             "sd": statistics.stdev(d) if len(d) > 1 else float("nan")}
    per_op: dict[str, list[float]] = {}
    for r in new:
        if len(r["changes"]) == 1:
            c = r["changes"][0]
            key = (f"op {c['op_old']}->{c['op_new']}" if c["op_old"] != c["op_new"]
                   else f"input {c['in_old']}->{c['in_new']}")
            per_op.setdefault(key, []).append(r["fitness"] - r["parent_fitness"])
    return {"clone_noise_sd": noise,
            "new": {k: deltas(new, kind=k) for k in ("clone", "single", "random")},
            "old": {k: deltas(old, kind=k) for k in ("clone", "single", "random")},
            "parents_new": sorted({(r["parent"], round(r["parent_fitness"], 4)) for r in new}),
            "parents_old": sorted({(r["parent"], round(r["parent_fitness"], 4)) for r in old}),
            "per_changed_nodes": per_nodes,
            "single_per_change": {k: {"n": len(v), "mean": statistics.mean(v)}
                                  for k, v in sorted(per_op.items())}}


# -- part 2: the surrogate --------------------------------------------------------------
def _features(parent: Genotype, child: Genotype) -> list[float]:
    """n changed nodes, n input changes, then per op: (times it is the new op) minus
    (times it is the old op) over the changed nodes."""
    x = [0.0] * (2 + len(OPS))
    for c in _changes(parent, child):
        x[0] += 1
        x[1] += c["in_old"] != c["in_new"]
        x[2 + SHORT.index(c["op_new"])] += 1
        x[2 + SHORT.index(c["op_old"])] -= 1
    return x


class Surrogate:
    """child fitness = parent fitness + w . features(parent, child) + N(0, noise)."""

    def __init__(self, weights: list[float], noise: float) -> None:
        self.weights = weights
        self.noise = noise

    @classmethod
    def fit(cls, real: dict[str, Any], ridge: float = 1e-3) -> Surrogate:
        rows = [r for r in real["records"] if r["recalibrated"]]
        x = torch.tensor([_features(parse(r["parent_genotype"]), parse(r["child_genotype"]))
                          for r in rows], dtype=torch.float64)
        y = torch.tensor([r["fitness"] - r["parent_fitness"] for r in rows],
                         dtype=torch.float64)
        a = x.T @ x + ridge * torch.eye(x.shape[1], dtype=torch.float64)
        w = torch.linalg.solve(a, x.T @ y)
        return cls(w.tolist(), float(real["summary"]["clone_noise_sd"]))

    def mean_delta(self, parent: Genotype, child: Genotype) -> float:
        return sum(w * f for w, f in zip(self.weights, _features(parent, child)))

    def child(self, parent: Genotype, f_parent: float, child: Genotype,
              rng: random.Random) -> float:
        f = f_parent + self.mean_delta(parent, child) + rng.gauss(0.0, self.noise)
        return min(max(f, 0.0), 1.0)


BASE = ControllerConfig(input_attention="concat", entropy_in="loss", seed_encoder=False,
                        init="small-normal")
PAPER = ControllerConfig()
VARIANTS: dict[str, ControllerConfig] = {
    "old (before this change)": BASE,
    "old + additive attention": replace(BASE, input_attention="additive"),
    "old + entropy in reward": replace(BASE, entropy_in="reward"),
    "old + seeded encoder": replace(BASE, seed_encoder=True),
    "old + gain reward": replace(BASE, reward_mode="gain"),
    "paper": PAPER,
    "paper + batch 5": replace(PAPER, batch=5),
    "paper + batch 20": replace(PAPER, batch=20),
    "paper + gain": replace(PAPER, reward_mode="gain"),
    "paper + gain + batch 5": replace(PAPER, reward_mode="gain", batch=5),
    "paper + gain + batch 20": replace(PAPER, reward_mode="gain", batch=20),
    "paper + small-normal init": replace(PAPER, init="small-normal"),
    "paper + raw attention": replace(PAPER, input_attention="additive-raw"),
}


def _policy(controller: Any, g: Genotype) -> list[list[tuple[float, Action]]]:
    """Per block, every action with its probability under the controller. A block's
    decisions do not depend on the other blocks' (they read only the encoder states),
    and a block's action changes only its own node, so expectations over whole
    mutations are sums over blocks: exact, with no sampling noise."""
    with torch.no_grad():
        states = controller.encode(g)
        out = []
        for b in range(g.n_blocks):
            slot_states = states[5 * b:5 * b + 4]
            router = torch.softmax(controller._shape(controller.router(slot_states)
                                                     .squeeze(-1)), 0).tolist()
            cands = controller.input_candidates(states, b)
            block = []
            for k, slot in enumerate(SLOTS):
                logits = (controller.input_logits(slot_states[k], cands) if k < 2
                          else controller._shape(controller.op_mutator(slot_states[k])))
                for v, p in enumerate(torch.softmax(logits, 0).tolist()):
                    block.append((router[k] * p, Action(b, slot, v)))
            out.append(block)
        return out


def _uniform_policy(g: Genotype) -> list[list[tuple[float, Action]]]:
    out = []
    for b in range(g.n_blocks):
        block = []
        for slot in SLOTS:
            n = b + 2 if slot.startswith("in") else len(OPS)
            block += [(1 / (4 * n), Action(b, slot, v)) for v in range(n)]
        out.append(block)
    return out


def expected_change(policy: list[list[tuple[float, Action]]], g: Genotype,
                    surrogate: Surrogate) -> tuple[float, float]:
    """(expected noise-free fitness change, expected number of changed nodes)."""
    delta, nodes = 0.0, 0.0
    for block in policy:
        for p, a in block:
            child = g.apply([a])
            delta += p * surrogate.mean_delta(g, child)
            nodes += p * len(diff(g, child))
    return delta, nodes


def advantage_over_random(trainer: ControllerTrainer, surrogate: Surrogate,
                          panel: list[Genotype], random_mean: float) -> tuple[float, float]:
    """(advantage over random, mean number of changed nodes of the controller's
    mutations) over the panel: the second tells learning which mutation from learning
    not to mutate."""
    pairs = [expected_change(_policy(trainer.controller, g), g, surrogate) for g in panel]
    return (statistics.mean(d for d, _ in pairs) - random_mean,
            statistics.mean(n for _, n in pairs))


def run_variant(config: ControllerConfig, seed: int, surrogate: Surrogate,
                episodes: int, checkpoints: list[int], panel: list[Genotype],
                random_mean: float) -> tuple[list[float], list[float]]:
    rng = random.Random(seed)
    trainer = ControllerTrainer.fresh(config, seed=seed)
    population = [(g, min(max(0.6 + rng.gauss(0, 0.05), 0), 1))
                  for g in (random_genotype(config.blocks, rng) for _ in range(20))]
    out, nodes = [], []
    for i in range(1, episodes + 1):
        sample = rng.sample(range(len(population)), 5)
        best = max(sample, key=lambda k: population[k][1])
        worst = min(sample, key=lambda k: population[k][1])
        parent, f_parent = population[best]
        actions, log_prob, _ = trainer.controller.sample(parent, rng)
        child = parent.apply(actions)
        f_child = surrogate.child(parent, f_parent, child, rng)
        trainer.update([Episode(parent, actions, log_prob, f_child, parent_fitness=f_parent)])
        population[worst] = (child, f_child)
        if i in checkpoints:
            adv, n_nodes = advantage_over_random(trainer, surrogate, panel, random_mean)
            out.append(adv)
            nodes.append(n_nodes)
    return out, nodes


def e_star(means: list[float], spreads: list[float], checkpoints: list[int],
           floor: float = 0.0) -> int | None:
    """The first checkpoint from which mean - spread stays above `floor`."""
    for k in range(len(checkpoints)):
        if all(m - s > floor for m, s in zip(means[k:], spreads[k:])):
            return checkpoints[k]
    return None


def part_surrogate(args: argparse.Namespace) -> dict[str, Any]:
    with open(args.real) as fh:
        real = json.load(fh)
    surrogate = Surrogate.fit(real)
    checkpoints = [c for c in CHECKPOINTS if c <= args.episodes] or [args.episodes]
    prng = random.Random(4242)
    panel = [random_genotype(5, prng) for _ in range(args.panel)]
    uniform = [expected_change(_uniform_policy(g), g, surrogate) for g in panel]
    random_mean = statistics.mean(d for d, _ in uniform)
    random_nodes = statistics.mean(n for _, n in uniform)
    names = args.variants.split(",") if args.variants else list(VARIANTS)
    results: dict[str, Any] = {}
    for name in names:
        t = time.perf_counter()
        runs = [run_variant(VARIANTS[name], seed, surrogate, args.episodes, checkpoints,
                            panel, random_mean) for seed in range(args.seeds)]
        curves = [r[0] for r in runs]
        nodes = [statistics.mean(r[1][k] for r in runs) for k in range(len(checkpoints))]
        means = [statistics.mean(c[k] for c in curves) for k in range(len(checkpoints))]
        spreads = [statistics.stdev(c[k] for c in curves) if len(curves) > 1 else float("inf")
                   for k in range(len(checkpoints))]
        results[name] = {"curves": curves, "mean": means, "spread": spreads,
                         "changed_nodes": nodes, "e_star": e_star(means, spreads, checkpoints),
                         "e_star_noise": e_star(means, spreads, checkpoints, surrogate.noise)}
        print(f"{name:28s} " + " ".join(f"{m:+.4f}±{s:.4f}" for m, s in zip(means, spreads))
              + f"  E*={results[name]['e_star']} E*_noise={results[name]['e_star_noise']}"
              f"  nodes {nodes[-1]:.2f}"
              f"  ({time.perf_counter() - t:.0f} s)", flush=True)
    return {"args": vars(args), "checkpoints": checkpoints,
            "surrogate": {"weights": surrogate.weights, "noise": surrogate.noise,
                          "features": ["nodes", "inputs"] + [f"op {s}" for s in SHORT]},
            "random_mean_delta": random_mean, "random_changed_nodes": random_nodes,
            "variants": results}


def plot(result: dict[str, Any], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 5))
    xs = result["checkpoints"]
    for i, (name, r) in enumerate(result["variants"].items()):
        m, s = r["mean"], r["spread"]
        # the colour cycle has 10 colours: the variants past it are dashed
        ax.errorbar(xs, m, yerr=s,
                    label=f"{name} (E*_noise={r['e_star_noise'] or '>' + str(xs[-1])})",
                    capsize=3, marker="o", markersize=3, linestyle="-" if i < 10 else "--")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("episodes")
    ax.set_ylabel("mean fitness change: controller - random")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def part_bn(args: argparse.Namespace) -> dict[str, Any]:
    from renas_db.data import load_dataset
    from renas_db.network import Network, spec_for
    from renas_db.train import (
        evaluate,
        prepare,
        recalibrate_bn,
        seeded_generator,
        train_from_scratch,
    )
    data = load_dataset("fashion-mnist")
    spec = spec_for("fashion-mnist", cells=1, filters=args.filters)
    rng = random.Random(args.seed)
    out: dict[str, Any] = {}
    for gi, g in enumerate([parse("renasnet"), random_genotype(5, rng)]):
        torch.manual_seed(gi)
        net = prepare(Network(g, spec), CPU)
        train_from_scratch(net, data, device=CPU, epochs=1.0, lr=0.1, batch_size=64,
                           train_subset=args.train_subset, generator=seeded_generator(gi))
        state = {k: v.clone() for k, v in net.state_dict().items()}
        val = data.val.head(args.val_examples)
        rows = {"0": [evaluate(net, val, data, device=CPU)[0]]}
        for k in (1, 2, 4, 8, 16, 31):
            accs, secs = [], []
            for s in range(3):
                net.load_state_dict(state)
                t = time.perf_counter()
                recalibrate_bn(net, data.train.head(args.train_subset), data, batches_n=k,
                               batch_size=64, generator=seeded_generator(100 + s), device=CPU)
                secs.append(time.perf_counter() - t)
                accs.append(evaluate(net, val, data, device=CPU)[0])
            rows[str(k)] = accs
            print(f"{g}  bn_batches={k:2d}: {accs}  {statistics.mean(secs):.2f} s", flush=True)
        out[g.to_text()] = rows
    return out


def main() -> None:
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("real", "surrogate", "bn"), required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--filters", type=int, default=8)
    ap.add_argument("--train-subset", type=int, default=2000)
    ap.add_argument("--val-examples", type=int, default=1000)
    ap.add_argument("--finetune-examples", type=int, default=1000)
    ap.add_argument("--bn-batches", type=int, default=16)
    ap.add_argument("--parents", type=int, default=5)
    ap.add_argument("--clones", type=int, default=3)
    ap.add_argument("--singles", type=int, default=6)
    ap.add_argument("--randoms", type=int, default=3)
    ap.add_argument("--legacy", type=int, default=3,
                    help="children per parent also run the old way (one clone, then singles)")
    ap.add_argument("--real", default="docs/learnability_real.json")
    ap.add_argument("--episodes", type=int, default=4000)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--panel", type=int, default=30)
    ap.add_argument("--variants", default="", help="comma-separated names (default all)")
    ap.add_argument("--out")
    ap.add_argument("--plot")
    args = ap.parse_args()
    if args.quick:
        args.parents, args.clones, args.singles, args.randoms, args.legacy = 2, 2, 2, 1, 1
        args.episodes, args.seeds = min(args.episodes, 300), 2
    result = {"real": part_real, "surrogate": part_surrogate, "bn": part_bn}[args.part](args)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)
    if args.plot and args.part == "surrogate":
        plot(result, args.plot)


if __name__ == "__main__":
    main()
