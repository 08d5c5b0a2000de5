"""Creating searches: the seeded initial population and controller snapshot 0."""
from __future__ import annotations

import random

from renas_db.config import SearchConfig
from renas_db.controller import ControllerTrainer, controller_config
from renas_db.db import admin
from renas_db.db.session import Store
from renas_db.errors import ConfigError
from renas_db.mutators import mutator_spec
from renas_db.space import random_genotype


def initial_genotypes(config: SearchConfig) -> list[str]:
    """P random genotypes; the same seed gives the same initial population."""
    rng = random.Random(f"renas-init:{config.population_seed}")
    return [random_genotype(config.blocks, rng).to_text() for _ in range(config.population)]


def create(store: Store, name: str, config: SearchConfig, study: str | None = None) -> int:
    if not name or len(name) > 200 or any(c.isspace() for c in name):
        raise ConfigError(f"search name must be 1-200 characters without spaces: {name!r:.60}")
    snapshot0 = None
    if mutator_spec(config.mutator).trains_controller:
        snapshot0 = ControllerTrainer.fresh(controller_config(config), seed=config.seed).to_bytes()
    return admin.create_search(store, name, config, initial_genotypes(config), snapshot0,
                                 study=study)
