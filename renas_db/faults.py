"""Injection points: where tests make a deterministic interleaving or a fault.

`point(name, *args)` does nothing unless a test put a hook into HOOKS (in-process
tests) or named the point in the RENAS_FAULTS environment variable (real processes):
`RENAS_FAULTS=after_commit=exit` ends the process with os._exit(137) at that point, as
a kill -9 would. The points are listed in docs/design.md (3.5)."""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

HOOKS: dict[str, Callable[..., None]] = {}
_env: dict[str, str] | None = None


def _from_env() -> dict[str, str]:
    global _env
    if _env is None:
        _env = {}
        for item in os.environ.get("RENAS_FAULTS", "").split(","):
            name, _, action = item.partition("=")
            if name.strip():
                _env[name.strip()] = action.strip() or "exit"
    return _env


def point(name: str, *args: Any) -> None:
    hook = HOOKS.get(name)
    if hook is not None:
        hook(*args)
    if _from_env().get(name) == "exit":
        os._exit(137)
