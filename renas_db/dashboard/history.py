"""A search's progress, kept per dashboard process and extended with only the new rows.

The history is append-only: a committed child never changes, and the victim it removed is
written in the same transaction. So the population's best / mean / std after each step is
computed once, by a sweep over the individuals in id order (what v_progress defines: at
the child of step t, the alive are the individuals with id <= its id that no child up to
it removed), and each later answer reads from the database only the individuals with a
larger id than the last one swept and the victims of those children (index lookups).

Children created less than SETTLE_S seconds ago are swept for the answer but not kept:
two commits may become visible out of id order (no per-search lock on commit), and a
late one must not be skipped."""
from __future__ import annotations

import heapq
import logging
import math
import threading
import time
from array import array
from bisect import bisect_right
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

SETTLE_S = 30.0
MAX_SEARCHES = 16
#: rows read per query of a sweep, and how long an answer sweeps before it answers with
#: the steps swept so far and leaves the rest to a background thread
CHUNK = 5000
BUDGET_S = 0.1

log = logging.getLogger(__name__)


@dataclass
class State:
    """The population after the individual `last_id` (a heap with lazy removal)."""
    last_id: int = 0
    alive: dict[int, float] = field(default_factory=dict)
    total: float = 0.0
    total_sq: float = 0.0
    heap: list[tuple[float, int]] = field(default_factory=list)

    def copy(self) -> State:
        heap = [(-f, i) for i, f in self.alive.items()]
        heapq.heapify(heap)
        return State(self.last_id, dict(self.alive), self.total, self.total_sq, heap)

    def add(self, ind_id: int, fitness: float) -> None:
        self.alive[ind_id] = fitness
        self.total += fitness
        self.total_sq += fitness * fitness
        heapq.heappush(self.heap, (-fitness, ind_id))

    def remove(self, ind_id: int) -> None:
        f = self.alive.pop(ind_id, None)
        if f is not None:
            self.total -= f
            self.total_sq -= f * f

    def summary(self) -> tuple[float, float, float, int]:
        while self.heap and self.heap[0][1] not in self.alive:
            heapq.heappop(self.heap)
        n = len(self.alive)
        if not n:
            return math.nan, math.nan, math.nan, 0
        mean = self.total / n
        return (-self.heap[0][0], mean, math.sqrt(max(self.total_sq / n - mean * mean, 0.0)),
                n)


@dataclass
class Series:
    """One entry per step (index = step - 1), append-only."""
    child_id: array = field(default_factory=lambda: array("q"))
    child_fitness: array = field(default_factory=lambda: array("d"))
    gain: array = field(default_factory=lambda: array("d"))
    best: array = field(default_factory=lambda: array("d"))
    mean: array = field(default_factory=lambda: array("d"))
    std: array = field(default_factory=lambda: array("d"))
    count: array = field(default_factory=lambda: array("q"))

    def record(self, child_id: int, fitness: float, gain: float | None,
               summary: tuple[float, float, float, int]) -> None:
        self.child_id.append(child_id)
        self.child_fitness.append(fitness)
        self.gain.append(math.nan if gain is None else gain)
        self.best.append(summary[0])
        self.mean.append(summary[1])
        self.std.append(summary[2])
        self.count.append(summary[3])


@dataclass
class Kept:
    state: State = field(default_factory=State)
    series: Series = field(default_factory=Series)
    #: a sweep has reached the newest visible row once (later answers extend it by a little)
    complete: bool = False

    def prefix(self) -> Sweep:
        """The steps swept so far, read without the lock: `count` is the last array each
        step appends to, so every array holds at least that many entries."""
        return Sweep(self.series, len(self.series.count), Series(), complete=False)


class Sweep:
    """What one answer reads: the kept series (steps 1..len(kept)) then this answer's
    own unsettled steps. `complete` is False for an answer that covers only the steps
    swept so far of a history still being read (exact as far as it goes)."""

    def __init__(self, kept: Series, kept_steps: int, tail: Series, *,
                 complete: bool = True) -> None:
        self.kept, self.kept_steps, self.tail = kept, kept_steps, tail
        self.steps = kept_steps + len(tail.child_id)
        self.complete = complete

    def at(self, name: str, step: int) -> Any:
        if step <= self.kept_steps:
            return getattr(self.kept, name)[step - 1]
        return getattr(self.tail, name)[step - 1 - self.kept_steps]

    def age(self, ind_id: int) -> int:
        """Children created after `ind_id` (v_population's age_steps)."""
        before = bisect_right(self.kept.child_id, ind_id, 0, self.kept_steps)
        if before == self.kept_steps:
            before += bisect_right(self.tail.child_id, ind_id)
        return self.steps - before


def _num(x: float) -> float | None:
    return None if math.isnan(x) else x


class HistoryCache:
    """Per-search sweeps, least recently used dropped past MAX_SEARCHES.

    A history is read CHUNK rows at a time, one chunk under the lock. An answer that has
    swept for BUDGET_S without reaching the newest row leaves the rest to a background
    thread and returns the steps swept so far (Sweep.complete False), as does an answer
    that finds a long sweep of its search under way: so no answer waits for a whole
    100k-row history, and the page's next poll gets further."""

    def __init__(self) -> None:
        self._kept: OrderedDict[int, Kept] = OrderedDict()
        self._lock = threading.Lock()
        self._background: set[int] = set()
        self._background_lock = threading.Lock()

    def if_swept(self, db: Any, search_id: int) -> Sweep | None:
        """current() when this search is swept already and no sweep is running, else
        None (without waiting): for answers that have a cheaper way without it."""
        kept = self._kept.get(search_id)
        if kept is None or not kept.complete or not self._lock.acquire(blocking=False):
            return None
        self._lock.release()
        return self.current(db, search_id)

    def current(self, db: Any, search_id: int, *, budget: float | None = None) -> Sweep:
        """The history up to the newest visible individual: the kept part extended by
        the settled new rows (kept), then the unsettled ones (this answer's only). With
        a budget (seconds), possibly only the steps swept so far (see the class)."""
        deadline = None if budget is None else time.monotonic() + budget
        while True:
            kept = self._kept.get(search_id)
            if deadline is not None and kept is not None and not kept.complete:
                left = max(deadline - time.monotonic(), 0.0)
                if not self._lock.acquire(timeout=left):
                    return kept.prefix()     # a long sweep holds it: what it has so far
            else:
                self._lock.acquire()
            try:
                done = self._chunk(db, search_id)
            finally:
                self._lock.release()
            if done is not None:
                return done
            if deadline is not None and time.monotonic() >= deadline:
                self._sweep_in_background(db, search_id)
                return self._kept.get(search_id, Kept()).prefix()

    def _chunk(self, db: Any, search_id: int) -> Sweep | None:
        """One chunk of the sweep (the lock held): the answer if it reached the newest
        row, else None."""
        kept = self._kept.get(search_id)
        if kept is None:
            kept = self._kept[search_id] = Kept()
        self._kept.move_to_end(search_id)
        while len(self._kept) > MAX_SEARCHES:
            self._kept.popitem(last=False)
        rows, victims, now = db.new_history(search_id, kept.state.last_id, CHUNK)
        full = len(rows) == CHUNK
        if full and not _settled(rows[-1][3], now):   # the unsettled end: read all of it
            more, more_victims, now = db.new_history(search_id, rows[-1][0], None)
            rows, victims, full = rows + more, victims + more_victims, False
        # rows are in id order, and so (but for commits in flight) in time order
        cut = len(rows)
        while cut > 0 and not _settled(rows[cut - 1][3], now):
            cut -= 1
        killed: dict[int, list[int]] = {}
        for killer, victim in victims:
            killed.setdefault(killer, []).append(victim)
        _sweep(kept.state, kept.series, rows[:cut], killed)
        if full:
            return None
        kept.complete = True
        tail = Series()
        if cut < len(rows):
            _sweep(kept.state.copy(), tail, rows[cut:], killed)
        return Sweep(kept.series, len(kept.series.child_id), tail)

    def _sweep_in_background(self, db: Any, search_id: int) -> None:
        with self._background_lock:
            if search_id in self._background:
                return
            self._background.add(search_id)

        def run() -> None:
            try:
                self.current(db, search_id)
            except Exception as exc:  # noqa: BLE001 (the next answer sweeps, and says why)
                log.warning("dashboard: history of search %d not swept: %s", search_id,
                            exc)
            finally:
                with self._background_lock:
                    self._background.discard(search_id)

        threading.Thread(target=run, name=f"sweep-{search_id}", daemon=True).start()


def _sweep(state: State, series: Series, rows: list[Any], killed: dict[int, list[int]]
           ) -> None:
    for ind_id, origin, fitness, _created, parent_fitness in rows:
        state.add(ind_id, fitness)
        if origin == "child":
            for victim in killed.get(ind_id, ()):
                state.remove(victim)
            series.record(ind_id, fitness, None if parent_fitness is None
                          else fitness - parent_fitness, state.summary())
        state.last_id = ind_id


def _settled(created_at: Any, now: Any) -> bool:
    from renas_db.dashboard.data import _time
    t, n = _time(created_at), _time(now)
    return t is not None and n is not None and (n - t).total_seconds() >= SETTLE_S


def samples(sweep: Sweep, steps: list[int]) -> list[dict[str, Any]]:
    return [{"step": t, "best": _num(sweep.at("best", t)), "mean": _num(sweep.at("mean", t)),
             "std": _num(sweep.at("std", t)), "alive": sweep.at("count", t)} for t in steps]


def dots(sweep: Sweep, steps: list[int]) -> list[dict[str, Any]]:
    return [{"step": t, "id": sweep.at("child_id", t), "fitness": sweep.at("child_fitness", t),
             "gain": _num(sweep.at("gain", t))} for t in steps]
