"""renas-db sql | lineage | plot | show | export"""
from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from renas_db.cli.context import AppContext, pass_app
from renas_db.cli.render import as_json, fmt, message, out, table

if TYPE_CHECKING:
    from renas_db.space import Genotype


@click.command("sql")
@click.argument("query")
@click.option("--json", "as_json_", is_flag=True, help="Rows as JSON objects.")
@click.option("--csv", "as_csv", is_flag=True, help="Rows as CSV with a header.")
@click.option("--timeout", type=float, default=10.0, show_default=True,
              help="Seconds before the query is stopped.")
@click.option("--max-rows", type=click.IntRange(1), default=10000, show_default=True)
@pass_app
def sql_cmd(app: AppContext, query: str, as_json_: bool, as_csv: bool, timeout: float,
            max_rows: int) -> None:
    """Run one read-only SQL statement over the search history (see docs/sql.md).

    Writes, DDL and several statements are refused; the database is opened read-only.

    Example: renas-db sql "SELECT search, step, best_fitness FROM v_progress LIMIT 5"
    """
    from renas_db.db.readonly import run_read_only
    r = run_read_only(app.store(), query, timeout_s=timeout, max_rows=max_rows)
    if as_json_:
        as_json([dict(zip(r.columns, row)) for row in r.rows])
    elif as_csv:
        w = csv.writer(sys.stdout)
        w.writerow(r.columns)
        w.writerows(r.rows)
    else:
        table([dict(zip(r.columns, row)) for row in r.rows], r.columns)
    if r.truncated:
        message(f"(only the first {max_rows} rows)")


@click.command("lineage")
@click.argument("individual_id", type=int)
@click.option("--json", "as_json_", is_flag=True, help="JSON for scripts.")
@pass_app
def lineage_cmd(app: AppContext, individual_id: int, as_json_: bool) -> None:
    """The ancestry of an individual back to the initial population, with the mutation
    and fitness change at each step.

    Example: renas-db lineage 42
    """
    from renas_db.db.history import lineage
    chain = lineage(app.store(), individual_id)
    if as_json_:
        as_json(chain)
        return
    rows = [{"id": r["id"], "origin": r["origin"], "fitness": r["fitness"],
             "gain": r["gain"], "mutation": _mutation(r["mutation"]),
             "genotype": r["genotype"]} for r in chain]
    table(rows, ["id", "origin", "fitness", "gain", "mutation", "genotype"],
          title=f"lineage of {individual_id} ({len(chain) - 1} ancestors)")


def _mutation(actions: Sequence[Sequence[Any]] | None) -> str:  # [[block, field, value], ...]
    if not actions:
        return "-"
    return ", ".join(f"b{a[0]}.{a[1]}={a[2]}" for a in actions)


@click.command("plot")
@click.argument("names", nargs=-1, required=True)
@click.option("-o", "--output", required=True, help="FILE.png, .svg or .pdf")
@pass_app
def plot_cmd(app: AppContext, names: tuple[str, ...], output: str) -> None:
    """Population fitness mean/std and best over steps, every child as a dot, and the
    controller's mean reward; several searches are overlaid.

    Example: renas-db plot renas-run random-run -o compare.png
    """
    from renas_db.db.history import progress
    from renas_db.plots import plot_progress
    series = {n: progress(app.store(), n) for n in names}
    plot_progress(series, output)
    message(f"wrote {output}")


@click.command("show")
@click.argument("individual_id", type=int)
@click.option("-o", "--output", help="Draw the cell to FILE.png, .svg or .pdf (needs Graphviz).")
@click.option("--diff", "with_parent", is_flag=True,
              help="Compare with the parent: the changed pairs, and with -o the parent "
                   "above the child, the mutated pairs in red.")
@click.option("--reduction", is_flag=True,
              help="Draw the cell as the network's reduction cell (stride 2 on its inputs).")
@pass_app
def show_cmd(app: AppContext, individual_id: int, output: str | None, with_parent: bool,
             reduction: bool) -> None:
    """An individual's genotype as text, and optionally a drawing of its cell.

    Example: renas-db show 42 -o cell.png; renas-db show 42 --diff -o diff.png
    """
    from renas_db.db.history import individual
    from renas_db.errors import StateError
    from renas_db.space import parse
    store = app.store()
    row = individual(store, individual_id)
    genotype = parse(row["genotype"])
    parent_row = None
    if with_parent:
        if row["parent_id"] is None:
            raise StateError(f"individual {row['id']} has no parent (it is of the initial "
                             f"population): nothing to compare with --diff")
        parent_row = individual(store, row["parent_id"])
    if output:   # a bad suffix fails before anything is printed
        from renas_db.plots import check_suffix
        check_suffix(output)
    out.print(f"individual {row['id']} of {row['search']} ({row['origin']}, "
              f"{'alive' if row['alive'] else 'dead'}): fitness {fmt(row['fitness'])}, "
              f"{fmt(row['n_params'])} params, parent {fmt(row['parent_id'])}")
    out.print(genotype.to_text())
    for j, b in enumerate(genotype.to_json()):
        out.print(f"  block {j}: {b['op1']}(input {b['in1']}) + {b['op2']}(input {b['in2']})")
    out.print(f"  output: concat of blocks {genotype.loose_ends()}")
    if parent_row is None:
        if output:
            from renas_db.drawing import draw_cell
            draw_cell(genotype, output, title=f"individual {row['id']}: {genotype.to_text()}",
                      reduction=reduction)
            message(f"wrote {output}")
        return
    from renas_db.drawing import describe_change, draw_diff
    parent = parse(parent_row["genotype"])
    out.print(f"parent {parent_row['id']} (fitness {fmt(parent_row['fitness'])}): "
              f"{parent.to_text()}")
    out.print(f"  mutation actions: {_mutation(row['mutation'])}")
    change = describe_change(parent, genotype)
    out.print("  changed: " + ("; ".join(change) if change else "nothing"))
    if output:
        draw_diff(parent, genotype, output, parent_title=_who("parent", parent_row, parent),
                  child_title=_who("child", row, genotype), reduction=reduction)
        message(f"wrote {output}")


def _who(role: str, row: dict[str, Any], genotype: Genotype) -> str:
    return f"{role}: individual {row['id']}, fitness {fmt(row['fitness'])}\n{genotype}"


@click.command("export")
@click.argument("name")
@click.option("--best", "best", is_flag=True, help="The best individual (the default).")
@click.option("--id", "individual_id", type=int, help="This individual instead.")
@click.option("-o", "--output", required=True, help="FILE.json")
@pass_app
def export_cmd(app: AppContext, name: str, best: bool, individual_id: int | None,
               output: str) -> None:
    """Export a genotype with its fitness, search config and lineage summary as JSON;
    renas_db.network.build_from_export(FILE) builds the torch network.

    Example: renas-db export demo --best -o best.json
    """
    from renas_db.db.history import best_individual, export_document, individual
    from renas_db.errors import ConfigError
    store = app.store()
    if best and individual_id is not None:
        raise ConfigError("give --best or --id, not both")
    if individual_id is None:
        individual_id = best_individual(store, name)
    elif individual(store, individual_id)["search"] != name:
        raise ConfigError(f"individual {individual_id} is not in search {name!r}")
    doc = export_document(store, individual_id)
    with open(output, "w") as fh:
        json.dump(doc, fh, indent=2, default=str)
    message(f"wrote {output}: individual {individual_id}, fitness {doc['fitness']:.4f}")


COMMANDS = [sql_cmd, lineage_cmd, plot_cmd, show_cmd, export_cmd]
