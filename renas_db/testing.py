"""Factories for tests and benchmarks: job results with no training behind them, a
PgBouncer to put in front of a PostgreSQL server, and the Chromium the browser tests and
docs/screenshots.py drive.

Torch-free, so that protocol tests and coordination benchmarks measure the database and
nothing else.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from typing import Any

from renas_db.jobs import ClaimedJob, JobResult
from renas_db.space import Genotype, parse

# no file is ever written for a fake checkpoint: a fixed digest stands in for its hash
FAKE_SHA256 = "0" * 64


def fake_result(genotype: Genotype | str,
                fitness: float,
                *,
                val_loss: float | None = None,
                checkpoint_uri: str | None = None,
                examples_seen: int = 0,
                train_seconds: float = 0.0,
                n_params: int | None = None,
                test_accuracy: float | None = None,
                controller_version: int | None = None,
                mutation: list[Any] | None = None,
                log_prob: float | None = None,
                reward: float | None = None) -> JobResult:
    """The result of training `genotype` to `fitness`, as a commit receives it. A
    checkpoint URI gets FAKE_SHA256 as its digest."""
    g = parse(genotype) if isinstance(genotype, str) else genotype
    return JobResult(genotype=g.to_text(), arch_hash=g.arch_hash(), fitness=fitness,
                     val_loss=val_loss, checkpoint_uri=checkpoint_uri,
                     checkpoint_sha256=FAKE_SHA256 if checkpoint_uri is not None else None,
                     examples_seen=examples_seen, train_seconds=train_seconds,
                     n_params=n_params, test_accuracy=test_accuracy,
                     controller_version=controller_version, mutation=mutation,
                     log_prob=log_prob, reward=reward)


def trained_genotype(job: ClaimedJob) -> str:
    """The genotype a claimed job trains: its own (init, retrain) or its parent's (a step
    whose fake result skips the mutation)."""
    if job.genotype is not None:
        return job.genotype
    if job.parent is None:
        raise ValueError(f"job {job.id} has neither a genotype nor a parent")
    return job.parent.genotype


def fake_result_for(job: ClaimedJob,
                    fitness: float,
                    *,
                    checkpoint: bool = True,
                    **fields: Any) -> JobResult:
    """fake_result for a claimed job: the genotype it trains and, unless
    checkpoint=False, the checkpoint `<search>/<job id>.pt`. `fields` go to fake_result."""
    uri = f"{job.search_name}/{job.id}.pt" if checkpoint else None
    return fake_result(trained_genotype(job), fitness, checkpoint_uri=uri, **fields)


PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"  # Debian's package


def start_pgbouncer(folder: str, server_host: str, server_port: int, user: str,
                    database: str = "*", pool: int = 2,
                    max_clients: int = 100) -> tuple[subprocess.Popen[bytes], int]:
    """PgBouncer in transaction mode on a free 127.0.0.1 port in front of a PostgreSQL
    server with trust auth, for `database` ("*": every one); its config and log in
    `folder`. Returns the process and its port once it answers. PgBouncer refuses to run
    as root: it runs as nobody then, so `folder` is opened to every user (and must not
    lie inside a private folder such as pytest's tmp_path)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    with open(os.path.join(folder, "users.txt"), "w") as fh:
        fh.write(f'"{user}" ""\n')
    ini = os.path.join(folder, "pgbouncer.ini")
    with open(ini, "w") as fh:
        fh.write(f"""[databases]
{database} = host={server_host} port={server_port} user={user}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {folder}/users.txt
pool_mode = transaction
default_pool_size = {pool}
max_client_conn = {max_clients}
ignore_startup_parameters = extra_float_digits
logfile = {folder}/pgbouncer.log
""")
    os.chmod(folder, 0o777)
    as_nobody = ["-u", "nobody"] if os.geteuid() == 0 else []
    proc = subprocess.Popen([PGBOUNCER, *as_nobody, ini], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"pgbouncer did not start (see {folder}/pgbouncer.log)")


# Debian's packages; Playwright launches them by path (its own browser download fails here)
CHROMIUM_PATHS = ("/usr/bin/chromium-headless-shell", "/usr/bin/chromium")


def chromium_path() -> str | None:
    """The first of CHROMIUM_PATHS installed, else None."""
    return next((p for p in CHROMIUM_PATHS if os.path.exists(p)), None)
