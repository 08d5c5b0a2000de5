"""renas-db search create | list | show | pause | resume | requeue"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from renas_db.cli.context import AppContext, pass_app
from renas_db.cli.render import as_json, message, out, table
from renas_db.config import SearchConfig, field_type, load_toml, option_fields
from renas_db.jobs import SearchStatus


def config_options(fn: Callable) -> Callable:
    """One --option per SearchConfig field (help and type from its metadata)."""
    for f in reversed(option_fields()):
        meta = f.metadata
        t = field_type(f)
        ptype: Any = click.Choice(meta["choices"]) if meta.get("choices") else t
        default = f.default if f.default is not None else "unset"
        fn = click.option(f"--{f.name.replace('_', '-')}", f.name, type=ptype, default=None,
                          help=f"{meta['help']} [default: {default}]")(fn)
    return click.option("--config", "config_file", type=click.Path(dir_okay=False),
                        help="TOML file of search options (options given here win).")(fn)


def build_config(config_file: str | None, options: dict[str, Any],
                 base: SearchConfig | None = None) -> SearchConfig:
    values: dict[str, Any] = base.to_dict() if base else {}
    if config_file:
        values.update(load_toml(config_file))
    values.update({k: v for k, v in options.items() if v is not None})
    return SearchConfig.from_dict(values)


@click.group("search")
def search() -> None:
    """Create and manage searches.

    Example: renas-db search create s1 --population 20 --steps 200
    """


@search.command("create")
@click.argument("name")
@config_options
@pass_app
def create_cmd(app: AppContext, name: str, config_file: str | None, **options: Any) -> None:
    """Create a search and queue its initial population.

    Example: renas-db search create s1 --dataset fashion-mnist --mutator random
    """
    from renas_db import searches
    config = build_config(config_file, options)
    store = app.store()
    unreadable = _dataset_unreadable(config)
    searches.create(store, name, config)
    message(f"search {name} created: P={config.population} S={config.sample} "
            f"E={config.steps} mutator={config.mutator}; start workers with "
            f"`renas-db worker --search {name}`")
    if unreadable:
        message(f"warning: this machine cannot read dataset {config.dataset} ({unreadable}); "
                f"created anyway: each worker checks it before its first job "
                f"(`renas-db worker --data-dir DIR` says where it lives on that host)")


def _dataset_unreadable(config: SearchConfig) -> str | None:
    """Why this machine cannot read the search's dataset (its files' headers, no torch),
    or None when it can."""
    from renas_db.datasets import dataset_info
    from renas_db.errors import DataError
    try:
        dataset_info(config.dataset).check_files(config.data_dir)
    except DataError as exc:
        return str(exc)
    return None


@search.command("list")
@click.option("--json", "as_json_", is_flag=True, help="JSON for scripts.")
@pass_app
def list_cmd(app: AppContext, as_json_: bool) -> None:
    """List searches with their status and best fitness.

    Example: renas-db search list --json
    """
    from renas_db.db.admin import list_searches
    rows = list_searches(app.store())
    if as_json_:
        as_json(rows)
    elif not rows:
        message("no searches yet: `renas-db search create NAME`")
    else:
        table(rows, ["name", "status", "mutator", "steps_done", "steps", "alive",
                     "best_fitness", "created_at"])


@search.command("show")
@click.argument("name")
@click.option("--json", "as_json_", is_flag=True, help="JSON for scripts.")
@pass_app
def show_cmd(app: AppContext, name: str, as_json_: bool) -> None:
    """Show a search's configuration, progress and best individuals.

    Example: renas-db search show s1
    """
    from renas_db.db.reports import describe_search
    info = describe_search(app.store(), name)
    if as_json_:
        as_json(info)
        return
    out.print(f"[bold]{info['name']}[/bold]  {info['status']}  created {info['created_at']}")
    table([{"key": k, "value": v} for k, v in sorted(info["config"].items())], title="config")
    if info["best"]:
        table(info["best"], ["id", "origin", "fitness", "genotype"], title="best alive")


def _status_command(verb: str, status: SearchStatus) -> click.Command:
    @click.command(verb)
    @click.argument("name")
    @pass_app
    def cmd(app: AppContext, name: str) -> None:
        from renas_db.db.admin import set_search_status
        old = set_search_status(app.store(), name, status)
        message(f"search {name}: {old} -> {status}")
    cmd.__doc__ = (f"{verb.capitalize()} a search: workers "
                   f"{'stop claiming its jobs' if verb == 'pause' else 'claim its jobs again'}."
                   f"\n\n    Example: renas-db search {verb} s1\n    ")
    cmd.help = cmd.__doc__
    return cmd


search.add_command(_status_command("pause", SearchStatus.PAUSED))


@search.command("resume")
@click.argument("name")
@pass_app
def resume_cmd(app: AppContext, name: str) -> None:
    """Resume a search: workers claim its jobs again. A failed search runs again too,
    once its cause is fixed (requeue its dead jobs with `renas-db search requeue`).

    Example: renas-db search resume s1
    """
    from renas_db.db.admin import describe_or_none, set_search_status
    from renas_db.db.protocol import resume_failed
    store = app.store()
    info = describe_or_none(store, name)
    if info is not None and info["status"] == SearchStatus.FAILED:
        resume_failed(store, name)
        message(f"search {name}: failed -> running")
        return
    old = set_search_status(store, name, SearchStatus.RUNNING)
    message(f"search {name}: {old} -> {SearchStatus.RUNNING}")


@search.command("requeue")
@click.argument("name")
@pass_app
def requeue_cmd(app: AppContext, name: str) -> None:
    """Queue a search's dead jobs again with their attempts reset (after fixing what
    killed them). Dead steps whose victim or parent is gone stay dead.

    Example: renas-db search requeue s1
    """
    from renas_db.db.protocol import requeue_dead
    r = requeue_dead(app.store(), name)
    message(f"search {name}: {r['requeued']} dead jobs requeued, {r['left_dead']} left dead")

COMMANDS = [search]
