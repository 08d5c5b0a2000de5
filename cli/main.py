"""Entry point: the command group, global options, and one-line errors."""
from __future__ import annotations

import logging
import sys

import click

from renas_db.cli.context import AppContext
from renas_db.errors import RenasError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--db", "db_url", envvar="RENAS_DB_URL", metavar="URL",
              help="Database URL (default sqlite:///renas.sqlite; env RENAS_DB_URL).")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.version_option(package_name="renas-db")
@click.pass_context
def cli(ctx: click.Context, db_url: str | None, debug: bool) -> None:
    """renas-db: Reinforced Evolutionary NAS with its whole state in a database.

    Example: renas-db run demo --workers 2 --dataset fashion-mnist
    """
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.obj = AppContext(db_url=db_url, debug=debug)


def _register() -> None:
    from renas_db.cli import (
        dashboard_commands,
        db_commands,
        history_commands,
        retrain_commands,
        search_commands,
        worker_commands,
    )
    for module in (db_commands, search_commands, worker_commands, history_commands,
                   retrain_commands, dashboard_commands):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="renas-db", standalone_mode=False)
        return 0
    except click.exceptions.Abort:
        click.echo("renas-db: aborted", err=True)
        return 1
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        if debug:
            raise
        message = exc.format_message().replace("\n", " ")
        click.echo(f"renas-db: error: {message}", err=True)
        return 1
    except RenasError as exc:
        if debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        click.echo(f"renas-db: error: {message}", err=True)
        return 1
    except KeyboardInterrupt:
        click.echo("renas-db: interrupted", err=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
