"""renas-db retrain | study create | study report"""
from __future__ import annotations

from typing import Any

import click

from renas_db.cli.context import AppContext, pass_app
from renas_db.cli.render import as_json, message, out, table
from renas_db.cli.search_commands import build_config, config_options
from renas_db.datasets import DATASETS
from renas_db.mutators import MUTATORS


@click.command("retrain")
@click.argument("name")
@click.option("--top", type=click.IntRange(1), help="Retrain the K best alive individuals.")
@click.option("--all", "all_", is_flag=True, help="Retrain the whole final population.")
@click.option("--genotype", help="Retrain this cell instead (preset name such as renasnet, "
              "genotype text, or a file from `export`); NAME becomes a retrain-only search.")
@click.option("--report", is_flag=True, help="Rank the retrained networks instead.")
@click.option("--json", "as_json_", is_flag=True, help="JSON report for scripts.")
@click.option("--epochs", type=float, default=1.0, show_default=True)
@click.option("--lr", type=float, default=0.05, show_default=True, help="Cosine from this.")
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--dataset", type=click.Choice(list(DATASETS)),
              help="Default: the search's dataset.")
@click.option("--data-dir", help="Dataset folder.")
@click.option("--cells", type=click.IntRange(1), help="Cells per stage N (default: search's).")
@click.option("--filters", type=click.IntRange(2), help="Filters F (default: search's).")
@click.option("--cutout", type=click.IntRange(0), default=0, show_default=True,
              help="Cutout square size (0 = off; the paper uses 16 on CIFAR-10).")
@click.option("--drop-path", type=float, default=0.4, show_default=True)
@click.option("--aux-weight", type=float, default=0.4, show_default=True)
@click.option("--dropout", type=float, default=0.2, show_default=True)
@click.option("--train-subset", type=click.IntRange(1), help="Use only this many examples.")
@click.option("--seed", type=int, default=0, show_default=True)
@pass_app
def retrain_cmd(app: AppContext, name: str, top: int | None, all_: bool,
                genotype: str | None, report: bool, as_json_: bool, **recipe: Any) -> None:
    """Queue retrain jobs (train from scratch with the full recipe) that any worker
    claims, or --report the ranking; the best validation accuracy is the derived cell.

    Example: renas-db retrain demo --top 3 --epochs 2 && renas-db worker --search demo
    """
    from renas_db import retrain
    from renas_db.db.reports import retrain_report
    from renas_db.errors import ConfigError
    store = app.store()
    if report:
        rep = retrain_report(store, name)
        if as_json_:
            as_json(rep)
            return
        if not rep["ranked"]:
            message(f"{name}: no retrained networks yet ({rep['pending']} pending)")
            return
        table(rep["ranked"], ["rank", "id", "source_id", "search_fitness", "val_accuracy",
                              "test_accuracy", "n_params", "mult_adds", "epochs", "dataset"],
              title=f"retrained networks of {name} ({rep['pending']} pending)")
        d = rep["derived"]
        out.print(f"derived architecture (best validation accuracy): individual {d['id']}, "
                  f"val {d['val_accuracy']:.4f}, test {d['test_accuracy'] or 0:.4f}: "
                  f"{d['genotype']}")
        return
    chosen = sum(x is not None and x is not False for x in (top, all_ or None, genotype))
    if chosen != 1:
        raise ConfigError("give exactly one of --top K, --all, --genotype G (or --report)")
    rec = retrain.RetrainRecipe(**recipe)
    if genotype:
        from renas_db.config import SearchConfig
        base = SearchConfig(dataset=rec.dataset or "fashion-mnist", data_dir=rec.data_dir,
                            cells=rec.cells or 2, filters=rec.filters or 24)
        jobs = retrain.queue_genotype(store, name, genotype, rec, base)
    else:
        jobs = retrain.queue_from_search(store, name, rec, None if all_ else top)
    message(f"{name}: {len(jobs)} retrain job(s) queued; run `renas-db worker --search "
            f"{name}`, then `renas-db retrain {name} --report`")


@click.group("study")
def study() -> None:
    """Stability studies (the paper's Figure 6): groups of searches per mutator.

    Example: renas-db study create st --groups 5 --mutators renas,random --same-init
    """


@study.command("create")
@click.argument("name")
@click.option("--groups", type=click.IntRange(1, 1000), required=True)
@click.option("--mutators", default="renas,random", show_default=True,
              help=f"Comma-separated mutators, each of {', '.join(MUTATORS)}.")
@click.option("--same-init/--different-inits", default=True, show_default=True,
              help="One initial population seed for every group, or one seed per group.")
@config_options
@pass_app
def study_create(app: AppContext, name: str, groups: int, mutators: str, same_init: bool,
                 config_file: str | None, **options: Any) -> None:
    """Create G searches per mutator, named NAME-MUTATOR-gK, that workers run like any.

    Example: renas-db study create st --groups 3 --mutators renas,random --steps 50
    """
    from renas_db import studies
    base = build_config(config_file, options)
    names = studies.create_study(app.store(), name, base, groups,
                                 [m.strip() for m in mutators.split(",") if m.strip()],
                                 same_init)
    message(f"study {name}: {len(names)} searches created ({names[0]} ... {names[-1]}); "
            f"start workers with `renas-db worker`")


@study.command("report")
@click.argument("name")
@click.option("-o", "--output", help="Also plot every group's mean fitness to FILE.png.")
@click.option("--json", "as_json_", is_flag=True, help="JSON for scripts.")
@pass_app
def study_report(app: AppContext, name: str, output: str | None, as_json_: bool) -> None:
    """Classify each search of the study as Success, Unstable or Fail (rule in
    docs/results.md) and count them per mutator, like the paper's Figure 6.

    Example: renas-db study report st -o study.png
    """
    from renas_db import studies
    rep = studies.report(app.store(), name)
    if as_json_:
        as_json(rep)
    else:
        table(rep["searches"], ["search", "mutator", "status", "steps", "initial_mean",
                                "final_mean", "peak_mean", "verdict"], title=f"study {name}")
        table([{"mutator": m, **c} for m, c in rep["counts"].items()],
              ["mutator", "Success", "Unstable", "Fail", "unfinished"], title="counts")
    if output:
        studies.plot(app.store(), rep, output)
        message(f"wrote {output}")


COMMANDS = [retrain_cmd, study]
