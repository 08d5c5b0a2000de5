"""Stability studies (the paper's Figure 6): G searches per mutator, then a verdict each.

Verdict rule, on the population mean fitness of v_progress (one point per child):
- initial = mean fitness of the initial population; final = mean of the last 10% of
  points (at least one); peak = the highest point.
- Success: final >= initial + GAIN and final >= peak - DROP (rose and stayed up).
- Fail: final < initial - GAIN (collapsed below where it started).
- Unstable: anything else (no clear rise, or rose and fell back from its peak).
GAIN = DROP = 0.01 (one accuracy point). Searches not finished are `unfinished`."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from renas_db import searches
from renas_db.config import SearchConfig
from renas_db.db import admin
from renas_db.db.history import progress
from renas_db.db.session import Store
from renas_db.errors import ConfigError
from renas_db.jobs import SearchStatus
from renas_db.mutators import mutator_spec
from renas_db.plots import check_suffix, pyplot

GAIN = 0.01
DROP = 0.01
VERDICTS = ("Success", "Unstable", "Fail", "unfinished")


def create_study(store: Store, name: str, base: SearchConfig, groups: int,
                 mutators: Sequence[str], same_init: bool) -> list[str]:
    for m in mutators:
        mutator_spec(m)  # raises ConfigError naming the known mutators
    if not mutators:
        raise ConfigError("give at least one mutator")
    names = []
    for g in range(groups):
        for m in mutators:
            # Each group has its own evolution seed; the initial population is shared by
            # every group (--same-init) or differs per group. Mutators of one group share
            # both, so they are compared on equal terms.
            cfg = base.replace(mutator=m, seed=(base.seed + 1000 * g) % (2**31 - 1),
                               init_seed=base.seed if same_init else base.seed + g)
            search_name = f"{name}-{m}-g{g}"
            searches.create(store, search_name, cfg, study=name)
            names.append(search_name)
    return names


def classify(initial: float | None, means: Sequence[float]) -> str:
    if initial is None or not means:
        return "unfinished"
    tail = max(1, len(means) // 10)
    final = sum(means[-tail:]) / tail
    peak = max(means)
    if final >= initial + GAIN and final >= peak - DROP:
        return "Success"
    if final < initial - GAIN:
        return "Fail"
    return "Unstable"


def report(store: Store, name: str) -> dict[str, Any]:
    rows = []
    counts: dict[str, dict[str, int]] = {}
    for info in admin.study_searches(store, name):
        series = progress(store, info["name"])
        initial = info["initial_mean"]
        verdict = classify(initial, series["mean"]) \
            if info["status"] == SearchStatus.FINISHED else "unfinished"
        tail = max(1, len(series["mean"]) // 10)
        mutator = info["config"]["mutator"]
        rows.append({"search": info["name"], "mutator": mutator, "status": info["status"],
                     "steps": len(series["mean"]), "initial_mean": initial,
                     "final_mean": sum(series["mean"][-tail:]) / tail if series["mean"] else None,
                     "peak_mean": max(series["mean"]) if series["mean"] else None,
                     "verdict": verdict, "series": series})
        c = counts.setdefault(mutator, {v: 0 for v in VERDICTS})
        c[verdict] += 1
    return {"study": name, "rule": __doc__.split("\n\n", 1)[1], "searches": rows,
            "counts": counts}


def plot(store: Store, rep: dict[str, Any], path: str) -> None:
    check_suffix(path)
    plt = pyplot()
    mutators = sorted({r["mutator"] for r in rep["searches"]})
    fig, axes = plt.subplots(1, len(mutators), figsize=(5 * len(mutators), 4), squeeze=False,
                             sharey=True)
    colors = {"Success": "C2", "Unstable": "C1", "Fail": "C3", "unfinished": "0.6"}
    for ax, m in zip(axes[0], mutators):
        for r in rep["searches"]:
            if r["mutator"] == m and r["series"]["step"]:
                ax.plot(r["series"]["step"], r["series"]["mean"], color=colors[r["verdict"]],
                        alpha=0.8, label=r["verdict"])
        c = rep["counts"][m]
        ax.set_title(f"{m}: {c['Success']} Success / {c['Unstable']} Unstable / "
                     f"{c['Fail']} Fail", fontsize=9)
        ax.set_xlabel("step")
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles))
        ax.legend(uniq.values(), uniq.keys(), fontsize=8)
    axes[0][0].set_ylabel("population mean fitness")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
