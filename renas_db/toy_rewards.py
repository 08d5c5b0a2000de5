"""A toy reward with a known answer, to check that the input mutator can learn it.

RENASNet's block 3; the reward wants IN1 <- cell c-2 (candidate 0) and IN2 <- block 2
(candidate 4): fitness 0.9 on a hit, 0.1 on a miss. A scorer whose slot term cancels
(Linear([h_slot; h_cand])) ranks the candidates the same for both slots and cannot learn
it. Used by tests/unit/test_controller.py and bench/toy_attention.py.
"""
from __future__ import annotations

import random

import torch

from renas_db.controller import ControllerConfig, ControllerTrainer, Episode, MutationController
from renas_db.space import SLOTS, Action, Genotype, parse

BLOCK = 3
WANT = {"in1": 0, "in2": 4}
HIT, MISS = 0.9, 0.1

Probs = tuple[list[float], list[float]]


def input_probs(c: MutationController, g: Genotype, slot: str) -> torch.Tensor:
    """P(candidate | slot) of the toy's block."""
    states = c.encode(g)
    candidates = c.input_candidates(states, BLOCK)
    return torch.softmax(c.input_logits(states[5 * BLOCK + SLOTS.index(slot)], candidates), 0)


def _both(c: MutationController, g: Genotype) -> Probs:
    with torch.no_grad():
        return input_probs(c, g, "in1").tolist(), input_probs(c, g, "in2").tolist()


def reinforce(config: ControllerConfig, seed: int, episodes: int) -> Probs:
    """The real ControllerTrainer, one sampled episode per update; the toy block's slot is
    set to IN1 and IN2 in turn (the rest of the mutation is the controller's sample)."""
    g = parse("renasnet")
    trainer = ControllerTrainer.fresh(config, seed=seed)
    c = trainer.controller
    rng = random.Random(seed)
    for i in range(episodes):
        slot = ("in1", "in2")[i % 2]
        actions, _, _ = c.sample(g, rng)
        with torch.no_grad():
            p = input_probs(c, g, slot).tolist()
        value = rng.choices(range(len(p)), weights=p)[0]
        actions[BLOCK] = Action(BLOCK, slot, value)
        fitness = HIT if value == WANT[slot] else MISS
        trainer.update([Episode(g, actions, c.log_prob(g, actions), fitness)])
    return _both(c, g)


def exact(config: ControllerConfig, seed: int, steps: int) -> Probs:
    """Adam on the exact expected reward sum_j p(j | slot) tan(f_j pi/2) of both slots: no
    sampling noise, so what the scorer can reach at all."""
    g = parse("renasnet")
    c = ControllerTrainer.fresh(config, seed=seed).controller
    reward = {s: torch.tensor([config.tan_fitness(HIT if j == WANT[s] else MISS)
                               for j in range(BLOCK + 2)]) for s in WANT}
    opt = torch.optim.Adam(c.parameters(), lr=config.lr)
    for _ in range(steps):
        loss = -torch.stack([(input_probs(c, g, s) * reward[s]).sum() for s in WANT]).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return _both(c, g)


def separation(p1: list[float], p2: list[float]) -> float:
    """min(P1(0) - P2(0), P2(4) - P1(4)): 1 when both slots are certain of their own
    input, 0 when they rank the candidates alike."""
    a, b = WANT["in1"], WANT["in2"]
    return min(p1[a] - p2[a], p2[b] - p1[b])


def learnt(p1: list[float], p2: list[float], level: float = 0.8) -> bool:
    """Both slots put at least `level` on their own input."""
    return p1[WANT["in1"]] >= level and p2[WANT["in2"]] >= level
