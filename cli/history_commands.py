"""History commands (sql, lineage, plot, show, export) register here."""
from __future__ import annotations

COMMANDS: list = []
