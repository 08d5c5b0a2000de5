"""`renas-db dashboard`: a live, read-only web view of the searches in a database."""
from __future__ import annotations

from renas_db.dashboard.server import LOCAL_HOSTS, serve

__all__ = ["LOCAL_HOSTS", "serve"]
