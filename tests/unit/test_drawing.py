"""Cell drawings (renas_db.drawing): Graphviz's layered layout, read back from the SVG."""
from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from xml.etree import ElementTree

import pytest

from renas_db.drawing import cell_svg, diff_svg, draw_cell, draw_diff, svg_structure
from renas_db.errors import ConfigError
from renas_db.space import SHORT, Action, Genotype, Node, diff, parse, random_genotype

SVG = "{http://www.w3.org/2000/svg}"
REFERENCE = Path(__file__).with_name("renasnet_cell.json")
DEMO_BEST = "0 sep3 + 0 id | 2 id + 0 id | 1 sep7 + 0 sep7 | 0 sep3 + 0 sep3 | 2 id + 3 max3"


def _groups(svg: str, kind: str) -> list[ElementTree.Element]:
    root = ElementTree.fromstring(svg)
    return [g for g in root.iter(f"{SVG}g") if g.get("class", "").split()[:1] == [kind]]


def _text(el: ElementTree.Element) -> list[str]:
    return ["".join(t.itertext()).strip() for t in el.iter(f"{SVG}text")]


def _title(el: ElementTree.Element) -> str:
    t = el.find(f"{SVG}title")
    assert t is not None
    return "".join(t.itertext())


def _expected_edges(g: Genotype, prefix: str = "") -> Counter[tuple[str, str, str]]:
    """(tail, head, label) of every arrow the cell must have."""
    def name(i: int) -> str:
        return f"{prefix}in{i}" if i < 2 else f"{prefix}b{i - 2}"
    edges: Counter[tuple[str, str, str]] = Counter()
    for j, b in enumerate(g.blocks):
        for src, op in ((b.in1, b.op1), (b.in2, b.op2)):
            edges[(name(src), f"{prefix}b{j}", SHORT[op])] += 1
    for j in g.loose_ends():
        edges[(f"{prefix}b{j}", f"{prefix}concat", "")] += 1
    return edges


@pytest.mark.parametrize("n_blocks", [1, 2, 3, 4, 5])
def test_random_cells_have_every_op_as_text_and_one_arrow_per_pair(n_blocks):
    rng = random.Random(f"drawing-{n_blocks}")
    for _ in range(4):
        g = random_genotype(n_blocks, rng)
        svg = cell_svg(g)
        edges = _groups(svg, "edge")
        drawn: Counter[tuple[str, str, str]] = Counter()
        for e in edges:
            tail, head = _title(e).split("->")
            drawn[(tail, head, " ".join(_text(e)))] += 1
            # an arrow: a path and an arrowhead polygon
            assert e.find(f"{SVG}path") is not None and e.find(f"{SVG}polygon") is not None
        assert drawn == _expected_edges(g), g
        # every op label is a real <text>: the multiset of op texts is the genotype's ops
        texts = Counter(t for t in _text(ElementTree.fromstring(svg)) if t in SHORT)
        assert texts == Counter(SHORT[op] for b in g.blocks for op in (b.op1, b.op2))
        nodes = {_title(n): _text(n) for n in _groups(svg, "node")}
        assert nodes == {"in0": ["c_{k-2}"], "in1": ["c_{k-1}"], "concat": ["concat"],
                         **{f"b{j}": [str(j)] for j in range(n_blocks)}}
        assert _text(ElementTree.fromstring(svg))[0] == g.to_text()   # the title


def test_inputs_left_concat_right():
    g = parse(DEMO_BEST)
    root = ElementTree.fromstring(cell_svg(g))
    x = {}
    for n in _groups(ElementTree.tostring(root).decode(), "node"):
        t = n.find(f"{SVG}text")
        assert t is not None
        x[_title(n)] = float(t.get("x", "nan"))
    blocks = [x[f"b{j}"] for j in range(g.n_blocks)]
    assert max(x["in0"], x["in1"]) < min(blocks) and max(blocks) < x["concat"]
    # a block sits right of every block it reads
    for j, b in enumerate(g.blocks):
        for i in (b.in1, b.in2):
            if i >= 2:
                assert x[f"b{i - 2}"] < x[f"b{j}"]


def test_renasnet_drawing_matches_the_stored_structure():
    """Nodes, edges and labels, not pixels. After a deliberate change of the drawing,
    regenerate: python -c "from renas_db.drawing import *; from renas_db.space import parse;
    import json; print(json.dumps(svg_structure(cell_svg(parse('renasnet'))), indent=1))"
    """
    got = svg_structure(cell_svg(parse("renasnet")))
    assert got == json.loads(REFERENCE.read_text())


def test_reduction_cells_say_so_and_labels_are_literal():
    g = parse("renasnet")
    texts = _text(ElementTree.fromstring(cell_svg(g, reduction=True)))
    assert texts[0].startswith("reduction cell") and texts[1] == g.to_text()
    assert not any("reduction" in t for t in _text(ElementTree.fromstring(cell_svg(g))))
    # no backslash escapes, no HTML labels: the title is drawn as given
    odd = r"<b>bold</b> \N \l"
    assert _text(ElementTree.fromstring(cell_svg(g, title=odd)))[0] == odd


def test_highlight_marks_pairs_and_their_blocks():
    g = parse(DEMO_BEST)
    s = svg_structure(cell_svg(g, highlight=[Node(2, 0), Node(4, 1)]))
    assert [n[0] for n in s["nodes"] if n[2]] == ["b2", "b4"]
    assert [e[0] for e in s["edges"] if e[3]] == ["b2.0", "b4.1"]


def test_diff_marks_the_changed_pairs_parent_above_child():
    rng = random.Random(5)
    for _ in range(6):
        parent = random_genotype(5, rng)
        child = parent.apply([Action(rng.randrange(5), "op1", rng.randrange(6)),
                              Action(rng.randrange(5), "op2", rng.randrange(6))])
        svg = diff_svg(parent, child, parent_title="the parent", child_title="the child")
        s = svg_structure(svg)
        changed = diff(parent, child)
        for role in ("parent", "child"):
            assert sorted(n[0] for n in s["nodes"] if n[2] and n[0].startswith(role)) == \
                sorted({f"{role}.b{n.block}" for n in changed})
            assert sorted(e[0] for e in s["edges"] if e[3] and e[0].startswith(role)) == \
                sorted(f"{role}.b{n.block}.{n.pair}" for n in changed)
        texts = _text(ElementTree.fromstring(svg))
        legend = " ".join(t for t in s["labels"] if t not in ("the parent", "the child"))
        assert (legend.startswith("red: mutated") and legend.count("\u2192") == len(changed)
                if changed else legend.startswith("no pair changed")), legend
        # both cells whole, and nothing else
        expected = _expected_edges(parent, "parent.") + _expected_edges(child, "child.")
        assert Counter(tuple(e[1].split("->")) + (e[2],) for e in s["edges"]) == expected
        # the parent above the child
        y = {}
        for n in _groups(svg, "node"):
            t = n.find(f"{SVG}text")
            assert t is not None
            y[_title(n)] = float(t.get("y", "nan"))
        assert max(v for k, v in y.items() if k.startswith("parent.")) < \
            min(v for k, v in y.items() if k.startswith("child."))
        assert "the parent" in texts and "the child" in texts


def test_files_by_suffix(tmp_path):
    g = parse(DEMO_BEST)
    magic = {".png": b"\x89PNG", ".pdf": b"%PDF", ".svg": b"<?xml"}
    for suffix, head in magic.items():
        draw_cell(g, str(tmp_path / f"cell{suffix}"))
        assert (tmp_path / f"cell{suffix}").read_bytes().startswith(head)
        draw_diff(g, g.apply([Action(0, "in1", 1)]), str(tmp_path / f"diff{suffix}"))
        assert (tmp_path / f"diff{suffix}").read_bytes().startswith(head)
    with pytest.raises(ConfigError, match="must end in .png"):
        draw_cell(g, str(tmp_path / "cell.gif"))


def test_svg_text_fits_inline_in_html_and_ids_take_a_prefix():
    g = parse("renasnet")
    svg = cell_svg(g, prefix="i42.")
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    ids = {n[0] for n in svg_structure(svg)["nodes"]}
    assert ids == {"i42.in0", "i42.in1", "i42.concat", *(f"i42.b{j}" for j in range(5))}
