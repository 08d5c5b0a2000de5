"""Datasets as in-memory uint8 tensors, and batched on-device augmentation.

No DataLoader and no per-image Python: a batch is an index slice, augmented as a whole.
"""
from __future__ import annotations

import gzip
import pickle
import struct
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from renas_db.data_files import CIFAR_HINT, FASHION_HINT, cifar_folder
from renas_db.datasets import DatasetInfo, dataset_info
from renas_db.errors import DataError

VALIDATION_SEED = 12345  # the validation split is the same for every search


@dataclass(frozen=True)
class Split:
    images: torch.Tensor   # uint8, N x C x H x W
    labels: torch.Tensor   # int64, N

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device) -> Split:
        return Split(self.images.to(device), self.labels.to(device))

    def head(self, n: int | None) -> Split:
        return self if n is None or n >= len(self) else Split(self.images[:n], self.labels[:n])


@dataclass(frozen=True)
class Augment:
    pad: int = 0
    flip: bool = False
    cutout: int = 0


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: Augment

    @property
    def in_channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[2])

    def to(self, device: torch.device) -> Dataset:
        return replace(self, train=self.train.to(device), val=self.val.to(device),
                       test=self.test.to(device))


# -- readers ----------------------------------------------------------------------------
def _read_maybe_gz(folder: Path, stem: str, hint: str) -> bytes:
    for name in (stem + ".gz", stem):
        path = folder / name
        if path.exists():
            try:
                data = path.read_bytes()
                return gzip.decompress(data) if name.endswith(".gz") else data
            except (OSError, EOFError, gzip.BadGzipFile) as exc:
                raise DataError(f"{path} is damaged ({exc}); {hint}") from None
    raise DataError(f"{folder / (stem + '.gz')} not found; {hint}")


def read_idx(data: bytes, path: str, images: bool) -> torch.Tensor:
    magic = 2051 if images else 2049
    header = 16 if images else 8
    if len(data) < header or struct.unpack(">I", data[:4])[0] != magic:
        raise DataError(f"{path} is not an idx {'image' if images else 'label'} file "
                        f"(bad magic); {FASHION_HINT}")
    n = struct.unpack(">I", data[4:8])[0]
    rows, cols = struct.unpack(">II", data[8:16]) if images else (1, 1)
    if len(data) != header + n * rows * cols:
        raise DataError(f"{path} is truncated or has trailing bytes ({len(data)} bytes, "
                        f"header says {n} items); {FASHION_HINT}")
    t = torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8)
    return t.view(n, 1, rows, cols).clone() if images else t.long().clone()


def _split_validation(images: torch.Tensor, labels: torch.Tensor, n_val: int
                      ) -> tuple[Split, Split]:
    g = torch.Generator().manual_seed(VALIDATION_SEED)
    perm = torch.randperm(len(labels), generator=g)
    val, train = perm[:n_val], perm[n_val:]
    return Split(images[train], labels[train]), Split(images[val], labels[val])


def augment_for(info: DatasetInfo) -> Augment:
    return Augment(pad=info.augment_pad, flip=info.augment_flip)


def load_fashion_mnist(data_dir: str | None) -> Dataset:
    info = dataset_info("fashion-mnist")
    folder = Path(data_dir or info.default_dir or ".")
    parts = {}
    for key, stem, images in (("xtr", "train-images-idx3-ubyte", True),
                              ("ytr", "train-labels-idx1-ubyte", False),
                              ("xte", "t10k-images-idx3-ubyte", True),
                              ("yte", "t10k-labels-idx1-ubyte", False)):
        parts[key] = read_idx(_read_maybe_gz(folder, stem, FASHION_HINT),
                              str(folder / stem), images)
    for x, y in (("xtr", "ytr"), ("xte", "yte")):
        if len(parts[x]) != len(parts[y]):
            raise DataError(f"{folder}: {len(parts[x])} images but {len(parts[y])} labels; "
                            f"{FASHION_HINT}")
        if len(parts[y]) and int(parts[y].max()) >= info.num_classes:
            raise DataError(f"{folder}: labels out of range 0..{info.num_classes - 1}; "
                            f"{FASHION_HINT}")
    n_val = min(5000, len(parts["ytr"]) // 10 or 1)
    train, val = _split_validation(parts["xtr"], parts["ytr"], n_val)
    return Dataset(info.name, train, val, Split(parts["xte"], parts["yte"]),
                   (0.2860,), (0.3530,), augment_for(info))


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR's python batches are pickles: allow only numpy array reconstruction, so a
    hostile file cannot run code."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"),
               ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"forbidden global {module}.{name}")


def _read_cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        with path.open("rb") as fh:
            batch = _NumpyOnlyUnpickler(fh, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"{path} not found; {CIFAR_HINT}") from None
    except Exception as exc:
        raise DataError(f"{path} is damaged or not a CIFAR-10 batch ({exc}); "
                        f"{CIFAR_HINT}") from None
    try:
        data = batch.get(b"data", batch.get("data"))
        labels = batch.get(b"labels", batch.get("labels"))
        data = np.asarray(data, dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != data.shape[0]:
            raise ValueError("expected N x 3072 uint8 data and N labels")
        x = torch.from_numpy(data.copy()).view(-1, 3, 32, 32)
        y = torch.tensor(list(labels), dtype=torch.long)
        if len(y) and (int(y.min()) < 0 or int(y.max()) > 9):
            raise ValueError("labels out of range 0..9")
    except Exception as exc:
        raise DataError(f"{path} is not a CIFAR-10 batch ({exc}); {CIFAR_HINT}") from None
    return x, y


def load_cifar10(data_dir: str | None) -> Dataset:
    info = dataset_info("cifar10")
    folder = cifar_folder(data_dir)
    xs, ys = zip(*(_read_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)))
    x, y = torch.cat(xs), torch.cat(ys)
    xt, yt = _read_cifar_batch(folder / "test_batch")
    n_val = min(5000, len(y) // 10 or 1)
    train, val = _split_validation(x, y, n_val)
    return Dataset(info.name, train, val, Split(xt, yt), (0.4914, 0.4822, 0.4465),
                   (0.2470, 0.2435, 0.2616), augment_for(info))


def make_synthetic(n_train: int = 4000, n_val: int = 1000, n_test: int = 1000,
                   size: int = 16, channels: int = 1, classes: int = 10,
                   seed: int = 0) -> Dataset:
    """Learnable images: per-class blocky templates with per-image contrast, a one-pixel
    jitter and noise. A tiny network beats chance (0.1) within a few hundred examples."""
    g = torch.Generator().manual_seed(seed)
    low = (torch.rand(classes, channels, 4, 4, generator=g) > 0.5).float()
    templates = torch.nn.functional.interpolate(low, size=(size, size), mode="nearest")

    def split(n: int) -> Split:
        labels = torch.randint(classes, (n,), generator=g)
        x = templates[labels]
        shift = torch.randint(-1, 2, (n,), generator=g)
        x = torch.where((shift != 0).view(n, 1, 1, 1),
                        torch.roll(x, shifts=1, dims=3), x)
        x = x * (0.6 + 0.4 * torch.rand(n, 1, 1, 1, generator=g))
        x = x + 0.15 * torch.randn(x.shape, generator=g)
        return Split((x.clamp(0, 1) * 255).to(torch.uint8), labels)

    return Dataset("synthetic", split(n_train), split(n_val), split(n_test),
                   (0.4,) * channels, (0.4,) * channels, augment_for(dataset_info("synthetic")))


def load_synthetic(data_dir: str | None) -> Dataset:
    """The registry's synthetic dataset: its shape comes from the registry entry."""
    info = dataset_info("synthetic")
    return make_synthetic(size=info.image_size, channels=info.in_channels,
                          classes=info.num_classes)


_CACHE: dict[tuple[str, str | None], Dataset] = {}


def load_dataset(name: str, data_dir: str | None = None) -> Dataset:
    """The named dataset, loaded once per process; unknown names raise ConfigError."""
    key = (name, data_dir)
    if key not in _CACHE:
        info = dataset_info(name)
        data = info.load_function()(data_dir)
        # The network is built from the registry's shape (network.spec_for), not from the
        # tensors: a mismatch would otherwise surface as a shape error deep in a conv.
        if (data.in_channels, data.image_size) != (info.in_channels, info.image_size):
            raise DataError(f"{name}: images are {data.in_channels}x{data.image_size}x"
                            f"{data.image_size}, the registry says {info.in_channels}x"
                            f"{info.image_size}x{info.image_size}; check --data-dir or the "
                            f"entry in renas_db/datasets.py")
        _CACHE[key] = data
    return _CACHE[key]


# -- batches and augmentation -------------------------------------------------------------
def batches(n: int, batch_size: int, generator: torch.Generator | None, *,
            examples: int | None = None) -> Iterator[torch.Tensor]:
    """Index batches over a split: shuffled (with a generator) and cut at `examples`."""
    total = n if examples is None else examples
    done = 0
    while done < total:
        order = (torch.randperm(n, generator=generator) if generator is not None
                 else torch.arange(n))
        for start in range(0, n, batch_size):
            take = min(batch_size, total - done, n - start)
            if take <= 0:
                return
            yield order[start:start + take]
            done += take


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small per-batch CPU tensor (indices, augmentation draws) on `device`: on a GPU
    copied from pinned memory without blocking, so the host runs ahead of the kernels
    (torch's pinned-memory allocator keeps the buffer until the copy is done)."""
    if device.type != "cuda" or t.device == device:
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def normalise(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1) * 255.0
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1) * 255.0
    return (x.float() - m) / s


def augment_batch(x: torch.Tensor, augment: Augment, generator: torch.Generator | None = None
                  ) -> torch.Tensor:
    """Pad-and-crop, horizontal flip and cutout on a whole uint8 batch, on its device."""
    n, c, h, w = x.shape
    dev = x.device
    if augment.pad:
        p = augment.pad
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        dy = to_device(torch.randint(0, 2 * p + 1, (n, 1), generator=generator), dev)
        dx = to_device(torch.randint(0, 2 * p + 1, (n, 1), generator=generator), dev)
        rows = (dy + torch.arange(h, device=dev)).view(n, 1, h, 1)
        cols = (dx + torch.arange(w, device=dev)).view(n, 1, 1, w)
        idx_n = torch.arange(n, device=dev).view(n, 1, 1, 1)
        idx_c = torch.arange(c, device=dev).view(1, c, 1, 1)
        x = padded[idx_n, idx_c, rows, cols]
    if augment.flip:
        flip = to_device(torch.rand(n, generator=generator) < 0.5, dev).view(n, 1, 1, 1)
        x = torch.where(flip, x.flip(3), x)
    if augment.cutout:
        half = augment.cutout // 2
        cy = to_device(torch.randint(0, h, (n, 1, 1, 1), generator=generator), dev)
        cx = to_device(torch.randint(0, w, (n, 1, 1, 1), generator=generator), dev)
        ys = torch.arange(h, device=dev).view(1, 1, h, 1)
        xs = torch.arange(w, device=dev).view(1, 1, 1, w)
        hole = ((ys - cy).abs() <= half) & ((xs - cx).abs() <= half)
        x = x.masked_fill(hole, 0)
    return x
