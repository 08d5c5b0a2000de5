"""Running the real CLI and real worker processes from tests."""
from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

TINY = ["--dataset", "synthetic", "--cells", "1", "--filters", "4", "--blocks", "3",
        "--init-epochs", "0.05", "--init-lr", "0.2", "--train-subset", "2000",
        "--finetune-examples", "128", "--val-examples", "200", "--batch-size", "32"]


NEUTRAL_CWD = tempfile.gettempdir()


@dataclass
class Result:
    code: int
    out: str
    err: str


def cli_env(db_url: str | None, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RENAS_DB_URL", None)
    if db_url:
        env["RENAS_DB_URL"] = db_url
    env["OMP_NUM_THREADS"] = "1"
    # `python -m` would put the current folder first on sys.path: from a checkout that
    # shadows the installed package (which alone has renas_db.cli)
    env["PYTHONSAFEPATH"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "renas_db.cli.main", *args]


def run_cli(*args: str, db_url: str | None = None, cwd: str | None = None,
            timeout: float = 300, env: dict[str, str] | None = None) -> Result:
    p = subprocess.run(cli_command(*args), env=env or cli_env(db_url), cwd=cwd or NEUTRAL_CWD,
                       capture_output=True, text=True, timeout=timeout)
    return Result(p.returncode, p.stdout, p.stderr)


def assert_one_line_error(r: Result, *needles: str) -> None:
    assert r.code == 1, (r.code, r.out, r.err)
    lines = [ln for ln in r.err.splitlines() if ln.strip()]
    assert len(lines) == 1, r.err
    assert lines[0].startswith("renas-db: error:"), r.err
    assert "Traceback" not in r.err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def spawn_worker(db_url: str, search: str, *extra: str, cwd: str,
                 log_path: str | None = None) -> subprocess.Popen:
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    return subprocess.Popen(cli_command("worker", "--search", search, "--threads", "1",
                                        "--poll", "0.2", *extra),
                            env=cli_env(db_url), cwd=cwd, stdout=out, stderr=out,
                            start_new_session=True)


def wait_for(cond: Callable[[], object], timeout: float = 120, every: float = 0.1,
             what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def idx_images(n: int, rows: int = 28) -> bytes:
    return struct.pack(">IIII", 2051, n, rows, rows) + bytes(
        (i * 7) % 256 for i in range(n * rows * rows))


def idx_labels(n: int) -> bytes:
    return struct.pack(">II", 2049, n) + bytes(i % 10 for i in range(n))


def fashion_fixture(folder: str, n_train: int = 50, n_test: int = 20, gz: bool = True) -> str:
    """A small Fashion-MNIST folder: the four idx files (gzipped or not)."""
    os.makedirs(folder, exist_ok=True)
    files = {"train-images-idx3-ubyte": idx_images(n_train),
             "train-labels-idx1-ubyte": idx_labels(n_train),
             "t10k-images-idx3-ubyte": idx_images(n_test),
             "t10k-labels-idx1-ubyte": idx_labels(n_test)}
    for name, data in files.items():
        if gz:
            with gzip.open(os.path.join(folder, name + ".gz"), "wb") as fh:
                fh.write(data)
        else:
            with open(os.path.join(folder, name), "wb") as fh:
                fh.write(data)
    return folder
