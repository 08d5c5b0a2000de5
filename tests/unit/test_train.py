from __future__ import annotations

import threading

import pytest
import torch

from renas_db.data import make_synthetic
from renas_db.errors import DeviceError, TrainingStopped
from renas_db.inherit import inherit, param_groups
from renas_db.network import Network, spec_for
from renas_db.space import Action, parse
from renas_db.train import (
    evaluate,
    fine_tune,
    prepare,
    resolve_device,
    seeded_generator,
    train_from_scratch,
)

CPU = torch.device("cpu")
SPEC = spec_for("synthetic", cells=1, filters=4)


@pytest.fixture(scope="module")
def data():
    return make_synthetic(seed=0)


@pytest.fixture(scope="module")
def trained(data):
    torch.manual_seed(0)
    g = parse("renasnet")
    net = prepare(Network(g, SPEC), CPU)
    r = train_from_scratch(net, data, device=CPU, epochs=0.5, lr=0.2, batch_size=32,
                           drop_path=0.2, cutout=4, test=True,
                           generator=seeded_generator(0))
    return g, net, r


def test_train_from_scratch_beats_chance_by_far(trained):
    _, _, r = trained
    assert r.val_accuracy > 0.5 and r.test_accuracy > 0.5  # chance is 0.1
    assert r.examples_seen == 2000


def test_inherited_child_starts_from_the_parent_not_from_chance(trained, data):
    g, parent, _ = trained
    child_g = g.apply([Action(4, "op2", 4)])  # a small mutation: sep3 -> max pool
    child = Network(child_g, SPEC)
    report = inherit(g, parent.state_dict(), child)
    child = prepare(child, CPU)
    before, _ = evaluate(child, data.val, data, device=CPU)
    fresh = prepare(Network(child_g, SPEC), CPU)
    fresh_acc, _ = evaluate(fresh, data.val, data, device=CPU)
    assert before > 0.3 and fresh_acc < 0.25
    r = fine_tune(child, param_groups(child, report, 0.01, 0.001), data, device=CPU,
                  batch_size=32, examples=256, generator=seeded_generator(1))
    assert r.examples_seen == 256
    after, _ = evaluate(child, data.val, data, device=CPU)
    assert after > 0.3


def test_stop_flag_stops_within_one_batch(data):
    net = prepare(Network(parse("renasnet"), SPEC), CPU)
    stop = threading.Event()
    seen = []

    def progress(done, total):
        seen.append(done)
        if done >= 96:
            stop.set()
    groups = [{"params": list(net.parameters()), "lr": 0.01}]
    with pytest.raises(TrainingStopped, match="after 96 examples"):
        fine_tune(net, groups, data, device=CPU, batch_size=32, examples=2048,
                  progress=progress, stop=stop)
    assert seen == [32, 64, 96]


def test_missing_cuda_device_is_a_clear_error():
    with pytest.raises(DeviceError):
        resolve_device("cuda:99")
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("tpu")
