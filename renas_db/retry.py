"""Riding out database outages: retries with capped exponential backoff."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from renas_db.errors import ConflictError, DatabaseUnavailable

log = logging.getLogger("renas_db.worker")
T = TypeVar("T")
P = ParamSpec("P")
ATTEMPTS = 60


def retrying(what: str, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """fn(*args, **kwargs), retrying database outages and conflicts with capped
    exponential backoff (0.2 s doubling to 5 s: 60 attempts ride out about 4.5 minutes).
    `what` names the call in the log."""
    delay = 0.2
    for i in range(ATTEMPTS):
        try:
            return fn(*args, **kwargs)
        except (DatabaseUnavailable, ConflictError) as exc:
            if i == ATTEMPTS - 1:
                raise
            log.warning("%s: %s; retrying in %.1fs", what, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")
