"""The validated search configuration.

Every field carries its range and help text in one place; validation, the TOML
loader and the CLI options are all derived from that metadata.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from renas_db import store_roots
from renas_db.datasets import DATASETS
from renas_db.errors import ConfigError
from renas_db.mutators import MUTATORS

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib


def _f(default: Any, help: str, *, lo: float | None = None, hi: float | None = None,
       choices: tuple[str, ...] | None = None, optional: bool = False) -> Any:
    return field(default=default, metadata={
        "help": help, "lo": lo, "hi": hi, "choices": choices, "optional": optional})


@dataclass(frozen=True)
class SearchConfig:
    population: int = _f(20, "population size P", lo=2, hi=100000)
    sample: int = _f(5, "tournament sample size S", lo=2, hi=100000)
    steps: int = _f(4000, "evolution steps E (children after the initial population)",
                    lo=0, hi=10**9)
    mutator: str = _f("renas", "how children are mutated",
                      choices=tuple(MUTATORS))
    removal: str = _f("worst", "which individual a step removes", choices=("worst", "oldest"))
    victim: str = _f("commit", "when a step's victim is chosen: at its commit (no limit on "
                     "steps in flight) or reserved at its claim (at most P-S+1 in flight)",
                     choices=("commit", "claim"))
    blocks: int = _f(5, "blocks per cell B", lo=1, hi=12)
    cells: int = _f(2, "cells per stage N during the search", lo=1, hi=12)
    filters: int = _f(24, "filters of the first stage F", lo=2, hi=1024)
    dataset: str = _f("fashion-mnist", "dataset name", choices=tuple(DATASETS))
    data_dir: str | None = _f(None, "dataset folder (default: the dataset's standard place)",
                              optional=True)
    train_subset: int | None = _f(None, "use only this many training examples", lo=1,
                                  optional=True)
    val_examples: int | None = _f(None, "evaluate fitness on this many validation examples",
                                  lo=1, optional=True)
    finetune_examples: int | None = _f(None, "examples per child fine-tune (default one pass)",
                                       lo=1, optional=True)
    init_epochs: float = _f(1.0, "epochs to train each initial individual", lo=0.001, hi=1000)
    init_lr: float = _f(0.05, "initial learning rate of the initial population (cosine)",
                        lo=0.0, hi=10)
    batch_size: int = _f(64, "training batch size", lo=1, hi=65536)
    lr_new: float = _f(0.01, "fine-tune learning rate of new parameters", lo=0.0, hi=10)
    lr_inherited: float = _f(0.001, "fine-tune learning rate of inherited parameters",
                             lo=0.0, hi=10)
    momentum: float = _f(0.9, "SGD momentum", lo=0.0, hi=0.999999)
    weight_decay: float = _f(3e-4, "SGD weight decay", lo=0.0, hi=1.0)
    lease_seconds: float = _f(120.0, "a job whose heartbeat is older than this is reclaimed",
                              lo=0.5, hi=86400 * 7)
    max_attempts: int = _f(5, "a job failing this many times is dead", lo=1, hi=1000)
    retry_backoff_seconds: float = _f(3.0, "a failed job waits this long before its next "
                                      "attempt, doubling per attempt (3, 6, 12, 24 s: five "
                                      "attempts span 45 s)", lo=0.0, hi=86400)
    retry_backoff_max_seconds: float = _f(300.0, "cap of the retry wait", lo=0.0, hi=86400 * 7)
    stall_seconds: float = _f(1800.0, "a running job whose progress stands still this long "
                              "is given up (by its worker, else by the sweep)",
                              lo=0.5, hi=86400 * 7)
    seed: int = _f(0, "search seed (initial population, tournaments, controller)",
                   lo=0, hi=2**31 - 1)
    init_seed: int | None = _f(None, "seed of the initial population only (default: seed)",
                               lo=0, hi=2**31 - 1, optional=True)
    checkpoint_root: str = _f("checkpoints", "checkpoint store: a folder every worker "
                              "sees, or s3://bucket/prefix (object storage; renas-db[s3])")
    controller_hidden: int = _f(100, "controller embedding and LSTM hidden size", lo=1, hi=4096)
    controller_lr: float = _f(1e-3, "controller Adam learning rate", lo=0.0, hi=1.0)
    entropy_weight: float = _f(0.1, "controller entropy bonus", lo=0.0, hi=100)
    baseline_decay: float = _f(0.95, "controller reward moving-average decay", lo=0.0, hi=1.0)
    temperature: float = _f(5.0, "controller logit temperature", lo=1e-6, hi=1e6)
    tanh_constant: float = _f(2.5, "controller tanh constant", lo=1e-6, hi=1e6)
    ratio_clip: float = _f(0.2, "clip of the importance ratio for stale episodes",
                           lo=0.0, hi=10)
    controller_batch: int = _f(1, "episodes folded into one controller update (1 = the "
                               "paper: one step per child)", lo=1, hi=100000)
    reward: str = _f("child", "controller reward: child = tan(f_C pi/2) (the paper), gain = "
                     "tan(f_C pi/2) - tan(f_B pi/2) (relative to the parent)",
                     choices=("child", "gain"))
    bn_batches: int = _f(16, "training batches that re-estimate batch-norm statistics "
                         "before every evaluation (0 = keep the running statistics)",
                         lo=0, hi=100000)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = _coerce(f, getattr(self, f.name))  # 600 is fine where 600.0 is meant
            object.__setattr__(self, f.name, value)
            _check(f, value)
        if self.sample > self.population:
            raise ConfigError(
                f"sample ({self.sample}) must not exceed population ({self.population})")
        store_roots.check(self.checkpoint_root)

    # -- conversions -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SearchConfig:
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown config key {unknown[0]!r} "
                              f"(known: {', '.join(sorted(known))})")
        return cls(**{k: _coerce(known[k], v) for k, v in values.items()})

    @classmethod
    def from_toml(cls, path: str | Path) -> SearchConfig:
        return cls.from_dict(load_toml(path))

    def replace(self, **changes: Any) -> SearchConfig:
        return self.from_dict({**self.to_dict(), **changes})

    @property
    def population_seed(self) -> int:
        """The seed of the initial population: its genotypes, their replacements and
        the training of its networks (init_seed, default the search seed)."""
        return self.seed if self.init_seed is None else self.init_seed


def load_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
    # accept either top-level keys or a [search] table
    if set(data) == {"search"} and isinstance(data["search"], dict):
        data = data["search"]
    return {k.replace("-", "_"): v for k, v in data.items()}


def option_fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(SearchConfig))


def field_type(f: dataclasses.Field) -> type:
    default = f.default
    if isinstance(default, bool):
        return bool
    if isinstance(default, int) and not isinstance(default, bool):
        return int
    if isinstance(default, float):
        return float
    t = str(f.type)
    if "int" in t:
        return int
    if "float" in t:
        return float
    return str


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    if value is None:
        return None
    t = field_type(f)
    if t is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _check(f: dataclasses.Field, value: Any) -> None:
    meta = f.metadata
    if value is None:
        if meta.get("optional"):
            return
        raise ConfigError(f"{f.name} must be set")
    t = field_type(f)
    ok = isinstance(value, t) and not (t is not bool and isinstance(value, bool))
    if t is float and isinstance(value, float) and not math.isfinite(value):
        ok = False
    if not ok:
        kind = "a number" if t is float else "an integer" if t is int else "a string"
        raise ConfigError(f"{f.name} must be {kind}, got {value!r}")
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"{f.name} must be one of {', '.join(meta['choices'])}, got {value!r}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and value < lo or hi is not None and value > hi:
        raise ConfigError(f"{f.name} must be between {lo:g} and {hi:g}, got {value!r}")
    if t is str and not value:
        raise ConfigError(f"{f.name} must not be empty")
