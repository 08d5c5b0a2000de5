"""The candidate operations, each built by one factory signature: OPS[name](C, stride).

Module names are stable and descriptive: they are the keys of parameter inheritance.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

# Two slow paths of torch's CPU batch norm for channels_last tensors, measured on this
# 2-core machine (forward + backward, batch 64):
# - below 16 channels (one AVX-512 vector of floats) the kernels are not vectorised:
#   [64, 8, 28, 28] takes 3.9 ms in channels_last, 1.8 ms converted to NCHW and back;
# - a gradient that is a channel slice (what the cell's concatenation hands back) takes a
#   generic path: [64, 16, 14, 14] 2.75 ms, against 0.6 ms with the gradient copied dense.
NARROW_BN_CHANNELS = 16


def _dense_nchw(grad: torch.Tensor) -> torch.Tensor:
    return grad.contiguous()


def _dense_channels_last(grad: torch.Tensor) -> torch.Tensor:
    return grad.contiguous(memory_format=torch.channels_last)


_deferral = threading.local()


@contextmanager
def deferred_init() -> Iterator[None]:
    """Convolutions built inside (in this thread) skip their random initialisation and
    are marked `deferred`: a child built to inherit its parent's weights overwrites most
    of them at once (kaiming-uniform for ~250 convolutions is about a third of building
    a N=1 F=8 network). Whoever builds so must initialise what it does not copy
    (`renas_db.inherit.inherit` does)."""
    _deferral.on = True
    try:
        yield
    finally:
        _deferral.on = False


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same parameters and state-dict keys) whose initialisation can be
    deferred (`deferred_init`)."""

    deferred = False

    def reset_parameters(self) -> None:
        if getattr(_deferral, "on", False):
            self.deferred = True
            return
        self.deferred = False
        super().reset_parameters()


class BatchNorm(nn.BatchNorm2d):
    """nn.BatchNorm2d (same parameters and state-dict keys) that avoids both slow paths
    on CPU channels_last inputs; anything else goes straight to nn.BatchNorm2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type != "cpu" or x.is_contiguous()
                or not x.is_contiguous(memory_format=torch.channels_last)):
            return super().forward(x)
        narrow = self.num_features < NARROW_BN_CHANNELS
        y = super().forward(x.contiguous() if narrow else x)
        if y.requires_grad:
            y.register_hook(_dense_nchw if narrow else _dense_channels_last)
        return y.contiguous(memory_format=torch.channels_last) if narrow else y


class ReLUConvBN(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1,
                 padding: int = 0) -> None:
        super().__init__()
        self.conv = Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = BatchNorm(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(F.relu(x)))


class SepConv(nn.Module):
    """NASNet's separable convolution: (ReLU, depthwise, pointwise, BN) twice, stride on
    the first depthwise."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int) -> None:
        super().__init__()
        pad = kernel // 2
        self.depthwise1 = Conv2d(c_in, c_in, kernel, stride=stride, padding=pad,
                                    groups=c_in, bias=False)
        self.pointwise1 = Conv2d(c_in, c_in, 1, bias=False)
        self.bn1 = BatchNorm(c_in)
        self.depthwise2 = Conv2d(c_in, c_in, kernel, padding=pad, groups=c_in, bias=False)
        self.pointwise2 = Conv2d(c_in, c_out, 1, bias=False)
        self.bn2 = BatchNorm(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.pointwise1(self.depthwise1(F.relu(x))))
        return self.bn2(self.pointwise2(self.depthwise2(F.relu(x))))


class FactorizedReduce(nn.Module):
    """Halve the spatial size with two offset 1x1 stride-2 convolutions, concatenated.

    The stride is taken by subsampling before a stride-1 1x1 conv (the same function):
    torch 2.14's CPU stride-2 1x1 conv corrupts the heap in backward for channels_last
    inputs with few output channels (reproduced: 4 -> 2 channels, 8x8)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv_1 = Conv2d(c_in, c_out // 2, 1, bias=False)
        self.conv_2 = Conv2d(c_in, c_out - c_out // 2, 1, bias=False)
        self.bn = BatchNorm(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        return self.bn(torch.cat([self.conv_1(x[:, :, ::2, ::2]),
                                  self.conv_2(shifted[:, :, ::2, ::2])], dim=1))


class Pool(nn.Module):
    def __init__(self, kind: str, stride: int) -> None:
        super().__init__()
        self.pool = (nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
                     if kind == "avg" else nn.MaxPool2d(3, stride=stride, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x)


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _identity(c: int, stride: int) -> nn.Module:
    return Identity() if stride == 1 else FactorizedReduce(c, c)


OPS: dict[str, Callable[[int, int], nn.Module]] = {
    "sep_conv_3x3": lambda c, stride: SepConv(c, c, 3, stride),
    "sep_conv_5x5": lambda c, stride: SepConv(c, c, 5, stride),
    "sep_conv_7x7": lambda c, stride: SepConv(c, c, 7, stride),
    "avg_pool_3x3": lambda c, stride: Pool("avg", stride),
    "max_pool_3x3": lambda c, stride: Pool("max", stride),
    "identity": _identity,
}
