"""Deriving architectures: retrain cells from scratch with the full recipe, as jobs."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from renas_db.config import SearchConfig
from renas_db.datasets import dataset_info
from renas_db.db import admin
from renas_db.db.session import Store
from renas_db.errors import ConfigError, GenotypeError, NotFoundError, StateError
from renas_db.space import parse


@dataclass(frozen=True)
class RetrainRecipe:
    """train_from_scratch's settings (paper: aux 0.4, drop-path 0.4, dropout 0.2)."""
    epochs: float = 1.0
    lr: float = 0.05
    batch_size: int = 64
    dataset: str | None = None        # default: the search's
    data_dir: str | None = None
    cells: int | None = None          # default: the search's (the paper retrains larger)
    filters: int | None = None
    cutout: int = 0
    drop_path: float = 0.4
    aux_weight: float = 0.4
    dropout: float = 0.2
    weight_decay: float = 3e-4
    train_subset: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.epochs <= 10000:
            raise ConfigError(f"epochs must be in (0, 10000], got {self.epochs}")
        if self.batch_size < 1 or self.lr < 0:
            raise ConfigError("batch size must be >= 1 and lr >= 0")
        if not 0 <= self.drop_path < 1 or not 0 <= self.dropout < 1:
            raise ConfigError("drop-path and dropout must be in [0, 1)")
        if self.dataset is not None:
            dataset_info(self.dataset)  # raises ConfigError naming the known datasets
        if self.cutout < 0 or (self.cells is not None and self.cells < 1) or \
                (self.filters is not None and self.filters < 2):
            raise ConfigError("cutout >= 0, cells >= 1 and filters >= 2")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RetrainRecipe:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def queue_from_search(store: Store, name: str, recipe: RetrainRecipe,
                      top: int | None) -> list[int]:
    sources = admin.retrain_sources(store, name, top)
    if not sources:
        raise StateError(f"search {name!r} has no alive individuals to retrain yet")
    return admin.queue_retrain(store, name, sources, recipe.to_dict())


def queue_genotype(store: Store, name: str, genotype_source: str, recipe: RetrainRecipe,
                   config: SearchConfig) -> list[int]:
    """Retrain a given cell (a preset name, genotype text or an export file) without a
    search: a retrain-only search named `name` holds the job."""
    path = Path(genotype_source)
    if path.suffix == ".json" or path.is_file():
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise NotFoundError(f"genotype file not found: {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise GenotypeError(f"{path} is not JSON: {exc}") from None
        genotype = parse(doc.get("genotype", doc) if isinstance(doc, dict) else doc)
    else:
        genotype = parse(genotype_source)
    config = config.replace(blocks=genotype.n_blocks)
    admin.create_retrain_search(store, name, config)
    return admin.queue_retrain(store, name, [(None, genotype.to_text())], recipe.to_dict())
