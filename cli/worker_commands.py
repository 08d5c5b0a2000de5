"""renas-db worker | run | status | recover | check"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from renas_db.cli.context import AppContext, pass_app
from renas_db.cli.render import as_json, err, message, out
from renas_db.cli.search_commands import build_config, config_options
from renas_db.errors import ConfigError, RenasError
from renas_db.jobs import ClaimedJob, JobState, SearchStatus

#: seconds between two reads of the search's status by `run`, and between two reads of
#: the worker logs it streams (--verbose)
STATUS_S, TICK_S = 2.0, 0.5

if TYPE_CHECKING:
    from pathlib import Path

    from rich.table import Table

    from renas_db.cli.run_view import DashboardChild, LogTail, View
    from renas_db.db.session import Store
    from renas_db.worker import ProgressFactory


def _device(gpu: int | None, cpu: bool) -> str:
    if gpu is not None and cpu:
        raise ConfigError("give --gpu N or --cpu, not both")
    return f"cuda:{gpu}" if gpu is not None else "cpu"


def _progress_factory() -> ProgressFactory | None:
    """A rich progress bar per job when stderr is a terminal."""
    if not sys.stderr.isatty():
        return None
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    def make(job: ClaimedJob) -> Callable[[int, int], None]:
        progress = Progress(TextColumn(f"job {job.id} {job.kind} {job.step_index}"),
                            BarColumn(), TextColumn("{task.completed}/{task.total} examples"),
                            TimeRemainingColumn(), console=err, transient=True)
        task = None

        def update(done: int, total: int) -> None:
            nonlocal task
            if task is None:
                progress.start()
                task = progress.add_task("train", total=total)
            progress.update(task, completed=done)
            if done >= total:
                progress.stop()
        return update
    return make


@click.command("worker")
@click.option("--search", "search_name", help="Serve only this search (default: every "
              "running search).")
@click.option("--gpu", type=int, help="Train on CUDA device N.")
@click.option("--cpu", is_flag=True, help="Train on the CPU (the default without --gpu).")
@click.option("--threads", type=click.IntRange(1, 1024), help="CPU threads for torch.")
@click.option("--max-jobs", type=click.IntRange(1), help="Exit after this many jobs.")
@click.option("--checkpoint-root", help="Override the search's checkpoint root (e.g. a "
              "shared mount seen under another path on this machine, or s3://bucket/prefix).")
@click.option("--data-dir", "data_dirs", multiple=True, metavar="[NAME=]DIR",
              help="Where the data lives on this machine, overriding the search's "
              "--data-dir: DIR for every dataset, NAME=DIR for one (repeatable).")
@click.option("--poll", "poll_seconds", type=float, default=1.0, show_default=True,
              help="Seconds between claims when there is no work.")
@click.option("--idle-exit", type=float, help="Exit after this many seconds without work.")
@click.option("--stats-json", type=click.Path(dir_okay=False),
              help="Write per-phase timings to this file at exit: each job's wall time "
                   "and phases (background_* phases ran in a thread beside the job).")
@click.option("--dry-run", "dry_run_seconds", type=float, hidden=True,
              help="No training: fake fitness after this many seconds (tests, benchmarks).")
@pass_app
def worker_cmd(app: AppContext, search_name: str | None, gpu: int | None, cpu: bool,
               threads: int | None, max_jobs: int | None, checkpoint_root: str | None,
               data_dirs: tuple[str, ...], poll_seconds: float, idle_exit: float | None,
               stats_json: str | None, dry_run_seconds: float | None) -> None:
    """Claim and run jobs until the searches finish (Ctrl-C releases the job and stops).

    Before its first claim from a search the worker checks it can serve it (the device
    works, the dataset loads, the checkpoint root takes a probe write); a search it
    cannot serve it never claims from, and it exits with one line saying why when no
    search it can serve is left.

    Example: renas-db --db postgresql://renas@db/renas worker --gpu 0
    """
    from renas_db.datasets import parse_data_dirs
    from renas_db.worker import Worker, WorkerOptions
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"%(asctime)s worker[{os.getpid()}] %(message)s"))
    wlog = logging.getLogger("renas_db.worker")
    wlog.addHandler(handler)
    wlog.setLevel(logging.DEBUG if app.debug else logging.INFO)
    wlog.propagate = False
    store = app.store()
    from renas_db.db.admin import active_search_ids
    from renas_db.retry import retrying
    # an unknown search: one clear error
    retrying("list searches", active_search_ids, store, search_name)
    options = WorkerOptions(search=search_name, device=_device(gpu, cpu), threads=threads,
                            max_jobs=max_jobs, checkpoint_root=checkpoint_root,
                            data_dirs=parse_data_dirs(data_dirs), poll_seconds=poll_seconds,
                            idle_exit_seconds=idle_exit,
                            stats_json=stats_json, dry_run_seconds=dry_run_seconds)
    worker = Worker(store, options, progress_factory=_progress_factory())
    worker.install_signal_handlers()
    s = worker.run()
    total = sum(s.timings.values()) or 1.0
    outside = total - sum(s.timings.get(p, 0.0) for p in ("train", "recalibrate", "evaluate"))
    message(f"worker {s.worker_id}: {s.jobs_done} jobs done, {s.jobs_failed} failed, "
            + (f"{s.jobs_given_back} given back, " if s.jobs_given_back else "")
            + f"{s.leases_lost} leases lost, {s.wall_seconds:.1f}s; "
            f"{100 * outside / total:.1f}% of job time outside train/recalibrate/evaluate")


def _worker_command(app: AppContext, name: str, device: str, threads: int,
                    dry_run: float | None) -> list[str]:
    cmd = [sys.executable, "-m", "renas_db.cli.main"]
    if app.debug:
        cmd.append("--debug")
    return cmd + ["worker", "--search", name, "--threads", str(threads)] + (
        ["--cpu"] if device == "cpu" else ["--gpu", device.split(":")[1]]) + (
        ["--dry-run", str(dry_run)] if dry_run is not None else [])


@click.command("run")
@click.argument("name")
@click.option("--workers", "n_workers", type=click.IntRange(1, 256), default=1,
              show_default=True, help="Local worker processes (GPUs first).")
@click.option("--threads", type=click.IntRange(1, 1024),
              help="Torch threads per CPU worker (default: cores / workers).")
@click.option("--workers-per-gpu", "per_gpu", type=click.IntRange(1, 64), default=1,
              show_default=True,
              help="Worker processes sharing each GPU (run CUDA MPS for them to overlap; "
                   "docs/cluster.md).")
@click.option("--log-dir", default="logs", show_default=True,
              help="Worker logs go to LOG_DIR/NAME/worker-N.log (appended on resume).")
@click.option("--verbose", "-v", is_flag=True,
              help="Also stream the workers' log lines to the terminal.")
@click.option("--dashboard", "with_dashboard", is_flag=True,
              help="Also serve `renas-db dashboard` on 127.0.0.1 while the search runs.")
@click.option("--dashboard-port", type=click.IntRange(0, 65535), default=8765,
              show_default=True, help="The dashboard's port (0: any free one).")
@click.option("--dry-run", "dry_run_seconds", type=float, hidden=True,
              help="Workers fake fitness after this many seconds (tests).")
@config_options
@pass_app
def run_cmd(app: AppContext, name: str, n_workers: int, threads: int | None, per_gpu: int,
            log_dir: str, verbose: bool, with_dashboard: bool, dashboard_port: int,
            dry_run_seconds: float | None, config_file: str | None, **options: Any) -> None:
    """Create (or resume) a search and run it with local workers, showing live progress.

    On a terminal the view is live (steps, fitness, each worker's job and progress, the
    dashboard's address); piped or in CI it prints one line whenever the progress moves.
    Worker logs go to files (--log-dir); --verbose streams them too. Ctrl-C stops the
    workers cleanly (a second Ctrl-C kills them); running the same command again resumes
    where the search stood.

    Example: renas-db run demo --workers 2 --population 8 --steps 24 --train-subset 2000
    --dashboard

    With --workers-per-gpu K, the first K workers share GPU 0, the next K GPU 1, and so
    on; workers past the GPUs' slots run on the CPU.
    """
    from renas_db import searches
    from renas_db.cli.run_view import DashboardChild, LogTail, View, log_folder, terminal
    from renas_db.db.admin import describe_or_none, set_search_status
    store = app.store()
    info = describe_or_none(store, name)
    if info is None:
        config = build_config(config_file, options)
        searches.create(store, name, config)
        message(f"search {name} created (P={config.population}, E={config.steps}, "
                f"{config.mutator})")
    else:
        given = {k: v for k, v in options.items() if v is not None}
        if given or config_file:
            message(f"search {name} exists: resuming it; search options are ignored")
        if info["status"] == SearchStatus.PAUSED:
            set_search_status(store, name, SearchStatus.RUNNING)
        elif info["status"] in (SearchStatus.FINISHED, SearchStatus.FAILED):
            _final(store, name)
            return
        message(f"resuming search {name} ({info['status']})")
    env = dict(os.environ)
    env["RENAS_DB_URL"] = store.url  # through the environment: never on a command line
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["PYTHONSAFEPATH"] = "1"  # `-m` must not import a checkout in the current folder
    devices = _local_devices(n_workers, per_gpu)
    cpu_workers = sum(1 for d in devices if d == "cpu")
    per = threads or max(1, (os.cpu_count() or 1) // max(cpu_workers, 1))
    logs = log_folder(log_dir, name)
    paths = [logs / f"worker-{i + 1}.log" for i in range(len(devices))]
    files = [open(p, "ab") for p in paths]  # noqa: SIM115 (closed below)
    tail = LogTail(paths) if verbose else None
    procs = [subprocess.Popen(_worker_command(app, name, d, per, dry_run_seconds), env=env,
                              stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                              start_new_session=True) for d, f in zip(devices, files)]
    for f in files:
        f.close()  # the workers hold their own copies
    dashboard = None
    if with_dashboard:
        dashboard = DashboardChild(
            [sys.executable, "-m", "renas_db.cli.main", "dashboard", "--port",
             str(dashboard_port)], env, logs / "dashboard.log")
    message(f"started {len(procs)} workers ({', '.join(devices)}), logs in {logs}; "
            f"Ctrl-C stops them")
    interrupted = 0
    view = View(err, terminal())
    try:
        with view:
            try:
                _watch(store, name, procs, view, tail, dashboard, logs, paths)
            except KeyboardInterrupt:
                interrupted = 1
                message("stopping workers (they release their jobs); Ctrl-C again kills them")
                for p in procs:
                    _signal(p, signal.SIGTERM)
                try:
                    for p in procs:
                        p.wait()
                except KeyboardInterrupt:
                    for p in procs:
                        _signal(p, signal.SIGKILL)
                    for p in procs:
                        p.wait()
            if tail is not None:
                view.lines(tail.lines())
    finally:
        if tail is not None:
            tail.close()
        if dashboard is not None:
            dashboard.stop()
    codes = [p.returncode for p in procs]
    if not interrupted:
        _final(store, name)
    if any(codes) and not interrupted:
        bad = [i for i, c in enumerate(codes) if c]
        raise RenasError(f"{len(bad)} worker(s) exited with an error (exit codes {codes}); "
                         f"{paths[bad[0]]} ends: {_last_line(paths[bad[0]])}")


def _last_line(path: Path) -> str:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1] if lines else "(empty)"


def _signal(p: subprocess.Popen, sig: int) -> None:
    try:
        p.send_signal(sig)
    except ProcessLookupError:
        pass


def _local_devices(n: int, per_gpu: int = 1, gpus: int | None = None) -> list[str]:
    """The devices of `n` local workers: `per_gpu` on each GPU in turn, the rest CPU."""
    if gpus is None:
        try:
            import torch
            gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        except Exception:
            gpus = 0
    return [f"cuda:{i // per_gpu}" if i < gpus * per_gpu else "cpu" for i in range(n)]


def _watch(store: Store, name: str, procs: list[subprocess.Popen[bytes]], view: View,
           tail: LogTail | None, dashboard: DashboardChild | None, logs: Path,
           paths: list[Path]) -> None:
    """Refresh the view every STATUS_S (and stream log lines every TICK_S) until every
    worker has exited."""
    from renas_db.db.reports import search_status
    st: dict[str, Any] | None = None
    next_status = 0.0
    while True:
        running = any(p.poll() is None for p in procs)
        if tail is not None:
            view.lines(tail.lines())
        if time.monotonic() >= next_status or not running:
            next_status = time.monotonic() + STATUS_S
            exited = [f"worker {i + 1} exited with code {p.returncode} (see {paths[i]})"
                      for i, p in enumerate(procs) if p.returncode]
            shown = dashboard.state() if dashboard is not None else None
            try:
                st = search_status(store, name)
                view.show(st, shown, logs, tail is not None, exited)
            except RenasError as exc:  # an outage: keep the last view, say why
                if st is not None:
                    view.show(st, shown, logs, tail is not None, exited, str(exc))
        if not running:
            return
        time.sleep(TICK_S)


def _final(store: Store, name: str) -> None:
    from renas_db.db.reports import describe_search, search_status
    st = search_status(store, name)
    out.print(_status_table(st))
    best = describe_search(store, name)["best"]
    if best:
        out.print(f"best genotype (individual {best[0]['id']}, fitness "
                  f"{best[0]['fitness']:.4f}): {best[0]['genotype']}")


def _status_table(st: dict[str, Any]) -> Table:
    from rich.table import Table

    from renas_db.cli.render import fmt
    t = Table(title=f"{st['name']} ({st['status']}, {st['mutator']})", show_header=False)
    rows = [("initial population", f"{st['init_done']}/{st['population']}"),
            ("steps", f"{st['steps_done']}/{st['steps']}"),
            ("alive", st["alive"]),
            ("fitness best / mean / std",
             f"{fmt(st['best_fitness'])} / {fmt(st['mean_fitness'])} / {fmt(st['std_fitness'])}"),
            ("controller version / mean reward",
             f"{fmt(st['controller_version'])} / {fmt(st['controller_mean_reward'])}"),
            ("jobs queued / running / done / dead",
             " / ".join(str(st["jobs"][k]) for k in JobState)),
            ("#M models / #Ex per model / Cost examples",
             f"{st['models_trained']} / {fmt(st['examples_per_model'])} / {st['examples']}"),
            ("failures and expired leases", st["failures"])]
    if st.get("quarantined"):
        rows.append(("quarantined (checkpoint lost; never a parent)",
                     ", ".join(str(i) for i in st["quarantined"])))
    waiting = st.get("waiting")
    if waiting and (waiting["count"] or not st["workers"]):
        rows.append((f"workers waiting for work: {waiting['count']}", waiting["why"]))
    for w in st["workers"]:
        rows.append((f"worker {w['worker']} ({w['host']}:{w['pid']} {w['device']})",
                     f"job {w['job']} {w['kind']} {w['index']} attempt {w['attempt']}"))
    for w in st.get("unfit_workers", []):
        rows.append((f"unfit worker {w['worker']} ({w['host']}:{w['pid']} {w['device']}, "
                     f"{w['state']})", w["why"]))
    t.add_column()
    t.add_column()
    for k, v in rows:
        t.add_row(k, str(v))
    return t


@click.command("status")
@click.argument("name", required=False)
@click.option("--watch", is_flag=True, help="Refresh every 2 seconds until Ctrl-C.")
@click.option("--json", "as_json_", is_flag=True, help="JSON for scripts.")
@pass_app
def status_cmd(app: AppContext, name: str | None, watch: bool, as_json_: bool) -> None:
    """Progress of a search (or every search): steps, fitness, controller, workers.

    Example: renas-db status demo --watch
    """
    from renas_db.db.admin import list_searches
    from renas_db.db.reports import search_status
    store = app.store()
    names = [name] if name else [r["name"] for r in list_searches(store)]
    if not names:
        message("no searches yet: `renas-db search create NAME`")
        return
    if as_json_:
        data = [search_status(store, n) for n in names]
        as_json(data[0] if name else data)
        return
    if watch:
        from rich.console import Group
        from rich.live import Live
        try:
            with Live(console=out, refresh_per_second=1) as live:
                while True:
                    live.update(Group(*(_status_table(search_status(store, n)) for n in names)))
                    time.sleep(2)
        except KeyboardInterrupt:
            return
    for n in names:
        out.print(_status_table(search_status(store, n)))


@click.command("recover")
@click.argument("name")
@pass_app
def recover_cmd(app: AppContext, name: str) -> None:
    """Return jobs whose lease expired to the queue now (workers also do this at every claim),
    and fold controller episodes a dead committer left behind.

    Example: renas-db recover demo
    """
    from renas_db.db.protocol import recover
    from renas_db.shared_controller import fold_leftovers
    store = app.store()
    r = recover(store, name)
    folded = fold_leftovers(store, name)
    message(f"{name}: {r['requeued_or_dead']} expired jobs requeued or dead; "
            f"{r['queued']} queued, {r['running']} running"
            + (f"; {folded} leftover episodes folded into the controller" if folded else ""))


@click.command("check")
@click.argument("name")
@click.option("--checkpoint-root", help="Where this machine sees the checkpoint folder "
              "(or s3://bucket/prefix).")
@pass_app
def check_cmd(app: AppContext, name: str, checkpoint_root: str | None) -> None:
    """Check the search's invariants (population size, parents, victims, fences,
    checkpoints, controller versions) with SQL.

    Example: renas-db check demo
    """
    from renas_db.db.reports import check_invariants, explain
    problems = check_invariants(app.store(), name, checkpoint_root)
    for p in problems:
        click.echo(f"violated {explain(p)}")
    if problems:
        raise RenasError(f"{len(problems)} invariant(s) violated in search {name}")
    message(f"{name}: all invariants hold")


COMMANDS = [worker_cmd, run_cmd, status_cmd, recover_cmd, check_cmd]
