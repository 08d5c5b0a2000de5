"""Pure selection logic of one evolution step (Algorithm 1): no database, no torch."""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """An alive individual eligible for a tournament; larger id = younger. A quarantined
    one (its checkpoint is missing or damaged) may be sampled and removed, never be the
    parent."""
    id: int
    fitness: float
    quarantined: bool = False


@dataclass(frozen=True)
class Tournament:
    sample: tuple[int, ...]
    parent_id: int
    victim_id: int


def step_rng(search_seed: int, step_index: int, redraw: int = 0) -> random.Random:
    """The same (seed, step) always draws the same sample, whichever worker creates it;
    `redraw` k > 0 is the step's k-th fallback draw (deterministic as well)."""
    suffix = f":redraw{redraw}" if redraw else ""
    return random.Random(f"renas-step:{search_seed}:{step_index}{suffix}")


def tournament(candidates: Sequence[Candidate], sample_size: int, removal: str,
               rng: random.Random) -> Tournament | None:
    """Sample S candidates; the parent is the best not quarantined (ties: the oldest). The
    victim is the worst of the rest of the sample (ties: the youngest) for removal=worst,
    or the oldest eligible individual for removal=oldest (regularized evolution). None
    if every sampled candidate is quarantined."""
    if sample_size < 2 or len(candidates) < sample_size:
        raise ValueError(f"need {sample_size} >= 2 candidates, have {len(candidates)}")
    pool = sorted(candidates, key=lambda c: c.id)
    sample = rng.sample(pool, sample_size)
    parents = [c for c in sample if not c.quarantined]
    if not parents:
        return None
    parent = max(parents, key=lambda c: (c.fitness, -c.id))
    if removal == "worst":
        victim = min((c for c in sample if c is not parent), key=lambda c: (c.fitness, -c.id))
    elif removal == "oldest":
        victim = pool[0]
    else:
        raise ValueError(f"unknown removal {removal!r}")
    return Tournament(tuple(c.id for c in sample), parent.id, victim.id)
