"""Figures: population fitness over steps (paper Figures 4 and 5) and cell drawings
(paper Figure 3). matplotlib with the Agg backend: no display needed."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from renas_db.errors import ConfigError
from renas_db.space import SHORT, Genotype


def pyplot() -> Any:  # the matplotlib.pyplot module
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def check_suffix(path: str) -> None:
    if Path(path).suffix.lower() not in (".png", ".svg", ".pdf"):
        raise ConfigError(f"output must end in .png, .svg or .pdf: {path}")


def _save(plt: Any, fig: Any, path: str) -> None:
    # SVG text as <text> elements, not glyph outlines: labels stay searchable, selectable
    # and editable, and the file is smaller
    with plt.rc_context({"svg.fonttype": "none"}):
        fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_progress(series: dict[str, dict[str, Any]], path: str) -> None:
    """One or more searches: mean +- std and best of the population, every child as a
    dot; the controller's mean reward underneath when there is one."""
    check_suffix(path)
    plt = pyplot()
    has_ctrl = any(d["controller_version"] for d in series.values())
    fig, axes = plt.subplots(2 if has_ctrl else 1, 1, figsize=(8, 7 if has_ctrl else 4.5),
                             squeeze=False)
    ax = axes[0][0]
    for k, (name, d) in enumerate(series.items()):
        color = f"C{k}"
        label = f"{name} ({d['mutator']})"
        if not d["step"]:
            continue
        mean = d["mean"]
        std = [s or 0.0 for s in d["std"]]
        ax.plot(d["step"], mean, color=color, label=f"{label} mean")
        ax.fill_between(d["step"], [m - s for m, s in zip(mean, std)],
                        [m + s for m, s in zip(mean, std)], color=color, alpha=0.2)
        ax.plot(d["step"], d["best"], color=color, linestyle="--", label=f"{label} best")
        ax.scatter(d["step"], d["child"], color=color, s=6, alpha=0.5)
    ax.set_xlabel("step (children committed)")
    ax.set_ylabel("validation accuracy")
    ax.set_title("population fitness")
    ax.legend(fontsize=8)
    if has_ctrl:
        ax2 = axes[1][0]
        for k, (name, d) in enumerate(series.items()):
            if d["controller_version"]:
                ax2.plot(d["controller_version"], d["controller_reward"], color=f"C{k}",
                         label=name)
        ax2.set_xlabel("controller version")
        ax2.set_ylabel("mean reward of update")
        ax2.legend(fontsize=8)
    fig.tight_layout()
    _save(plt, fig, path)


def draw_cell(genotype: Genotype, path: str, title: str | None = None) -> None:
    """Inputs c-2 and c-1 on the left, one node per block, ops on the edges, and the
    concatenation of the loose ends on the right."""
    check_suffix(path)
    plt = pyplot()
    B = genotype.n_blocks
    fig, ax = plt.subplots(figsize=(2.2 * B + 3, 4.5))
    pos: dict[int, tuple[float, float]] = {0: (0.0, 1.0), 1: (0.0, -1.0)}
    for j in range(B):
        pos[2 + j] = (2.0 + 2.0 * j, 1.5 if j % 2 == 0 else -1.5)
    out = (2.0 + 2.0 * B, 0.0)
    names = {0: "c_{k-2}", 1: "c_{k-1}"}
    for node, (x, y) in pos.items():
        label = names.get(node, f"{node - 2}")
        color = "#9ecae1" if node < 2 else "#fdd0a2"
        ax.add_patch(plt.Circle((x, y), 0.42, color=color, zorder=2))
        ax.text(x, y, f"${label}$" if node < 2 else label, ha="center", va="center",
                zorder=3, fontsize=11)
    ax.add_patch(plt.Rectangle((out[0] - 0.5, out[1] - 0.4), 1.0, 0.8, color="#c7e9c0",
                               zorder=2))
    ax.text(out[0], out[1], "concat", ha="center", va="center", zorder=3, fontsize=10)
    for j, block in enumerate(genotype.blocks):
        for k, (src, op) in enumerate(((block.in1, block.op1), (block.in2, block.op2))):
            x0, y0 = pos[src]
            x1, y1 = pos[2 + j]
            bend = 0.25 if k == 0 else -0.25
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0), zorder=1,
                        arrowprops=dict(arrowstyle="->", color="0.3",
                                        connectionstyle=f"arc3,rad={bend}",
                                        shrinkA=14, shrinkB=14))
            mx = (x0 + x1) / 2 + bend * (y1 - y0) * 0.5
            my = (y0 + y1) / 2 - bend * (x1 - x0) * 0.5
            ax.text(mx, my, SHORT[op], fontsize=8, ha="center", va="center",
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="0.7"), zorder=4)
    for j in genotype.loose_ends():
        x0, y0 = pos[2 + j]
        ax.annotate("", xy=out, xytext=(x0, y0), zorder=1,
                    arrowprops=dict(arrowstyle="->", color="#31a354", shrinkA=14, shrinkB=12))
    ax.set_xlim(-1, out[0] + 1)
    ax.set_ylim(-2.6, 2.6)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title or genotype.to_text(), fontsize=9)
    fig.tight_layout()
    _save(plt, fig, path)
