"""Whether this machine can read a dataset, without loading it (no torch): the files a
loader of renas_db/data.py reads are present, readable and start as they should.
`renas-db search create` runs this; a worker loads the dataset itself (Worker's fitness
check, docs/design.md 3.4)."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

from renas_db.errors import DataError

FASHION_HINT = ("install it with `apt-get install dataset-fashion-mnist` or point "
                "--data-dir at a folder with the four idx files")
CIFAR_HINT = ("download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, "
              "unpack it and pass --data-dir")
FASHION_FILES = (("train-images-idx3-ubyte", 2051), ("train-labels-idx1-ubyte", 2049),
                 ("t10k-images-idx3-ubyte", 2051), ("t10k-labels-idx1-ubyte", 2049))
CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


def check_fashion_mnist(data_dir: str | None, default_dir: str | None) -> None:
    folder = Path(data_dir or default_dir or ".")
    for stem, magic in FASHION_FILES:
        path = next((folder / n for n in (stem + ".gz", stem) if (folder / n).exists()),
                    None)
        if path is None:
            raise DataError(f"{folder / (stem + '.gz')} not found; {FASHION_HINT}")
        try:
            if path.name.endswith(".gz"):
                with gzip.open(path, "rb") as fh:
                    head = fh.read(4)
            else:
                with path.open("rb") as fh:
                    head = fh.read(4)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path} is unreadable ({exc}); {FASHION_HINT}") from None
        if len(head) < 4 or struct.unpack(">I", head)[0] != magic:
            raise DataError(f"{path} is not an idx file (bad magic); {FASHION_HINT}")


def cifar_folder(data_dir: str | None) -> Path:
    if not data_dir:
        raise DataError(f"cifar10 needs --data-dir; {CIFAR_HINT}")
    folder = Path(data_dir)
    return folder / "cifar-10-batches-py" if (folder / "cifar-10-batches-py").is_dir() \
        else folder


def check_cifar10(data_dir: str | None, default_dir: str | None) -> None:
    folder = cifar_folder(data_dir)
    for name in CIFAR_FILES:
        try:
            with (folder / name).open("rb") as fh:
                fh.read(1)
        except FileNotFoundError:
            raise DataError(f"{folder / name} not found; {CIFAR_HINT}") from None
        except OSError as exc:
            raise DataError(f"{folder / name} is unreadable ({exc}); {CIFAR_HINT}") from None
