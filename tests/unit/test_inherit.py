from __future__ import annotations

import pytest
import torch

from renas_db.errors import CheckpointError
from renas_db.inherit import inherit, param_groups
from renas_db.network import Network, spec_for
from renas_db.space import Action, parse

SPEC = spec_for("fashion-mnist", cells=1, filters=4, auxiliary=True)


def _parent():
    torch.manual_seed(0)
    g = parse("renasnet")
    net = Network(g, SPEC)
    with torch.no_grad():  # make BN statistics non-trivial so copies are visible
        for buf in net.buffers():
            if buf.dtype.is_floating_point:
                buf.uniform_(0.5, 1.5)
    return g, net


def test_identical_child_inherits_everything_and_matches_outputs():
    g, parent = _parent()
    child = Network(g, SPEC)
    report = inherit(g, parent.state_dict(), child)
    assert report.new == [] and report.partial == []
    assert report.fraction_inherited == 1.0
    parent.eval()
    child.eval()
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(parent(x), child(x))


def test_one_op_child_keeps_everything_outside_the_node():
    g, parent = _parent()
    child_g = g.apply([Action(0, "op2", 2)])  # block 0 pair 1: sep3 -> sep7
    torch.manual_seed(1)
    child = Network(child_g, SPEC)
    fresh = {k: v.clone() for k, v in child.state_dict().items()}
    report = inherit(g, parent.state_dict(), child)
    node = [f"cells.{i}.blocks.0.op2." for i in range(len(child.cells))]
    pstate, cstate = parent.state_dict(), child.state_dict()
    expected_new = sorted(n for n, _ in child.named_parameters()
                          if any(n.startswith(p) for p in node))
    assert sorted(report.new) == expected_new and expected_new
    assert report.partial == []
    for k, v in cstate.items():
        if any(k.startswith(p) for p in node):
            assert torch.equal(v, fresh[k]), k           # freshly initialised
        else:
            assert torch.equal(v, pstate[k]), k          # inherited
    groups = {g_["name"]: g_ for g_ in param_groups(child, report, 0.01, 0.001)}
    assert groups["new"]["lr"] == 0.01 and groups["inherited"]["lr"] == 0.001
    assert len(groups["new"]["params"]) == len(expected_new)


def test_loose_end_change_keeps_projection_slices():
    g, parent = _parent()
    # block 4 now reads block 2 instead of block 0: block 0 becomes a loose end and
    # block 2 stops being one
    child_g = g.apply([Action(4, "in1", 4), Action(4, "in2", 4)])
    assert g.loose_ends() == [1, 2, 3, 4] and child_g.loose_ends() == [0, 1, 3, 4]
    child = Network(child_g, SPEC)
    report = inherit(g, parent.state_dict(), child)
    assert "classifier.weight" in report.partial
    pw, cw = parent.state_dict()["classifier.weight"], child.state_dict()["classifier.weight"]
    width = pw.shape[1] // 4
    for k_child, block in enumerate(child_g.loose_ends()):
        if block in g.loose_ends():
            k_parent = g.loose_ends().index(block)
            assert torch.equal(cw[:, k_child * width:(k_child + 1) * width],
                               pw[:, k_parent * width:(k_parent + 1) * width]), block
    name = "cells.1.preprocess1.conv.weight"
    assert name in report.partial
    pw, cw = parent.state_dict()[name], child.state_dict()[name]
    w = pw.shape[1] // 4
    assert torch.equal(cw[:, 2 * w:], pw[:, 2 * w:])  # blocks 3 and 4 carried over
    assert torch.equal(cw[:, w:2 * w], pw[:, :w])      # block 1 moved one slot right


def test_state_that_disagrees_with_its_genotype_is_an_error():
    g, parent = _parent()
    other = parse("0 sep3 + 0 sep3 | 0 sep3 + 0 sep3 | 0 sep3 + 0 sep3 | 0 sep3 + 0 sep3 "
                  "| 0 sep3 + 0 sep3")
    with pytest.raises(CheckpointError, match="does not match its genotype"):
        inherit(other, parent.state_dict(), Network(g, SPEC))


def test_input_only_change_keeps_the_op_weights_where_the_stride_fits():
    g, parent = _parent()
    # block 3 pair 0: input 1 -> 0, op sep5 unchanged: the stride is 2 for either input in
    # a reduction cell and 1 in a normal cell, so the op keeps its weights everywhere
    child_g = g.apply([Action(3, "in1", 0)])
    child = Network(child_g, SPEC)
    report = inherit(g, parent.state_dict(), child)
    kept = [n for n in report.inherited if ".blocks.3.op1." in n]
    assert kept and not [n for n in report.new if ".blocks.3.op1." in n]
    for n in kept:
        assert torch.equal(child.state_dict()[n], parent.state_dict()[n])


def test_input_change_that_changes_the_stride_starts_the_op_afresh():
    g, parent = _parent()
    # block 3 pair 0: input 1 (a cell input) -> 3 (block 1): stride 2 -> 1 in the
    # reduction cells, unchanged in the normal ones
    child_g = g.apply([Action(3, "in1", 3)])
    child = Network(child_g, SPEC)
    report = inherit(g, parent.state_dict(), child)
    for i, cell in enumerate(child.cells):
        names = [n for n, _ in child.named_parameters() if n.startswith(f"cells.{i}.blocks.3.op1.")]
        assert names
        target = report.new if cell.reduction else report.inherited
        assert all(n in target for n in names), (i, cell.reduction)


@pytest.mark.parametrize("actions", [[Action(0, "op2", 2)],                  # a new op
                                     [Action(4, "in1", 4), Action(4, "in2", 4)]])  # slices
def test_a_child_built_without_initialisation_gets_every_weight_it_does_not_copy(actions):
    """Issue 16: the child is built under deferred_init (no kaiming draws) and inherit
    initialises the convolutions it does not copy whole. Garbage left in a deferred
    weight (NaN here) must never survive; copied weights are the parent's; initialised
    ones look like torch's own initialisation."""
    from renas_db.ops import Conv2d, deferred_init
    g, parent = _parent()
    child_g = g.apply(actions)
    with deferred_init():
        child = Network(child_g, SPEC)
    deferred = [n for n, m in child.named_modules() if isinstance(m, Conv2d) and m.deferred]
    assert deferred  # the build skipped them
    with torch.no_grad():
        for m in child.modules():
            if isinstance(m, Conv2d):
                m.weight.fill_(float("nan"))
    report = inherit(g, parent.state_dict(), child)
    pstate = parent.state_dict()
    for name, value in child.state_dict().items():
        assert torch.isfinite(value.float()).all(), name
        if name in report.inherited:
            assert torch.equal(value, pstate[name]), name
    fresh = [n for n in report.new if n.endswith("weight") and ".op" in n and
             isinstance(child.get_submodule(n.rsplit(".", 1)[0]), Conv2d)]
    assert fresh or report.partial
    reference = Network(child_g, SPEC).state_dict()  # torch's initialisation
    for name in fresh:
        got, want = child.state_dict()[name], reference[name]
        assert 0.5 < float(got.std() / want.std()) < 2.0, name
    assert not any(m.deferred for m in child.modules() if isinstance(m, Conv2d))
