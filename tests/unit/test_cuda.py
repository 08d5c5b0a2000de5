"""The CUDA path of a step job: build, inherit, fine-tune (bf16 autocast, channels_last),
batch-norm recalibration, evaluation, and the checkpoint round trip that moves tensors to
the CPU. Skipped, with one loud line in the header, where there is no GPU."""
from __future__ import annotations

import pytest
import torch

from renas_db.checkpoints import CheckpointCache, CheckpointStore
from renas_db.data import make_synthetic
from renas_db.inherit import inherit, param_groups
from renas_db.network import Network, count_mult_adds, spec_for, trace_mult_adds
from renas_db.space import parse
from renas_db.train import evaluate_recalibrated, fine_tune, prepare, resolve_device

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_a_step_job_on_the_gpu_round_trips_through_a_cpu_checkpoint(tmp_path):
    device = resolve_device("cuda:0")
    data = make_synthetic(n_train=512, n_val=256, n_test=64).to(device)
    spec = spec_for("synthetic", cells=1, filters=8)
    torch.manual_seed(0)
    parent = prepare(Network(parse("renasnet"), spec), device)
    state = {k: v.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
             for k, v in parent.state_dict().items()}
    child = Network(parse("renasnet"), spec)
    report = inherit(parse("renasnet"), state, child)
    child = prepare(child, device)
    assert report.new == [] and next(child.parameters()).is_cuda
    assert child.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
    r = fine_tune(child, param_groups(child, report, 0.05, 0.005), data, device=device,
                  batch_size=64, examples=256, generator=torch.Generator().manual_seed(1))
    assert r.examples_seen == 256 and torch.isfinite(torch.tensor(r.loss))
    acc, loss = evaluate_recalibrated(child, data, device=device, bn_batches=2,
                                      batch_size=64, val_examples=256,
                                      generator=torch.Generator().manual_seed(2))
    assert 0.0 <= acc <= 1.0 and loss == loss
    assert count_mult_adds(child) == trace_mult_adds(child)
    saved = {k: v.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
             for k, v in child.state_dict().items()}
    store, cache = CheckpointStore(tmp_path), CheckpointCache(2**24)
    sha = cache.save(store, "s/1.pt", {"genotype": "renasnet", "state": saved})
    loaded = store.load("s/1.pt", sha)["state"]
    for k, v in child.state_dict().items():
        assert loaded[k].device.type == "cpu" and torch.equal(loaded[k], v.cpu()), k
