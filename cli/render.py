"""rich rendering: data to stdout, messages to stderr."""
from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None,
          title: str | None = None) -> None:
    cols = list(columns or (rows[0].keys() if rows else []))
    t = Table(title=title)
    for c in cols:
        t.add_column(c)
    for r in rows:
        t.add_row(*(fmt(r.get(c)) for c in cols))
    out.print(t)


def as_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def message(text: str) -> None:
    err.print(text)
