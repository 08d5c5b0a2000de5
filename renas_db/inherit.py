"""Parameter inheritance: the child starts from its parent's weights outside the
mutated nodes.

Choice for projections that read a cell's concatenated loose ends (the next cells'
1x1 preprocessing, the auxiliary head's first conv, the classifier): slice copies. The
input-channel slices of blocks that are loose ends in both parent and child are copied;
the slices of blocks that became loose ends are fresh. Such partially inherited tensors
train at lr_new."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from torch import nn

from renas_db.errors import CheckpointError
from renas_db.network import Network, NetworkSpec
from renas_db.ops import Conv2d
from renas_db.space import Genotype, diff


@dataclass
class InheritReport:
    inherited: list[str] = field(default_factory=list)
    partial: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    inherited_scalars: int = 0
    new_scalars: int = 0

    @property
    def fraction_inherited(self) -> float:
        total = self.inherited_scalars + self.new_scalars
        return self.inherited_scalars / total if total else 1.0


@functools.lru_cache(maxsize=256)
def expected_shapes(genotype: Genotype, spec: NetworkSpec) -> dict[str, torch.Size]:
    """A network's tensor shapes, from a meta-device build; kept per architecture (a
    tournament draws the same parents again and again). Callers must not change it."""
    with torch.device("meta"):
        return {k: v.shape for k, v in Network(genotype, spec).state_dict().items()}


def check_state(genotype: Genotype, spec: NetworkSpec, state: dict[str, torch.Tensor]) -> None:
    expected = expected_shapes(genotype, spec)
    if set(expected) != set(state):
        missing = sorted(set(expected) - set(state))[:3]
        extra = sorted(set(state) - set(expected))[:3]
        raise CheckpointError(f"checkpoint does not match its genotype (missing {missing}, "
                              f"unexpected {extra})")
    for k, shape in expected.items():
        if state[k].shape != shape:
            raise CheckpointError(f"checkpoint does not match its genotype: {k} has shape "
                                  f"{tuple(state[k].shape)}, expected {tuple(shape)}")


def _stride(input_index: int, reduction: bool) -> int:
    # the network's rule (BlockOps): in a reduction cell only the cell inputs are strided
    return 2 if reduction and input_index < 2 else 1


def _mutated_prefixes(parent: Genotype, child: Genotype, network: Network) -> list[str]:
    """The op modules to initialise afresh, per cell. A node whose op is unchanged and
    whose new input gives the op the same stride in that cell keeps its weights: the op
    is the same function of a same-shaped input (only the tensor it reads moved), so its
    trained filters are a better start than noise. Shapes are checked again when copying."""
    prefixes = []
    for i, cell in enumerate(network.cells):
        reduction = bool(getattr(cell, "reduction", False))
        for n in diff(parent, child):
            slot_in, slot_op = ("in1", "op1") if n.pair == 0 else ("in2", "op2")
            p, c = parent.blocks[n.block], child.blocks[n.block]
            same_op = getattr(p, slot_op) == getattr(c, slot_op)
            same_stride = (_stride(getattr(p, slot_in), reduction)
                           == _stride(getattr(c, slot_in), reduction))
            if not (same_op and same_stride):
                prefixes.append(f"cells.{i}.blocks.{n.block}.op{n.pair + 1}.")
    return prefixes


def _is_op_tensor(name: str) -> bool:
    return ".blocks." in name and ".op" in name


def inherit(parent_genotype: Genotype, parent_state: dict[str, torch.Tensor],
            child: Network) -> InheritReport:
    """Copy into `child` every parent tensor outside the mutated nodes (in place). A
    child built under `ops.deferred_init` has its convolutions initialised here, those
    whose weight is not copied whole (fresh, or a concatenation reader's partial copy)."""
    check_state(parent_genotype, child.spec, parent_state)
    report = InheritReport()
    mutated = _mutated_prefixes(parent_genotype, child.genotype, child)
    readers = child.concat_readers()
    old_ends = parent_genotype.loose_ends()
    new_ends = child.genotype.loose_ends()
    resliced = old_ends != new_ends
    child_state = child.state_dict()
    params = {name for name, _ in child.named_parameters()}
    plan: list[tuple[str, torch.Tensor, torch.Tensor, str]] = []  # name, target, source, how
    for name, target in child_state.items():
        found = parent_state.get(name)
        if found is None or any(name.startswith(p) for p in mutated):
            plan.append((name, target, target, "fresh"))
        elif name in readers and resliced:
            plan.append((name, target, found, "slices"))
        elif found.shape == target.shape:
            plan.append((name, target, found, "copy"))
        elif _is_op_tensor(name):  # a kept op whose shape does not fit after all: afresh
            plan.append((name, target, target, "fresh"))
        else:
            raise CheckpointError(f"parent tensor {name} has shape {tuple(found.shape)}, "
                                  f"child expects {tuple(target.shape)}")
    _initialise_deferred(child, {name for name, _, _, how in plan if how == "copy"})
    with torch.no_grad():
        for name, target, source, how in plan:
            if how == "slices":
                width = readers[name]
                copied = False
                for k_new, block in enumerate(new_ends):
                    if block in old_ends:
                        k_old = old_ends.index(block)
                        target[:, k_new * width:(k_new + 1) * width].copy_(
                            source[:, k_old * width:(k_old + 1) * width])
                        copied = True
                if name in params:
                    (report.partial if copied else report.new).append(name)
                    report.new_scalars += target.numel()
            elif how == "fresh":
                if name in params:
                    report.new.append(name)
                    report.new_scalars += target.numel()
            else:
                target.copy_(source)
                if name in params:
                    report.inherited.append(name)
                    report.inherited_scalars += target.numel()
    return report


def _initialise_deferred(child: Network, copied: set[str]) -> None:
    """Initialise the deferred convolutions whose weight is not in `copied`."""
    for prefix, module in child.named_modules():
        if isinstance(module, Conv2d) and module.deferred:
            if f"{prefix}.weight" not in copied:
                nn.Conv2d.reset_parameters(module)  # whether or not deferral is on now
            module.deferred = False


def param_groups(network: Network, report: InheritReport, lr_new: float,
                 lr_inherited: float) -> list[dict]:
    """New and partially inherited parameters at lr_new, inherited ones 10x slower."""
    inherited = set(report.inherited)
    named = dict(network.named_parameters())
    groups = [{"params": [p for n, p in named.items() if n not in inherited], "lr": lr_new,
               "name": "new"},
              {"params": [p for n, p in named.items() if n in inherited], "lr": lr_inherited,
               "name": "inherited"}]
    return [g for g in groups if g["params"]]
