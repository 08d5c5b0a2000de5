"""Run the dashboard with uvicorn."""
from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Callable

from renas_db.errors import ConfigError, RenasError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def serve(url: str | None, host: str, port: int,
          say: Callable[[str], None] = print) -> None:
    """Serve until interrupted. The database must answer at start (one clear line if
    not); later outages are shown by the pages, which retry."""
    import uvicorn

    from renas_db.dashboard.app import create_app
    from renas_db.dashboard.data import ReadOnlyDB, Unavailable
    db = ReadOnlyDB(url)
    try:
        db.ping()
    except Unavailable:
        raise RenasError(f"cannot read the database {db.masked_url} (missing, not migrated "
                         f"or not answering)") from None
    if host not in LOCAL_HOSTS:
        say(f"warning: the dashboard listens on {host}, not only on this machine: anyone "
            f"who reaches that address reads every search in the database (it has no login)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        why = "in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise ConfigError(f"cannot listen on {host}:{port}: {why}") from None
    sock.listen(128)  # connections wait in the backlog until uvicorn accepts them
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    say(f"dashboard on http://{shown}:{bound}/ (database {db.masked_url}); Ctrl-C stops it")
    # the one-time sweeps start now, while the first page is still being opened
    threading.Thread(target=db.warm, name="dashboard-warm", daemon=True).start()
    config = uvicorn.Config(create_app(db), log_level="warning", access_log=False,
                            lifespan="off")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        db.dispose()
