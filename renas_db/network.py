"""Cells and networks built from any genotype (NASNet layout, DARTS-style bookkeeping)."""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from renas_db import space
from renas_db.datasets import dataset_info
from renas_db.errors import GenotypeError, NotFoundError
from renas_db.ops import OPS, BatchNorm, Conv2d, FactorizedReduce, ReLUConvBN
from renas_db.space import Genotype


@dataclass(frozen=True)
class NetworkSpec:
    in_channels: int = 1
    image_size: int = 28
    num_classes: int = 10
    cells: int = 2               # N cells per stage
    filters: int = 24            # F
    stem_multiplier: int = 3
    auxiliary: bool = False
    dropout: float = 0.0
    imagenet: bool = False       # stride-2 conv stem plus two more reduction cells


# The paper's mobile ImageNet setting (channels, size, classes). It is a network shape for
# counting parameters and mult-adds, not a dataset: there is no loader, so it stays out of
# the dataset registry and no search can pick it.
IMAGENET_SHAPE = (3, 224, 1000)


def spec_for(dataset: str, *, cells: int, filters: int, **kw: Any) -> NetworkSpec:
    """The network shape for a registered dataset (or "imagenet", the paper's mobile
    setting); an unknown name raises ConfigError."""
    if dataset == "imagenet":
        c, s, n = IMAGENET_SHAPE
    else:
        info = dataset_info(dataset)
        c, s, n = info.in_channels, info.image_size, info.num_classes
    return NetworkSpec(in_channels=c, image_size=s, num_classes=n, cells=cells,
                       filters=filters, imagenet=dataset == "imagenet", **kw)


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    keep = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x / keep * mask


class BlockOps(nn.Module):
    op1: nn.Module
    op2: nn.Module

    def __init__(self, block: space.Block, c: int, reduction: bool) -> None:
        super().__init__()
        self.op1 = OPS[space.OPS[block.op1]](c, 2 if reduction and block.in1 < 2 else 1)
        self.op2 = OPS[space.OPS[block.op2]](c, 2 if reduction and block.in2 < 2 else 1)


class Cell(nn.Module):
    out_channels: int
    drop_prob: float

    def __init__(self, genotype: Genotype, c_prev_prev: int, c_prev: int, c: int,
                 reduction: bool, reduction_prev: bool) -> None:
        super().__init__()
        self.genotype = genotype
        self.reduction = reduction
        self.drop_prob = 0.0
        # A cell input no block reads gets no preprocessing, so every parameter trains.
        if genotype.uses_input(0):
            self.preprocess0 = (FactorizedReduce(c_prev_prev, c) if reduction_prev
                                else ReLUConvBN(c_prev_prev, c))
        if genotype.uses_input(1):
            self.preprocess1 = ReLUConvBN(c_prev, c)
        self.blocks = nn.ModuleList(BlockOps(b, c, reduction) for b in genotype.blocks)
        self.loose_ends = genotype.loose_ends()
        self.out_channels = c * len(self.loose_ends)
        self._skip = [(space.OPS[b.op1] == "identity", space.OPS[b.op2] == "identity")
                      for b in genotype.blocks]

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states: list[torch.Tensor | None] = [
            self.preprocess0(s0) if hasattr(self, "preprocess0") else None,
            self.preprocess1(s1) if hasattr(self, "preprocess1") else None]
        drop = self.training and self.drop_prob > 0
        # self.blocks holds only BlockOps; ModuleList types its items as Module
        blocks = cast("Iterable[BlockOps]", self.blocks)
        for block, ops, skip in zip(self.genotype.blocks, blocks, self._skip):
            h1 = ops.op1(states[block.in1])
            h2 = ops.op2(states[block.in2])
            if drop:
                h1 = h1 if skip[0] else drop_path(h1, self.drop_prob)
                h2 = h2 if skip[1] else drop_path(h2, self.drop_prob)
            states.append(h1 + h2)
        # entries from 2 on are block outputs, never None
        return torch.cat([cast(torch.Tensor, states[2 + j]) for j in self.loose_ends], dim=1)


class DeadCell(nn.Module):
    """Stands in for a cell whose output nothing reads: no parameters, never run."""

    out_channels: int
    drop_prob: float

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.drop_prob = 0.0


def _live_cells(genotype: Genotype, n_cells: int, aux_index: int | None) -> list[bool]:
    live = [False] * n_cells
    live[-1] = True
    if aux_index is not None:
        live[aux_index] = True
    for i in range(n_cells - 1, -1, -1):
        if live[i]:
            if genotype.uses_input(1) and i >= 1:
                live[i - 1] = True
            if genotype.uses_input(0) and i >= 2:
                live[i - 2] = True
    return live


class AuxiliaryHead(nn.Module):
    def __init__(self, c: int, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.conv1 = nn.Conv2d(c, 128, 1, bias=False)
        self.bn1 = BatchNorm(128)
        self.conv2 = nn.Conv2d(128, 768, 2, bias=False)
        self.bn2 = BatchNorm(768)
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(self.pool(F.relu(x)))))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.classifier(torch.flatten(x, 1))


class Network(nn.Module):
    """stem -> N cells -> reduction -> N cells -> reduction -> N cells -> pool -> linear."""

    def __init__(self, genotype: Genotype, spec: NetworkSpec) -> None:
        super().__init__()
        self.genotype = genotype
        self.spec = spec
        f, n = spec.filters, spec.cells
        kinds: list[tuple[int, bool]] = []  # (channels, reduction)
        if spec.imagenet:
            self.stem = nn.Sequential()
            self.stem.add_module("conv", Conv2d(spec.in_channels, 32, 3, stride=2,
                                                   padding=1, bias=False))
            self.stem.add_module("bn", BatchNorm(32))
            c_stem = 32
            kinds += [(max(f // 4, 1), True), (max(f // 2, 1), True)]
        else:
            c_stem = spec.stem_multiplier * f
            self.stem = nn.Sequential()
            self.stem.add_module("conv", Conv2d(spec.in_channels, c_stem, 3, padding=1,
                                                   bias=False))
            self.stem.add_module("bn", BatchNorm(c_stem))
        kinds += [(f, False)] * n + [(2 * f, True)] + [(2 * f, False)] * n + \
                 [(4 * f, True)] + [(4 * f, False)] * n
        aux_after = len(kinds) - n - 1  # the second search reduction: 2/3 of the depth
        self.reductions = [reduction for _, reduction in kinds]  # dead cells' too
        self.live = _live_cells(genotype, len(kinds), aux_after if spec.auxiliary else None)
        c_prev_prev, c_prev, reduction_prev = c_stem, c_stem, False
        self.cells = nn.ModuleList()
        # which earlier output each cell's preprocessing reads (-1 = the stem)
        self.sources: list[tuple[int, int]] = []
        for i, (c, reduction) in enumerate(kinds):
            # A cell whose output no later cell reads (a genotype that ignores c-1 or
            # c-2) is not built: it could never receive a gradient.
            cell = (Cell(genotype, c_prev_prev, c_prev, c, reduction, reduction_prev)
                    if self.live[i] else DeadCell(c * len(genotype.loose_ends())))
            self.cells.append(cell)
            self.sources.append((i - 2 if i >= 2 else -1, i - 1))
            c_prev_prev, c_prev, reduction_prev = c_prev, cell.out_channels, reduction
            if i == aux_after:
                c_aux = c_prev
        self.aux_index = aux_after
        if spec.auxiliary:
            self.auxiliary_head = AuxiliaryHead(c_aux, spec.num_classes)
        self.dropout = nn.Dropout(spec.dropout)
        self.classifier = nn.Linear(c_prev, spec.num_classes)

    def _cells(self) -> list[Cell | DeadCell]:
        # self.cells holds only these; ModuleList types its items as Module
        return cast("list[Cell | DeadCell]", list(self.cells))

    @property
    def drop_prob(self) -> float:
        return self._cells()[0].drop_prob

    @drop_prob.setter
    def drop_prob(self, value: float) -> None:
        for cell in self._cells():
            cell.drop_prob = value

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        s0 = s1 = self.stem(x)
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, (cell(s0, s1) if self.live[i] else None)
            if i == self.aux_index and self.training and hasattr(self, "auxiliary_head"):
                aux = self.auxiliary_head(s1)
        out = F.adaptive_avg_pool2d(s1, 1).flatten(1)
        return self.classifier(self.dropout(out)), aux

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_aux(x)[0]

    def concat_readers(self) -> dict[str, int]:
        """Parameters whose input channels are a cell's concatenated loose ends, mapped to
        the block channel width of that concat (used for slice-copy inheritance)."""
        readers: dict[str, int] = {}
        width = {i: cell.out_channels // len(self.genotype.loose_ends())
                 for i, cell in enumerate(self._cells())}
        for i, cell in enumerate(self.cells):
            if not self.live[i]:
                continue
            for k, src in zip((0, 1), self.sources[i]):
                mod = getattr(cell, f"preprocess{k}", None)
                if mod is None or src < 0:
                    continue
                for name, _ in mod.named_parameters():
                    if name.endswith("weight") and not name.startswith("bn"):
                        readers[f"cells.{i}.preprocess{k}.{name}"] = width[src]
        if hasattr(self, "auxiliary_head"):
            readers["auxiliary_head.conv1.weight"] = width[self.aux_index]
        readers["classifier.weight"] = width[len(self.cells) - 1]
        return readers


def count_parameters(network: Network) -> int:
    """Parameters of the inference network (the auxiliary head excluded, as in papers)."""
    return sum(p.numel() for name, p in network.named_parameters()
               if not name.startswith("auxiliary_head."))


def count_mult_adds(network: Network) -> int:
    """Multiply-adds of one image (convolutions and the classifier, eval mode), from the
    network's shapes: no forward pass. It equals what tracing does (`trace_mult_adds`,
    checked against it in tests) and costs microseconds where a trace of a small child
    cost ~90 ms, paid on every child."""
    spec = network.spec
    total, r_stem = _chain_macs(network.stem, spec.image_size)
    res = [r_stem]  # output resolution of the stem, then of each cell
    for i, cell in enumerate(network._cells()):
        r0, r1 = res[i - 1] if i >= 2 else r_stem, res[i]
        r_out = (r1 + 1) // 2 if network.reductions[i] else r1
        res.append(r_out)
        if not network.live[i] or not isinstance(cell, Cell):
            continue  # a dead cell never runs
        for k, r in ((0, r0), (1, r1)):
            if hasattr(cell, f"preprocess{k}"):
                total += _chain_macs(getattr(cell, f"preprocess{k}"), r)[0]
        for block, ops in zip(cell.genotype.blocks, cast("Iterable[BlockOps]", cell.blocks)):
            for src, op in ((block.in1, ops.op1), (block.in2, ops.op2)):
                total += _chain_macs(op, r1 if src < 2 else r_out)[0]
    return total + network.classifier.in_features * network.classifier.out_features


def _chain_macs(module: nn.Module, r: int) -> tuple[int, int]:
    """(multiply-adds, output resolution) of a module whose convolutions run one after
    another on a square input of side `r`; FactorizedReduce's two run side by side on
    the input subsampled by 2."""
    if isinstance(module, FactorizedReduce):
        half = (r + 1) // 2
        return sum(_conv_macs(c, half)[0] for c in (module.conv_1, module.conv_2)), half
    total = 0
    for conv in module.modules():
        if isinstance(conv, nn.Conv2d):
            macs, r = _conv_macs(conv, r)
            total += macs
    return total, r


def _conv_macs(conv: nn.Conv2d, r: int) -> tuple[int, int]:
    k, s = cast(tuple[int, int], conv.kernel_size), cast(tuple[int, int], conv.stride)
    p = cast(tuple[int, int], conv.padding)
    d = cast(tuple[int, int], conv.dilation)
    out = (r + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    per_pixel = conv.out_channels * (conv.in_channels // conv.groups) * k[0] * k[1]
    return out * out * per_pixel, out


def trace_mult_adds(network: Network) -> int:
    """`count_mult_adds` by tracing one eval-mode forward pass with FlopCounterMode: the
    reference the shape count is tested against (and the old, slow path)."""
    spec = network.spec
    was_training = network.training
    network.eval()
    param = next(network.parameters())
    x = torch.zeros(1, spec.in_channels, spec.image_size, spec.image_size,
                    device=param.device, dtype=param.dtype)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        network(x)
    network.train(was_training)
    return counter.get_total_flops() // 2


def build_from_export(path: str | Path, *, dataset: str | None = None,
                      cells: int | None = None, filters: int | None = None,
                      auxiliary: bool = False, dropout: float = 0.0) -> Network:
    """A fresh torch network for a genotype exported by `renas-db export`."""
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise NotFoundError(f"export file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GenotypeError(f"export file {path} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or "genotype" not in doc:
        raise GenotypeError(f"export file {path} has no genotype")
    genotype = space.parse(doc["genotype"])
    cfg = doc.get("config") or {}
    spec = spec_for(dataset or cfg.get("dataset", "cifar10"),
                    cells=cells or cfg.get("cells", 2), filters=filters or cfg.get("filters", 24),
                    auxiliary=auxiliary, dropout=dropout)
    return Network(genotype, spec)
