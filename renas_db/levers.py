"""The overhead levers of issue 16, each switchable back to its old path so that
bench/worker_overhead.py can measure old and new in one run: RENAS_DB_OLD_PATH=count,pack
(or "all"). Not a tuning knob: every new path gives the same results, faster.

- count: mult-adds from the network's shapes, not a traced forward pass per child
- cache: the parents a worker wrote or read kept decoded in memory
- pack: checkpoints written packed (one buffer per dtype), not one record per tensor
- overlap: the controller update and checkpoint GC of a commit beside the next job, not
  before its claim
- noinit: a child built without initialising the tensors it inherits"""
from __future__ import annotations

import os

LEVERS = ("count", "cache", "pack", "overlap", "noinit")


def old_paths() -> frozenset[str]:
    raw = os.environ.get("RENAS_DB_OLD_PATH", "")
    names = {n.strip() for n in raw.split(",") if n.strip()}
    return frozenset(LEVERS) if "all" in names else frozenset(names & set(LEVERS))


def old(lever: str) -> bool:
    """Whether `lever` runs its old path in this process."""
    return lever in old_paths()
