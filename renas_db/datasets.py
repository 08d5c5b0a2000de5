"""The dataset registry: every dataset a search can name, described in one place.

The config choices, the retrain recipe, the CLI, the network shape and the loader all read
`DATASETS`, so adding a dataset is one entry here plus its loader function. Importing this
module never imports torch: the config and the CLI read it, and a `--help` should not pay
for torch. Loaders are named as "module:function" and imported only when called.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from renas_db.errors import ConfigError

if TYPE_CHECKING:
    from renas_db.data import Dataset


@dataclass(frozen=True)
class DatasetInfo:
    """What the rest of renas-db needs to know about a dataset without loading it.

    `loader` is "module:function"; the function takes the data folder (None when the user
    gave none) and returns a `renas_db.data.Dataset` whose images are
    in_channels x image_size x image_size with labels in 0..num_classes-1.
    """
    name: str
    in_channels: int
    image_size: int
    num_classes: int
    loader: str
    augment_pad: int              # pad-and-crop by up to this many pixels (0 = off)
    augment_flip: bool            # random horizontal flips (wrong for digits, right for photos)
    default_dir: str | None = None
    needs_data_dir: bool = False  # no standard place: the user must pass --data-dir
    description: str = ""
    # "module:function(data_dir, default_dir)" (no torch): raises DataError unless this
    # machine can read the files; None = nothing to read (generated data)
    checker: str | None = None

    def __post_init__(self) -> None:
        module, _, function = self.loader.partition(":")
        if not module or not function:
            raise ValueError(f"dataset {self.name!r}: loader must be 'module:function', "
                             f"got {self.loader!r}")
        if min(self.in_channels, self.image_size, self.num_classes) < 1 or self.augment_pad < 0:
            raise ValueError(f"dataset {self.name!r}: shape and classes must be positive")

    def load_function(self) -> Callable[[str | None], Dataset]:
        module, _, function = self.loader.partition(":")
        loader: Callable[[str | None], Dataset] = getattr(importlib.import_module(module),
                                                          function)
        return loader

    def check_files(self, data_dir: str | None) -> None:
        """DataError unless this machine can read the dataset's files (cheap: headers
        only, no torch)."""
        if self.checker:
            module, _, function = self.checker.partition(":")
            getattr(importlib.import_module(module), function)(data_dir, self.default_dir)


def _register(*infos: DatasetInfo) -> dict[str, DatasetInfo]:
    return {info.name: info for info in infos}


DATASETS: dict[str, DatasetInfo] = _register(
    DatasetInfo(
        name="fashion-mnist", in_channels=1, image_size=28, num_classes=10,
        loader="renas_db.data:load_fashion_mnist", augment_pad=2, augment_flip=True,
        default_dir="/usr/share/datasets/fashion-mnist",
        description="Fashion-MNIST, the four idx files (gzipped or not)",
        checker="renas_db.data_files:check_fashion_mnist"),
    DatasetInfo(
        name="cifar10", in_channels=3, image_size=32, num_classes=10,
        loader="renas_db.data:load_cifar10", augment_pad=4, augment_flip=True,
        needs_data_dir=True,
        description="CIFAR-10, the python batches of cifar-10-python.tar.gz",
        checker="renas_db.data_files:check_cifar10"),
    DatasetInfo(
        name="synthetic", in_channels=1, image_size=16, num_classes=10,
        loader="renas_db.data:load_synthetic", augment_pad=1, augment_flip=False,
        description="generated class templates, for tests and demos (no files)"),
)


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise ConfigError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})") from None


def data_dir_for(name: str, configured: str | None, overrides: Mapping[str, str]) -> str | None:
    """Where this host reads dataset `name`: a worker's `--data-dir NAME=DIR` for it, else
    its plain `--data-dir DIR`, else the folder the search (or recipe) names."""
    return overrides.get(name) or overrides.get("*") or configured


def parse_data_dirs(values: Sequence[str]) -> dict[str, str]:
    """`--data-dir` values: `DIR` (every dataset) or `NAME=DIR` (one dataset)."""
    dirs: dict[str, str] = {}
    for v in values:
        name, sep, folder = v.partition("=")
        if sep and name in DATASETS:
            dirs[name] = folder
        elif "*" in dirs:
            raise ConfigError(f"--data-dir {v!r}: a folder for every dataset is given already "
                              f"({dirs['*']!r}); use NAME=DIR for one dataset")
        else:
            dirs["*"] = v
    return dirs
