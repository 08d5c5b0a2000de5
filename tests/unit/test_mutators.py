from __future__ import annotations

import math
import random
from collections import Counter

from renas_db.mutators import RandomMutator, SingleMutator
from renas_db.space import SLOTS, parse

G = parse("renasnet")


def _chi2(counts: Counter, expected: dict) -> float:
    return sum((counts.get(k, 0) - e) ** 2 / e for k, e in expected.items())


def test_random_is_uniform_per_decision():
    rng = random.Random(0)
    m = RandomMutator()
    slots, values = Counter(), Counter()
    n = 6000
    for _ in range(n):
        p = m.propose(G, rng)
        assert [a.block for a in p.actions] == list(range(5))
        slots[p.actions[2].slot] += 1
        if p.actions[2].slot == "in1":
            values[p.actions[2].value] += 1
        assert math.isclose(p.log_prob, sum(-math.log(4) - math.log(
            a.block + 2 if a.slot.startswith("in") else 6) for a in p.actions))
    # 3 degrees of freedom: 16.27 is the 0.1% critical value
    assert _chi2(slots, {s: n / 4 for s in SLOTS}) < 16.27
    k = sum(values.values())
    assert _chi2(values, {v: k / 4 for v in range(4)}) < 16.27  # block 2: inputs 0..3


def test_single_changes_exactly_one_slot_uniformly():
    rng = random.Random(1)
    m = SingleMutator()
    where = Counter()
    n = 6000
    for _ in range(n):
        p = m.propose(G, rng)
        assert len(p.actions) == 1
        a = p.actions[0]
        assert getattr(G.blocks[a.block], a.slot) != a.value
        child = G.apply(p.actions)
        assert child != G
        where[(a.block, a.slot)] += 1
    # 19 degrees of freedom: 43.82 is the 0.1% critical value
    assert _chi2(where, {(b, s): n / 20 for b in range(5) for s in SLOTS}) < 43.82
