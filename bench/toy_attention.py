"""The input mutator on a toy reward that wants different inputs for IN1 and IN2 of one
block (renasnet block 3: IN1 <- cell c-2 (candidate 0), IN2 <- block 2 (candidate 4)).

Two trainings per seed and scorer (renas_db/toy_rewards.py):
- reinforce: the real ControllerTrainer, one sampled episode per update;
- exact: Adam on the exact expected reward of both slots (no sampling noise).
Scorers: "additive" (the controller's: v . tanh(n(W_q h_slot) + n(W_c h_cand)), n a layer
normalisation), the same with the first initialisation N(0, 0.01), "additive-raw" (no
normalisation) and "concat" (the old Linear([h_slot; h_cand])).
Prints P(. | IN1), P(. | IN2), the separation min(P1[0] - P2[0], P2[4] - P1[4]) and
whether both slots put >= 0.8 on their own input.

    .venv/bin/python bench/toy_attention.py --seeds 5 --episodes 800 --steps 300
"""
from __future__ import annotations

import argparse
import json

import torch

from renas_db.controller import ControllerConfig
from renas_db.toy_rewards import exact, learnt, reinforce, separation

SCORERS = {
    "additive": ControllerConfig(),
    "additive, N(0, 0.01) init": ControllerConfig(init="small-normal"),
    "additive-raw": ControllerConfig(input_attention="additive-raw"),
    "additive-raw, N(0, 0.01) init": ControllerConfig(input_attention="additive-raw",
                                                      init="small-normal"),
    "concat": ControllerConfig(input_attention="concat"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--episodes", type=int, default=800)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--scorers", default="", help="comma-separated names (default all)")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = args.scorers.split(",") if args.scorers else list(SCORERS)
    rows = []
    for training in ("reinforce", "exact"):
        for name in names:
            for seed in range(args.seeds):
                config = SCORERS[name]
                p1, p2 = (reinforce(config, seed, args.episodes) if training == "reinforce"
                          else exact(config, seed, args.steps))
                rows.append({"training": training, "scorer": name, "seed": seed, "in1": p1,
                             "in2": p2, "separation": separation(p1, p2),
                             "learnt": learnt(p1, p2)})
                print(f"{training:<9} {name:<30} seed {seed}: "
                      f"IN1 {[round(x, 2) for x in p1]} IN2 {[round(x, 2) for x in p2]} "
                      f"separation {separation(p1, p2):+.3f} learnt {learnt(p1, p2)}",
                      flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
