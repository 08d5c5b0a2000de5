"""Cell drawings (paper Figure 3) with Graphviz's layered "dot" layout, as the NAS papers
and their code draw cells: left to right, the cell inputs c_{k-2} and c_{k-1} on the left,
one node per block, one arrow per (input, op) pair labelled with the op, the loose ends
into the concat on the right. SVG (real <text>), PNG and PDF.

`cell_svg` is the one drawing function: `renas-db show -o` writes it to a file, the
dashboard embeds its SVG text. `diff_svg` draws a child under its parent with the mutated
pairs marked. Graphviz is the Python package `graphviz` plus the `dot` program (Debian:
apt-get install graphviz); without `dot` every drawing raises MissingDependency, one line.

In the SVG, every node and edge is a <g> with a stable id: nodes `{p}in0`, `{p}in1`,
`{p}b{j}` (block j), `{p}concat`; edges `{p}b{j}.{pair}` (pair 0 = in1/op1, 1 = in2/op2)
and `{p}b{j}.concat`, where {p} is cell_svg's prefix ("" by default) and "parent." /
"child." in a diff.
Marked (mutated) nodes and edges also carry the class "mutated".
"""
from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from renas_db.errors import ConfigError, MissingDependency
from renas_db.plots import check_suffix
from renas_db.space import SHORT, Genotype, Node, diff

INSTALL_HINT = ("drawing cells needs Graphviz: apt-get install graphviz "
                "(or your system's graphviz package)")
FONT = "Helvetica"
MARK = "#d62728"          # the mutated pairs and blocks: red
MARK_FILL = "#fcbba1"
INPUT_FILL = "#c7e9c0"
BLOCK_FILL = "#c6dbef"
CONCAT_FILL = "#fdf5c9"
PNG_DPI = 150


def _graphviz() -> Any:  # the graphviz module
    try:
        import graphviz
    except ImportError:
        raise MissingDependency("drawing cells needs the Python package graphviz: "
                                "pip install graphviz") from None
    return graphviz


def _esc(text: str) -> str:
    """A label that means exactly its text: no backslash escapes, no HTML labels."""
    return str(_graphviz().escape(text))


def _esc_left(text: str) -> str:
    """_esc, its lines left-aligned (dot's \\l ends a left-aligned line)."""
    return _esc(text).replace("\n", "\\l") + "\\l"


def _cell(g: Any, genotype: Genotype, prefix: str, highlight: Collection[Node]) -> None:
    """The nodes and edges of one cell into graph or cluster g."""
    marked_blocks = {n.block for n in highlight}
    for i, name in enumerate(("c_{k-2}", "c_{k-1}")):
        g.node(f"{prefix}in{i}", _esc(name), id=f"{prefix}in{i}", shape="box",
               style="rounded,filled", fillcolor=INPUT_FILL)
    for j in range(genotype.n_blocks):
        marked = j in marked_blocks
        g.node(f"{prefix}b{j}", str(j), id=f"{prefix}b{j}", shape="circle", style="filled",
               fillcolor=MARK_FILL if marked else BLOCK_FILL,
               color=MARK if marked else "black", penwidth="2.5" if marked else "1",
               **({"class": "mutated"} if marked else {}))
    g.node(f"{prefix}concat", "concat", id=f"{prefix}concat", shape="box",
           style="filled", fillcolor=CONCAT_FILL)
    # columns: a block one right of its rightmost input (dot would otherwise slide blocks
    # that feed only the concat anywhere); within a column dot orders the nodes to keep
    # edges from crossing (a fixed index order crossed edges and misplaced their labels)
    for names in _columns(genotype, prefix):
        with g.subgraph() as col:
            col.attr(rank="same")
            for name in names:
                col.node(name)

    def source(i: int) -> str:
        return f"{prefix}in{i}" if i < 2 else f"{prefix}b{i - 2}"

    for j, b in enumerate(genotype.blocks):
        for pair, (src, op) in enumerate(((b.in1, b.op1), (b.in2, b.op2))):
            marked = Node(j, pair) in highlight
            extra = ({"class": "mutated", "color": MARK, "fontcolor": MARK, "penwidth": "2.5"}
                     if marked else {})
            g.edge(source(src), f"{prefix}b{j}", label=SHORT[op], id=f"{prefix}b{j}.{pair}",
                   **extra)
    for j in genotype.loose_ends():
        g.edge(f"{prefix}b{j}", f"{prefix}concat", id=f"{prefix}b{j}.concat", color="gray40")


def _columns(genotype: Genotype, prefix: str) -> list[list[str]]:
    level = [0, 0]
    for b in genotype.blocks:
        level.append(1 + max(level[b.in1], level[b.in2]))
    cols: dict[int, list[str]] = {0: [f"{prefix}in0", f"{prefix}in1"]}
    for j in range(genotype.n_blocks):
        cols.setdefault(level[2 + j], []).append(f"{prefix}b{j}")
    return [cols[k] for k in sorted(cols)]


def _title(genotype: Genotype, title: str | None, reduction: bool) -> str:
    text = genotype.to_text() if title is None else title
    if reduction:
        text = f"reduction cell (ops on c_{{k-2}}, c_{{k-1}} have stride 2)\n{text}"
    return text


def _digraph(graph_label: str, name: str) -> Any:
    g = _graphviz().Digraph(name=name, engine="dot")   # the name is the SVG's tooltip
    g.attr("graph", rankdir="LR", label=_esc(graph_label), labelloc="t", fontname=FONT,
           fontsize="13", nodesep="0.25", ranksep="0.45", bgcolor="white")
    g.attr("node", fontname=FONT, fontsize="13", height="0.45", width="0.45")
    g.attr("edge", fontname=FONT, fontsize="12", arrowsize="0.8")
    return g


def cell_graph(genotype: Genotype, *, title: str | None = None, reduction: bool = False,
               highlight: Collection[Node] = (), prefix: str = "") -> Any:
    """The cell as a graphviz.Digraph (its .source is the dot text)."""
    g = _digraph(_title(genotype, title, reduction), "reduction cell" if reduction else "cell")
    _cell(g, genotype, prefix, set(highlight))
    return g


def _pipe(g: Any, fmt: str) -> bytes:
    graphviz = _graphviz()
    if fmt == "png":
        g = g.copy()
        g.attr("graph", dpi=str(PNG_DPI))
    try:
        return bytes(g.pipe(format=fmt))
    except graphviz.ExecutableNotFound:
        raise MissingDependency(INSTALL_HINT) from None


def _write(g: Any, path: str) -> None:
    check_suffix(path)
    suffix = Path(path).suffix.lower()
    data = _pipe(g, suffix[1:])
    try:
        Path(path).write_bytes(data)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None


def _svg_element(svg: bytes) -> str:
    """From <svg> on, without the XML prolog and DOCTYPE: a valid SVG file, and fit to
    put inline in an HTML page."""
    text = svg.decode()
    return text[text.index("<svg"):]


def cell_svg(genotype: Genotype, *, title: str | None = None, reduction: bool = False,
             highlight: Collection[Node] = (), prefix: str = "") -> str:
    """The cell drawing as SVG text (the title defaults to the genotype's text form);
    `highlight` marks (block, pair) nodes in red; `prefix` starts every node and edge id
    (several drawings on one HTML page need distinct ids)."""
    return _svg_element(_pipe(cell_graph(genotype, title=title, reduction=reduction,
                                         highlight=highlight, prefix=prefix), "svg"))


def draw_cell(genotype: Genotype, path: str, title: str | None = None, *,
              reduction: bool = False, highlight: Collection[Node] = ()) -> None:
    """The cell drawing to PATH, as .png, .svg or .pdf by its suffix."""
    _write(cell_graph(genotype, title=title, reduction=reduction, highlight=highlight), path)


def describe_change(parent: Genotype, child: Genotype) -> list[str]:
    """One phrase per mutated pair: 'block 2 pair 1: 1 sep3 -> 0 sep3'."""
    phrases = []
    for n in diff(parent, child):
        before, after = (g.blocks[n.block] for g in (parent, child))
        was = (before.in1, before.op1) if n.pair == 0 else (before.in2, before.op2)
        now = (after.in1, after.op1) if n.pair == 0 else (after.in2, after.op2)
        phrases.append(f"block {n.block} pair {n.pair + 1}: {was[0]} {SHORT[was[1]]} "
                       f"\u2192 {now[0]} {SHORT[now[1]]}")
    return phrases


def _wrap_phrases(head: str, phrases: list[str], width: int = 100) -> str:
    """head + the phrases joined by '; ', lines broken only between phrases."""
    lines = [head + phrases[0]]
    for p in phrases[1:]:
        if len(lines[-1]) + 2 + len(p) > width:
            lines[-1] += ";"
            lines.append(p)
        else:
            lines[-1] += "; " + p
    return "\n".join(lines)


def diff_graph(parent: Genotype, child: Genotype, *, parent_title: str = "parent",
               child_title: str = "child", reduction: bool = False) -> Any:
    """The parent above its child, the child's mutated pairs (and the parent's pairs they
    replace) in red, and a legend line naming the mutation."""
    nodes = diff(parent, child)
    change = describe_change(parent, child)
    legend = _wrap_phrases("red: mutated \u2014 ", change) if change else \
        "no pair changed (the mutation left the genotype as it was)"
    g = _digraph(legend, "mutation")
    g.attr("graph", labelloc="b")
    # the child's cluster first: dot stacks the clusters of a left-to-right graph bottom
    # up, so the parent reads above its child
    for prefix, genotype, title in (("child.", child, child_title),
                                    ("parent.", parent, parent_title)):
        with g.subgraph(name=f"cluster_{prefix[:-1]}") as c:
            c.attr(label=_esc_left(_title(genotype, title, reduction)), labelloc="t",
                   labeljust="l", style="rounded", color="gray60", fontname=FONT)
            _cell(c, genotype, prefix, set(nodes))
    return g


def diff_svg(parent: Genotype, child: Genotype, *, parent_title: str = "parent",
             child_title: str = "child", reduction: bool = False) -> str:
    """diff_graph's drawing as SVG text (see cell_svg)."""
    return _svg_element(_pipe(diff_graph(parent, child, parent_title=parent_title,
                                         child_title=child_title, reduction=reduction),
                              "svg"))


def draw_diff(parent: Genotype, child: Genotype, path: str, *, parent_title: str = "parent",
              child_title: str = "child", reduction: bool = False) -> None:
    """diff_svg's drawing to PATH, as .png, .svg or .pdf by its suffix."""
    _write(diff_graph(parent, child, parent_title=parent_title, child_title=child_title,
                      reduction=reduction), path)


def svg_structure(svg: str) -> dict[str, Sequence[Any]]:
    """The drawing's structure read back from its SVG: the labels outside nodes and edges
    (title, legend, cluster titles) in order, nodes [id, label, marked] and edges
    [id, "tail->head", label, marked], sorted; for tests and the stored reference."""
    from xml.etree import ElementTree
    ns = "{http://www.w3.org/2000/svg}"
    root = ElementTree.fromstring(svg)
    nodes, edges = [], []
    inside = {id(t) for el in root.iter(f"{ns}g")
              if el.get("class", "").split()[:1] in (["node"], ["edge"])
              for t in el.iter(f"{ns}text")}
    labels = ["".join(t.itertext()).strip() for t in root.iter(f"{ns}text")
              if id(t) not in inside]
    for el in root.iter(f"{ns}g"):
        kind = el.get("class", "").split()
        if not kind or kind[0] not in ("node", "edge"):
            continue
        t = el.find(f"{ns}title")
        title = "".join(t.itertext()) if t is not None else ""
        texts = ["".join(t.itertext()).strip() for t in el.iter(f"{ns}text")]
        row = [el.get("id", ""), " ".join(texts), "mutated" in kind]
        if kind[0] == "node":
            nodes.append(row)
        else:
            edges.append([row[0], title, row[1], row[2]])
    return {"labels": labels, "nodes": sorted(nodes), "edges": sorted(edges)}
