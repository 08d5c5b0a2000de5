"""renas-db dashboard"""
from __future__ import annotations

import click

from renas_db.cli.context import AppContext, pass_app
from renas_db.cli.render import message


@click.command("dashboard")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (another than this machine's warns: no login).")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="Port (0: any free one, printed).")
@pass_app
def dashboard_cmd(app: AppContext, host: str, port: int) -> None:
    """A live, read-only web dashboard of the searches in the database.

    The database is opened read-only, as by `sql`; no page or answer writes.

    Example: renas-db dashboard --port 8765, then open http://127.0.0.1:8765/
    """
    from renas_db.dashboard.server import serve
    serve(app.db_url, host, port, say=lambda text: message(text))


COMMANDS = [dashboard_cmd]
