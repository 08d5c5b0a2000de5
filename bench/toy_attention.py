"""The input mutator on a toy reward that wants different inputs for IN1 and IN2 of one
block (renasnet block 3: IN1 <- cell c-2 (candidate 0), IN2 <- block 2 (candidate 4)).

Two trainings per seed and scorer form ("additive" = v . tanh(W_q h_slot + W_c h_cand),
"concat" = the old Linear([h_slot; h_cand])):
- reinforce: the real ControllerTrainer, one sampled episode per update, the block's slot
  set to IN1 and IN2 in turn, reward fitness 0.9 on a hit and 0.1 on a miss;
- exact: Adam on the exact expected reward sum_j p(j | slot) tan(f_j pi/2) of both
  slots (no sampling noise: what the scorer can reach).
Prints P(. | IN1), P(. | IN2) and the separation min(P1[0] - P2[0], P2[4] - P1[4]).

    .venv/bin/python bench/toy_attention.py --seeds 5 --episodes 800 --steps 300
"""
from __future__ import annotations

import argparse
import json
import random

import torch

from renas_db.controller import ControllerConfig, ControllerTrainer, Episode, MutationController
from renas_db.space import SLOTS, Action, Genotype, parse

BLOCK = 3
WANT = {"in1": 0, "in2": 4}


def input_probs(c: MutationController, g: Genotype, slot: str) -> torch.Tensor:
    states = c.encode(g)
    begin = c.begin()
    candidates = torch.stack([begin[0], begin[1], *[states[5 * j + 4] for j in range(BLOCK)]])
    return torch.softmax(c.input_logits(states[5 * BLOCK + SLOTS.index(slot)], candidates), 0)


def reinforce(form: str, seed: int, episodes: int) -> tuple[list[float], list[float]]:
    g = parse("renasnet")
    trainer = ControllerTrainer.fresh(ControllerConfig(input_attention=form), seed=seed)
    c = trainer.controller
    rng = random.Random(seed)
    for i in range(episodes):
        slot = ("in1", "in2")[i % 2]
        actions, _, _ = c.sample(g, rng)
        with torch.no_grad():
            p = input_probs(c, g, slot).tolist()
        value = rng.choices(range(len(p)), weights=p)[0]
        actions[BLOCK] = Action(BLOCK, slot, value)
        fitness = 0.9 if value == WANT[slot] else 0.1
        trainer.update([Episode(g, actions, c.log_prob(g, actions), fitness)])
    with torch.no_grad():
        return input_probs(c, g, "in1").tolist(), input_probs(c, g, "in2").tolist()


def exact(form: str, seed: int, steps: int) -> tuple[list[float], list[float]]:
    g = parse("renasnet")
    c = ControllerTrainer.fresh(ControllerConfig(input_attention=form), seed=seed).controller
    cfg = c.config
    reward = {s: torch.tensor([cfg.tan_fitness(0.9 if j == WANT[s] else 0.1)
                               for j in range(5)]) for s in WANT}
    opt = torch.optim.Adam(c.parameters(), lr=cfg.lr)
    for _ in range(steps):
        loss = -sum((input_probs(c, g, s) * reward[s]).sum() for s in WANT)
        opt.zero_grad()
        loss.backward()  # type: ignore[union-attr]
        opt.step()
    with torch.no_grad():
        return input_probs(c, g, "in1").tolist(), input_probs(c, g, "in2").tolist()


def separation(p1: list[float], p2: list[float]) -> float:
    a, b = WANT["in1"], WANT["in2"]
    return min(p1[a] - p2[a], p2[b] - p1[b])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--episodes", type=int, default=800)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for training in ("reinforce", "exact"):
        for form in ("additive", "concat"):
            for seed in range(args.seeds):
                p1, p2 = (reinforce(form, seed, args.episodes) if training == "reinforce"
                          else exact(form, seed, args.steps))
                rows.append({"training": training, "form": form, "seed": seed, "in1": p1,
                             "in2": p2, "separation": separation(p1, p2)})
                print(f"{training:<9} {form:<8} seed {seed}: IN1 {[round(x, 2) for x in p1]} "
                      f"IN2 {[round(x, 2) for x in p2]} separation {separation(p1, p2):+.3f}",
                      flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
