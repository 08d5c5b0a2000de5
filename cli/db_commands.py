"""renas-db db upgrade | current"""
from __future__ import annotations

import click

from renas_db.cli.context import AppContext, pass_app
from renas_db.cli.render import message


@click.group("db")
def db() -> None:
    """Database schema commands.

    Example: renas-db --db postgresql://user@host/renas db upgrade
    """


@db.command("upgrade")
@pass_app
def upgrade_cmd(app: AppContext) -> None:
    """Create or upgrade the schema to this version's head.

    Example: renas-db db upgrade
    """
    from renas_db.db.schema import current_revision, head_revision, upgrade
    store = app.store(check_schema=False)
    with store.translated():
        before = current_revision(store)
        upgrade(store)
    message(f"database {store.masked_url}: {before or 'empty'} -> {head_revision()}")


@db.command("current")
@pass_app
def current_cmd(app: AppContext) -> None:
    """Print the schema revision of the database and the head of this renas-db.

    Example: renas-db db current
    """
    from renas_db.db.schema import current_revision, head_revision
    store = app.store(check_schema=False)
    with store.translated():
        current = current_revision(store)
    head = head_revision()
    state = "up to date" if current == head else "run `renas-db db upgrade`"
    click.echo(f"{current or 'empty'} (head {head}: {state})")


COMMANDS = [db]
