"""The pieces of a worker's fitness check (issue 19): the checkpoint store's probe, the
dataset file check of `search create`, --data-dir parsing, the device probe."""
from __future__ import annotations

import os

import pytest
import torch

from renas_db.checkpoints import CheckpointStore
from renas_db.config import SearchConfig
from renas_db.datasets import data_dir_for, dataset_info, parse_data_dirs
from renas_db.errors import CheckpointRootError, ConfigError, DataError, DeviceError
from renas_db.executor import TrainingExecutor
from renas_db.timings import Timings
from renas_db.train import probe_device
from tests.helpers import fashion_fixture


def test_probe_makes_the_folder_and_leaves_nothing(tmp_path):
    store = CheckpointStore(tmp_path / "ck")
    store.probe("s1")
    assert (tmp_path / "ck" / "s1").is_dir() and not os.listdir(tmp_path / "ck" / "s1")


def test_probe_of_a_root_that_cannot_exist(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointRootError, match="does not exist and cannot be created"):
        CheckpointStore(tmp_path / "file" / "ck").probe("s1")


def test_dataset_file_check(tmp_path):
    fashion = dataset_info("fashion-mnist")
    fashion.check_files(fashion_fixture(str(tmp_path / "f")))
    with pytest.raises(DataError, match="not found"):
        fashion.check_files(str(tmp_path / "nope"))
    (tmp_path / "bad").mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / "bad" / name).write_bytes(b"\x00\x00\x00\x00junk")
    with pytest.raises(DataError, match="bad magic"):
        fashion.check_files(str(tmp_path / "bad"))
    with pytest.raises(DataError, match="cifar10 needs --data-dir"):
        dataset_info("cifar10").check_files(None)
    with pytest.raises(DataError, match="data_batch_1 not found"):
        dataset_info("cifar10").check_files(str(tmp_path))
    dataset_info("synthetic").check_files(None)          # generated: nothing to read


def test_data_dir_overrides():
    # NAME=DIR only for a known dataset: another '=' is part of a folder's name
    assert parse_data_dirs(["cifar10=/c", "/x=y"]) == {"cifar10": "/c", "*": "/x=y"}
    dirs = parse_data_dirs(["/data", "cifar10=/c"])
    assert data_dir_for("cifar10", "/cfg", dirs) == "/c"
    assert data_dir_for("fashion-mnist", "/cfg", dirs) == "/data"
    assert data_dir_for("fashion-mnist", "/cfg", {}) == "/cfg"
    with pytest.raises(ConfigError, match="every dataset is given already"):
        parse_data_dirs(["/a", "/b"])


def test_training_executor_check_reads_this_hosts_data_dir(tmp_path):
    config = SearchConfig.from_dict({"dataset": "fashion-mnist",
                                     "data_dir": fashion_fixture(str(tmp_path / "f"))})
    TrainingExecutor("cpu", 1, None, Timings()).check(config)
    with pytest.raises(DataError, match="nope"):
        TrainingExecutor("cpu", 1, None, Timings(),
                         {"*": str(tmp_path / "nope")}).check(config)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_probe_of_a_device_that_does_not_work():
    # CUDA is not usable here, as on a host whose driver is gone: the probe says so
    with pytest.raises(DeviceError, match="device cuda:0 does not work"):
        probe_device(torch.device("cuda", 0))
    probe_device(torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_probe_of_a_working_gpu():
    probe_device(torch.device("cuda", 0))
