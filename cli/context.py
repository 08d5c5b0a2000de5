"""What every command shares: the database URL, --debug, and the opened store."""
from __future__ import annotations

from dataclasses import dataclass, field

import click

from renas_db.db.session import Store


@dataclass
class AppContext:
    db_url: str | None
    debug: bool
    _store: Store | None = field(default=None, repr=False)

    def store(self, *, check_schema: bool = True) -> Store:
        if self._store is None:
            self._store = Store(self.db_url)
            if check_schema:
                from renas_db.db.schema import ensure_schema
                ensure_schema(self._store)
        return self._store


pass_app = click.make_pass_decorator(AppContext)
