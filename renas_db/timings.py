"""Seconds per phase of a worker's jobs: its overhead accounting."""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Timings:
    """Phase name -> seconds, summed over jobs. `with timings("build"): ...` adds the
    block's wall time to that phase (also when the block raises)."""
    phases: dict[str, float] = field(default_factory=dict)

    def add(self, phase: str, seconds: float) -> None:
        self.phases[phase] = self.phases.get(phase, 0.0) + seconds

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, time.perf_counter() - start)

    def since(self, before: dict[str, float]) -> dict[str, float]:
        """The seconds each phase gained since the `before` copy of `phases`."""
        return {k: v - before.get(k, 0.0) for k, v in self.phases.items()}
