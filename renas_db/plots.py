"""Figures: population fitness over steps (paper Figures 4 and 5), matplotlib with the Agg
backend: no display needed. Cell drawings (paper Figure 3) are renas_db.drawing's."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from renas_db.errors import ConfigError


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
