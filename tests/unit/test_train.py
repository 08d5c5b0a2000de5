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


def test_recalibration_is_the_cumulative_average_and_restores_the_network(data):
    from renas_db.train import recalibrate_bn
    torch.manual_seed(0)
    net = prepare(Network(parse("renasnet"), SPEC), CPU)
    bn = net.stem.bn
    seen: list[torch.Tensor] = []
    hook = bn.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach().clone()))
    with torch.no_grad():
        bn.running_mean.fill_(5.0)
    params = [p.detach().clone() for p in net.parameters()]
    net.eval()
    n = recalibrate_bn(net, data.train, data, batches_n=3, batch_size=32,
                       generator=seeded_generator(0), device=CPU)
    hook.remove()
    assert n == 96 and len(seen) == 3
    # cumulative average (momentum None) of the per-batch means, not an EMA from 5.0
    expected = torch.stack([x.mean(dim=(0, 2, 3)) for x in seen]).mean(0)
    assert torch.allclose(bn.running_mean, expected, atol=1e-5)
    assert bn.momentum == 0.1 and not net.training
    assert all(torch.equal(a, b) for a, b in zip(params, net.parameters()))


def _stale_and_recalibrated_clone(data, child_genotype=None):
    """A parent trained one epoch on a 1000-image subset, then a child (default: a clone)
    fine-tuned on 256 images of the same subset, scored both ways: (parent, child) fitness
    with running statistics and with recalibration (the parent evaluated the same way)."""
    from renas_db.train import evaluate_recalibrated
    torch.manual_seed(0)
    g = parse("renasnet")
    parent = prepare(Network(g, SPEC), CPU)
    train_from_scratch(parent, data, device=CPU, epochs=1.0, lr=0.05, batch_size=32,
                       train_subset=1000, generator=seeded_generator(0))

    def score(network: Network, recal: bool, seed: int) -> float:
        if recal:
            return evaluate_recalibrated(network, data, device=CPU, bn_batches=16,
                                         batch_size=32, train_subset=1000,
                                         val_examples=500, generator=seeded_generator(seed))[0]
        return evaluate(network, data.val.head(500), data, device=CPU)[0]

    out = {}
    for recal in (False, True):
        f_parent = score(parent, recal, 1)
        torch.manual_seed(1)
        child = Network(child_genotype or g, SPEC)
        report = inherit(g, parent.state_dict(), child)
        child = prepare(child, CPU)
        fine_tune(child, param_groups(child, report, 0.01, 0.001), data, device=CPU,
                  batch_size=32, examples=256, train_subset=1000, generator=seeded_generator(2))
        f_child = score(child, recal, 3)
        out[recal] = (f_parent, f_child)
    return out


def test_clone_child_keeps_its_parents_fitness_once_batch_norm_is_recalibrated(data):
    out = _stale_and_recalibrated_clone(data)
    (stale_parent, stale_child), (parent, child) = out[False], out[True]
    # running statistics: the parent looks like chance and its clone "gains" from
    # fine-tuning alone, with identical architecture (measured 0.12 -> 0.63)
    assert abs(stale_child - stale_parent) > 0.2
    assert parent > 0.9
    assert abs(child - parent) < 0.03  # within the noise of 500 validation images


def test_one_node_child_stays_near_its_parent(data):
    out = _stale_and_recalibrated_clone(data, parse("renasnet").apply([Action(4, "op2", 4)]))
    parent, child = out[True]
    assert child > parent - 0.1


def test_same_init_seed_trains_the_same_initial_networks_whatever_the_job_ids():
    """--same-init (studies, the paired benchmark) promises the same trained initial
    population: an init job's torch seed must not depend on its job id."""
    from renas_db.config import SearchConfig
    from renas_db.executor import job_seed
    from renas_db.jobs import ClaimedJob, JobKind

    def job(kind: str, job_id: int, index: int, seed: int, init_seed: int | None):
        return ClaimedJob(id=job_id, search_id=1, search_name="s", kind=kind,
                          step_index=index, attempt=1, lease_token="t",
                          config=SearchConfig(seed=seed, init_seed=init_seed),
                          checkpoint_root="ck")

    a = job(JobKind.INIT, 3, 2, seed=10, init_seed=5)
    b = job(JobKind.INIT, 103, 2, seed=11, init_seed=5)   # another search, same init seed
    assert job_seed(a, 1) == job_seed(b, 1)
    assert job_seed(a, 1) != job_seed(job(JobKind.INIT, 4, 3, 10, 5), 1)  # next individual
    assert job_seed(a, 1) != job_seed(job(JobKind.INIT, 3, 2, 10, 6), 1)  # other init seed
    assert job_seed(a, 1) == job_seed(job(JobKind.INIT, 9, 2, 5, None), 1)  # init_seed=seed
    # steps stay seeded per search and job
    step_a, step_b = job(JobKind.STEP, 3, 2, 10, 5), job(JobKind.STEP, 103, 2, 11, 5)
    assert job_seed(step_a, 1) != job_seed(step_b, 1)
