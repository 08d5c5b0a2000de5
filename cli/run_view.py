"""What `renas-db run` shows while its workers run.

On a terminal a live rich view (the search's progress, best / mean fitness, each worker's
job and its examples done, the dashboard's address); elsewhere (a pipe, a file, CI) one
plain line each time the progress moves and at least every HEARTBEAT_S. The workers' own
log lines go to one file per worker in the run folder; --verbose also streams them."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from renas_db.cli.render import fmt

#: seconds between two plain lines when nothing moves
HEARTBEAT_S = 30.0
#: how long `run --dashboard` waits for the dashboard to say where it listens
DASHBOARD_START_S = 30.0
_URL = re.compile(r"dashboard on (http://\S+/)")


def log_folder(root: str, name: str) -> Path:
    """Where a search's worker logs go: ROOT/NAME/, created."""
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class LogTail:
    """The lines appended to some files since they were opened (a line is returned once
    complete), for --verbose."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self._files: list[IO[bytes]] = []
        for p in paths:
            f = open(p, "rb")  # noqa: SIM115 (read until close())
            f.seek(0, os.SEEK_END)
            self._files.append(f)
        self._partial = [b""] * len(self._files)

    def lines(self) -> list[str]:
        out: list[str] = []
        for i, f in enumerate(self._files):
            chunk = f.read()
            if not chunk:
                continue
            *done, self._partial[i] = (self._partial[i] + chunk).split(b"\n")
            out += [line.decode(errors="replace").rstrip("\r") for line in done]
        return out

    def close(self) -> None:
        for i, f in enumerate(self._files):
            if self._partial[i]:   # a last line without its newline
                self._partial[i] += b"\n"
            f.close()


class DashboardChild:
    """`renas-db dashboard` started beside the workers; its address read from its log."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = open(log, "ab")  # noqa: SIM115 (closed by stop())
        self._start = self._out.tell()
        self._since = time.monotonic()
        self.proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.url: str | None = None
        self.failed: str | None = None

    def state(self) -> str:
        """The address once it listens, else why not (yet)."""
        if self.url is None and self.failed is None:
            text = self.log.read_bytes()[self._start:].decode(errors="replace")
            found = _URL.search(text)
            if found:
                self.url = found.group(1)
            elif self.proc.poll() is not None:
                last = [ln for ln in text.splitlines() if ln.strip()]
                self.failed = last[-1] if last else f"exited with {self.proc.returncode}"
            elif time.monotonic() - self._since > DASHBOARD_START_S:
                self.failed = f"no address after {DASHBOARD_START_S:g} s (see {self.log})"
        if self.url is not None:
            if self.proc.poll() is not None:
                return f"stopped (exit code {self.proc.returncode}; see {self.log})"
            return self.url
        return f"not running: {self.failed}" if self.failed else "starting"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


def _worker_rows(st: dict[str, Any]) -> list[tuple[str, str, int | None, int | None]]:
    """(worker, its job, examples done, examples expected) per running job."""
    return [(f"{w['worker']} {w['device']} pid {w['pid']}",
             f"job {w['job']} {w['kind']} {w['index']}"
             + (f" (attempt {w['attempt']})" if w["attempt"] > 1 else ""),
             w.get("examples_done"), w.get("examples_total")) for w in st["workers"]]


def plain_line(st: dict[str, Any], dashboard: str | None) -> str:
    """One line of the search's progress, for logs."""
    jobs = st["jobs"]
    parts = [f"{st['name']} {st['status']}",
             f"init {st['init_done']}/{st['population']}",
             f"steps {st['steps_done']}/{st['steps']}",
             f"best {fmt(st['best_fitness'])} mean {fmt(st['mean_fitness'])}",
             f"jobs queued {jobs['queued']} running {jobs['running']} "
             f"done {jobs['done']} dead {jobs['dead']}"]
    workers = [f"worker {w} {job}" + (f" {done}" + (f"/{total}" if total else "") + " ex"
                                      if done is not None else "")
               for w, job, done, total in _worker_rows(st)]
    if workers:
        parts.append(", ".join(workers))
    if dashboard:
        parts.append(f"dashboard {dashboard}")
    return time.strftime("%H:%M:%S ") + " | ".join(parts)


def _bar(done: int | None, total: int | None) -> RenderableType:
    if done is None:
        return Text("-")
    if not total:
        return Text(f"{done} examples")
    grid = Table.grid(padding=(0, 1))
    grid.add_row(ProgressBar(total=total, completed=min(done, total), width=30),
                 Text(f"{done}/{total} examples"))
    return grid


def live_view(st: dict[str, Any], dashboard: str | None, logs: Path, verbose: bool,
              exited: list[str], problem: str | None) -> RenderableType:
    """The live view of one search."""
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    for label, done, total in (("initial population", st["init_done"], st["population"]),
                               ("steps", st["steps_done"], st["steps"])):
        bar = Table.grid(padding=(0, 1))
        bar.add_row(ProgressBar(total=total or 1, completed=done, width=40),
                    Text(f"{done}/{total}"))
        head.add_row(label, bar)
    head.add_row("fitness best / mean / std",
                 f"{fmt(st['best_fitness'])} / {fmt(st['mean_fitness'])} / "
                 f"{fmt(st['std_fitness'])}  ({st['alive']} alive)")
    head.add_row("controller version / mean reward",
                 f"{fmt(st['controller_version'])} / {fmt(st['controller_mean_reward'])}")
    jobs = st["jobs"]
    head.add_row("jobs queued / running / done / dead",
                 f"{jobs['queued']} / {jobs['running']} / {jobs['done']} / {jobs['dead']}"
                 f"   failures and expired leases: {st['failures']}")
    head.add_row("#M models / Cost examples", f"{st['models_trained']} / {st['examples']}")
    head.add_row("dashboard", dashboard or "none (run --dashboard, or renas-db dashboard)")
    head.add_row("worker logs", f"{logs}{os.sep}worker-*.log"
                 + ("" if verbose else " (--verbose streams them)"))
    workers = Table(title="workers", title_justify="left", expand=False)
    for col in ("worker", "job", "progress"):
        workers.add_column(col)
    for w, job, done, total in _worker_rows(st):
        workers.add_row(w, job, _bar(done, total))
    for line in exited:
        workers.add_row(line, "", "")
    parts: list[RenderableType] = [
        Text(f"{st['name']} ({st['status']}, {st['mutator']})", style="bold"), head, workers]
    if problem:
        parts.append(Text(f"status unavailable: {problem}", style="red"))
    return Group(*parts)


class View:
    """The live view on a terminal, plain lines elsewhere; worker lines (--verbose) above."""

    def __init__(self, console: Console, live: bool) -> None:
        self.console = console
        self.live: Live | None = (Live(console=console, refresh_per_second=2, transient=False)
                                  if live else None)
        self._last: tuple[Any, ...] | None = None
        self._last_at = 0.0
        self._exited = 0

    def __enter__(self) -> View:
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.stop()

    def lines(self, lines: list[str]) -> None:
        for line in lines:
            self.console.print(line, markup=False, highlight=False)

    def show(self, st: dict[str, Any], dashboard: str | None, logs: Path, verbose: bool,
             exited: list[str], problem: str | None = None) -> None:
        if self.live is not None:
            self.live.update(live_view(st, dashboard, logs, verbose, exited, problem))
            return
        if problem:
            self.lines([f"status unavailable: {problem}"])
            return
        self.lines([f"{st['name']}: {e}" for e in exited[self._exited:]])
        self._exited = len(exited)
        moved = (st["status"], st["init_done"], st["steps_done"], dashboard,
                 tuple(w["job"] for w in st["workers"]))
        if moved != self._last or time.monotonic() - self._last_at >= HEARTBEAT_S:
            self._last, self._last_at = moved, time.monotonic()
            self.lines([plain_line(st, dashboard)])


def terminal() -> bool:
    """Both streams are a terminal: the live view would otherwise land in a file."""
    return sys.stdout.isatty() and sys.stderr.isatty()
