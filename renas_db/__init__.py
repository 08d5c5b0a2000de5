"""renas-db: Reinforced Evolutionary NAS with its whole state in a database."""
from __future__ import annotations

__version__ = "0.1.0"
