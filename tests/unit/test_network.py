from __future__ import annotations

import random

import pytest
import torch

from renas_db.network import Network, NetworkSpec, count_mult_adds, count_parameters, spec_for
from renas_db.space import parse, random_genotype


@pytest.mark.parametrize("size, channels", [(28, 1), (32, 3)])
def test_110_random_genotypes_forward_backward(size, channels):
    rng = random.Random(size)
    torch.manual_seed(size)
    for i in range(110):
        g = random_genotype(rng.randint(1, 5), rng)
        spec = NetworkSpec(in_channels=channels, image_size=size, cells=1, filters=2,
                           stem_multiplier=1, auxiliary=i % 3 == 0, dropout=0.1)
        net = Network(g, spec)
        net.drop_prob = 0.2 if i % 2 else 0.0
        net.train()
        x = torch.randn(2, channels, size, size)
        if i % 2:  # the training layout: it has its own kernels (and had a heap bug)
            net = net.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        logits, aux = net.forward_with_aux(x)
        assert logits.shape == (2, 10)
        assert (aux is not None) == spec.auxiliary
        loss = logits.sum() + (aux.sum() if aux is not None else 0)
        loss.backward()
        assert torch.isfinite(logits).all()
        for name, p in net.named_parameters():
            assert p.grad is not None, (g.to_text(), name)
            assert torch.isfinite(p.grad).all()


def test_reduction_halves_size_and_doubles_channels():
    g = parse("renasnet")
    net = Network(g, spec_for("cifar10", cells=1, filters=4))
    x = net.stem(torch.randn(2, 3, 32, 32))
    shapes = []
    s0 = s1 = x
    for cell in net.cells:
        s0, s1 = s1, cell(s0, s1)
        shapes.append((cell.reduction, s1.shape[1] // len(g.loose_ends()), s1.shape[2]))
    assert shapes == [(False, 4, 32), (True, 8, 16), (False, 8, 16), (True, 16, 8),
                      (False, 16, 8)]


def test_module_names_are_descriptive():
    net = Network(parse("renasnet"), spec_for("cifar10", cells=1, filters=4, auxiliary=True))
    names = dict(net.named_parameters())
    assert "cells.0.blocks.0.op1.depthwise1.weight" in names
    assert "cells.2.preprocess0.conv_1.weight" in names  # after a reduction
    assert "auxiliary_head.conv1.weight" in names and "classifier.weight" in names


def test_renasnet_paper_sizes(capsys):
    g = parse("renasnet")
    cifar = count_parameters(Network(g, spec_for("cifar10", cells=6, filters=32,
                                                 auxiliary=True)))
    imagenet_net = Network(g, spec_for("imagenet", cells=4, filters=44))
    imagenet = count_parameters(imagenet_net)
    madds = count_mult_adds(imagenet_net)
    with capsys.disabled():
        print(f"\nRENASNet CIFAR-10 N=6 F=32: {cifar / 1e6:.2f}M params (paper 3.5M); "
              f"ImageNet-mobile N=4 F=44: {imagenet / 1e6:.2f}M params (paper 5.36M), "
              f"{madds / 1e6:.0f}M mult-adds (paper 580M)")
    assert abs(cifar - 3.5e6) / 3.5e6 < 0.05
    assert abs(imagenet - 5.36e6) / 5.36e6 < 0.05
    assert abs(madds - 580e6) / 580e6 < 0.05


@pytest.mark.parametrize("channels", [8, 16, 24])
def test_batchnorm_fast_paths_match_torch(channels):
    """renas_db.ops.BatchNorm takes other kernels on CPU channels_last inputs (narrow:
    through NCHW; a sliced gradient: made dense) and must compute exactly what
    nn.BatchNorm2d computes: outputs, running statistics and gradients."""
    from renas_db.ops import BatchNorm
    torch.manual_seed(0)
    ours, ref = BatchNorm(channels), torch.nn.BatchNorm2d(channels)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-0.5, 0.5)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(6, channels, 9, 9).contiguous(memory_format=torch.channels_last)
    # the gradient arrives as a channel slice of a wider channels_last tensor, as it
    # does from the cell's concatenation
    wide = torch.randn(6, 3 * channels, 9, 9).contiguous(memory_format=torch.channels_last)
    grad = wide[:, channels:2 * channels]
    outs, grads = [], []
    for bn in (ours, ref):
        xi = x.clone().requires_grad_(True)
        y = bn(xi)
        y.backward(grad)
        outs.append(y)
        grads.append((xi.grad, bn.weight.grad, bn.bias.grad))
    assert outs[0].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(outs[0], outs[1])
    for a, b in zip(grads[0], grads[1]):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    assert list(ours.state_dict()) == list(ref.state_dict())


def test_mult_adds_from_shapes_equal_a_traced_forward_pass():
    """The shape count (every child, microseconds) against FlopCounterMode (the old
    per-child trace), over random cells of every dataset shape, dead cells included."""
    import random

    from renas_db.network import trace_mult_adds
    from renas_db.space import random_genotype
    rng = random.Random(3)
    shapes = [("synthetic", 1, 8), ("fashion-mnist", 2, 8), ("cifar10", 1, 12),
              ("imagenet", 1, 16)]
    for i in range(24):
        dataset, cells, filters = shapes[i % len(shapes)]
        g = random_genotype(rng.choice([2, 3, 5]), rng)
        net = Network(g, spec_for(dataset, cells=cells, filters=filters,
                                  auxiliary=i % 3 == 0))
        assert count_mult_adds(net) == trace_mult_adds(net), (dataset, g.to_text())
    # a cell reading only c-2 leaves every other cell dead, the reductions among them
    dead = Network(parse("0 avg3 + 0 sep3 | 0 sep5 + 0 max3"),
                   spec_for("imagenet", cells=1, filters=8))
    assert not all(dead.live) and count_mult_adds(dead) == trace_mult_adds(dead)
