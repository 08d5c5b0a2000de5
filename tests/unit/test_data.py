from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
import pytest
import torch

from renas_db.data import Augment, augment_batch, load_cifar10, load_fashion_mnist, make_synthetic
from renas_db.errors import DataError
from tests.helpers import fashion_fixture as _fashion
from tests.helpers import idx_images as _idx_images


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_reader_on_fixture_files(tmp_path, gz):
    d = load_fashion_mnist(_fashion(str(tmp_path / "f"), gz=gz))
    assert len(d.train) + len(d.val) == 50 and len(d.val) == 5 and len(d.test) == 20
    assert d.train.images.dtype == torch.uint8 and d.train.images.shape[1:] == (1, 28, 28)
    again = load_fashion_mnist(str(tmp_path / "f"))
    assert torch.equal(again.val.labels, d.val.labels)  # the validation split is fixed


@pytest.mark.parametrize("damage, needle", [
    ("missing", "not found"),
    ("magic", "bad magic"),
    ("truncated", "truncated"),
    ("gzip", "damaged"),
    ("count", "images but"),
])
def test_damaged_fashion_files_are_clear_errors(tmp_path, damage, needle):
    folder = _fashion(str(tmp_path / "f"))
    img = os.path.join(folder, "train-images-idx3-ubyte.gz")
    if damage == "missing":
        os.remove(img)
    elif damage == "magic":
        with gzip.open(img, "wb") as fh:
            fh.write(b"\x00\x00\x09\x99" + _idx_images(50)[4:])
    elif damage == "truncated":
        with gzip.open(img, "wb") as fh:
            fh.write(_idx_images(50)[:-100])
    elif damage == "gzip":
        with open(img, "r+b") as fh:
            fh.seek(20)
            fh.write(b"garbage" * 10)
    elif damage == "count":
        with gzip.open(img, "wb") as fh:
            fh.write(_idx_images(49))
    with pytest.raises(DataError) as e:
        load_fashion_mnist(folder)
    assert needle in str(e.value)
    assert folder in str(e.value) and "apt-get install dataset-fashion-mnist" in str(e.value)


def _cifar_batch(path, n, seed):
    rng = np.random.default_rng(seed)
    batch = {b"batch_label": b"training batch", b"labels": [int(x) for x in rng.integers(0, 10, n)],
             b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             b"filenames": [b"x.png"] * n}
    with open(path, "wb") as fh:
        pickle.dump(batch, fh, protocol=2)


def _cifar(folder):
    os.makedirs(folder, exist_ok=True)
    for i in range(1, 6):
        _cifar_batch(os.path.join(folder, f"data_batch_{i}"), 20, i)
    _cifar_batch(os.path.join(folder, "test_batch"), 10, 9)
    return folder


def test_cifar_reader_on_files_in_the_real_format(tmp_path):
    _cifar(str(tmp_path / "cifar-10-batches-py"))
    d = load_cifar10(str(tmp_path))
    assert len(d.train) == 90 and len(d.val) == 10 and len(d.test) == 10
    assert d.train.images.shape[1:] == (3, 32, 32)
    raw = pickle.load(open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb"))
    assert torch.equal(d.test.images[0].flatten(), torch.from_numpy(raw[b"data"][0]))


def test_damaged_or_hostile_cifar_is_refused_without_running_code(tmp_path):
    folder = _cifar(str(tmp_path / "c"))
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    with open(os.path.join(folder, "data_batch_3"), "wb") as fh:
        pickle.dump({b"data": Evil(), b"labels": []}, fh)
    with pytest.raises(DataError, match="data_batch_3"):
        load_cifar10(folder)
    assert not marker.exists()
    _cifar(folder)
    os.remove(os.path.join(folder, "test_batch"))
    with pytest.raises(DataError, match="test_batch not found"):
        load_cifar10(folder)
    with open(os.path.join(folder, "test_batch"), "wb") as fh:
        pickle.dump({b"data": np.zeros((3, 100), np.uint8), b"labels": [0, 1, 2]}, fh)
    with pytest.raises(DataError, match="3072"):
        load_cifar10(folder)
    with pytest.raises(DataError, match="--data-dir"):
        load_cifar10(None)


def test_augmentation_is_batched_and_shape_preserving():
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.uint8).view(2, 1, 8, 8)
    g = torch.Generator().manual_seed(0)
    y = augment_batch(x, Augment(pad=2, flip=True, cutout=4), g)
    assert y.shape == x.shape and y.dtype == torch.uint8
    same = augment_batch(x, Augment(), g)
    assert torch.equal(same, x)
    flipped = augment_batch(x, Augment(flip=True), torch.Generator().manual_seed(3))
    for i in range(2):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(2))
    holes = augment_batch(torch.full((4, 1, 16, 16), 255, dtype=torch.uint8),
                          Augment(cutout=4), g)
    assert ((holes == 0).flatten(1).sum(1) > 0).all()


def test_synthetic_is_deterministic():
    a, b = make_synthetic(seed=3), make_synthetic(seed=3)
    assert torch.equal(a.train.images, b.train.images)
    assert a.train.images.shape[1:] == (1, 16, 16)
