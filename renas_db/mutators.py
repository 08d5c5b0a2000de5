"""Three ways to mutate a parent, one action format: renas, random, single.

`MUTATORS` is the registry every other module reads (config choices, studies, the
executor), so adding a mutator is a class and one entry here.
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from renas_db.errors import ConfigError
from renas_db.space import OPS, SLOTS, Action, Genotype

if TYPE_CHECKING:
    from renas_db.controller import ControllerTrainer


@dataclass(frozen=True)
class Proposal:
    actions: list[Action]
    log_prob: float
    entropy: float
    controller_version: int | None


class Mutator(Protocol):
    name: str

    def propose(self, genotype: Genotype, rng: random.Random) -> Proposal: ...


def _choices(genotype: Genotype, block: int, slot: str) -> int:
    return block + 2 if slot.startswith("in") else len(OPS)


class RandomMutator:
    """The paper's baseline EA: the same 2B decisions as the controller, all uniform."""
    name = "random"

    def propose(self, genotype: Genotype, rng: random.Random) -> Proposal:
        actions, log_prob = [], 0.0
        for b in range(genotype.n_blocks):
            slot = SLOTS[rng.randrange(4)]
            n = _choices(genotype, b, slot)
            actions.append(Action(b, slot, rng.randrange(n)))
            log_prob += -math.log(4) - math.log(n)
        entropy = -log_prob  # uniform decisions: entropy equals -log p of any outcome
        return Proposal(actions, log_prob, entropy, None)


class SingleMutator:
    """Regularized evolution's mutation: one uniform slot set to a different value."""
    name = "single"

    def propose(self, genotype: Genotype, rng: random.Random) -> Proposal:
        b = rng.randrange(genotype.n_blocks)
        slot = SLOTS[rng.randrange(4)]
        n = _choices(genotype, b, slot)
        current = getattr(genotype.blocks[b], slot)
        value = rng.randrange(n - 1)
        value = value + 1 if value >= current else value
        log_prob = -math.log(genotype.n_blocks) - math.log(4) - math.log(n - 1)
        return Proposal([Action(b, slot, value)], log_prob, -log_prob, None)


class RenasMutator:
    """The reinforced mutation controller of one snapshot version."""
    name = "renas"

    def __init__(self, trainer: ControllerTrainer) -> None:
        self.trainer = trainer

    def propose(self, genotype: Genotype, rng: random.Random) -> Proposal:
        actions, log_prob, entropy = self.trainer.controller.sample(genotype, rng)
        return Proposal(actions, log_prob, entropy, self.trainer.version)


def _renas(trainer: ControllerTrainer | None) -> Mutator:
    if trainer is None:
        raise ValueError("the renas mutator needs the search's controller trainer")
    return RenasMutator(trainer)


@dataclass(frozen=True)
class MutatorSpec:
    """A mutator by name. `factory` receives the search's controller trainer, or None for
    a mutator that does not train one; `trains_controller` tells the search to create
    snapshot 0 and the worker to run the policy update after each child."""
    name: str
    factory: Callable[[ControllerTrainer | None], Mutator]
    trains_controller: bool


MUTATORS: dict[str, MutatorSpec] = {spec.name: spec for spec in (
    MutatorSpec("renas", _renas, trains_controller=True),
    MutatorSpec("random", lambda trainer: RandomMutator(), trains_controller=False),
    MutatorSpec("single", lambda trainer: SingleMutator(), trains_controller=False),
)}


def mutator_spec(name: str) -> MutatorSpec:
    try:
        return MUTATORS[name]
    except KeyError:
        raise ConfigError(f"unknown mutator {name!r} (known: {', '.join(MUTATORS)})") from None


def mutation_rng(search_seed: int, job_id: int, attempt: int) -> random.Random:
    return random.Random(f"renas-mutate:{search_seed}:{job_id}:{attempt}")
