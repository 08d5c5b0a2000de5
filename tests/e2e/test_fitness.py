"""Issue 19 with real worker processes on both databases: a worker checks it can serve a
search before it claims from it, and an error of its host (data, checkpoint root, disk,
device) never costs a job an attempt; an error of the job still does."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from renas_db.db.models import Event, Job, Worker
from renas_db.db.session import Store
from renas_db.dry_run import FAIL_GENOTYPE
from tests.e2e.common import assert_invariants, count, create, events, search_status
from tests.helpers import cli_command, cli_env, fashion_fixture, run_cli, wait_for

DRY = ("--population", "2", "--sample", "2", "--steps", "3", "--mutator", "random",
       "--blocks", "2", "--retry-backoff-seconds", "0", "--max-attempts", "2")


def _unprivileged() -> list[str]:
    """A command prefix under which file modes hold: root passes them by its
    CAP_DAC_OVERRIDE, so as root the worker runs without it (util-linux's setpriv)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: no folder can be made unwritable")
    return [setpriv, "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search",
            "--"]


def _worker(db_url: str, name: str, tmp_path: Path, tag: str, *extra: str,
            prefix: list[str] | None = None, dry: str = "0.05",
            **env: str) -> subprocess.Popen:
    err = open(tmp_path / f"{tag}.err", "wb")
    return subprocess.Popen([*(prefix or []), *cli_command(
        "worker", "--search", name, "--threads", "1", "--poll", "0.1", "--dry-run", dry,
        *extra)], env=cli_env(db_url, **env), cwd=str(tmp_path),
        stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)


def _lines(tmp_path: Path, tag: str) -> list[str]:
    return [ln for ln in (tmp_path / f"{tag}.err").read_text().splitlines() if ln.strip()]


def _assert_one_unfit_line(tmp_path: Path, tag: str, name: str, *needles: str) -> str:
    lines = _lines(tmp_path, tag)
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("renas-db: error: worker ") and "Traceback" not in line, line
    assert f"cannot serve search {name} (" in line, line
    for n in needles:
        assert n in line, (n, line)
    return line


def _jobs(store: Store) -> list[tuple[str, str, int]]:
    with store.transaction(write=False) as s:
        return [tuple(r) for r in s.execute(  # type: ignore[misc]
            select(Job.kind, Job.state, Job.attempt).order_by(Job.id)).all()]


def _assert_finished_first_try(store: Store, db_url: str, name: str, tmp_path: Path) -> None:
    assert search_status(store, name) == "finished"
    jobs = _jobs(store)
    assert len(jobs) == 2 + 3, jobs                          # P init jobs and E steps
    assert all(state == "done" and attempt == 1 for _, state, attempt in jobs), jobs
    assert events(store, "job failed") == 0
    assert_invariants(db_url, name, tmp_path)


def _unfit_rows(db_url: str, name: str) -> list[dict]:
    r = run_cli("status", name, "--json", db_url=db_url)
    assert r.code == 0, r.err
    return json.loads(r.out)["unfit_workers"]


def _two_workers(db_url: str, name: str, tmp_path: Path, bad_args: list[str],
                 prefix: list[str] | None = None) -> tuple[int, int, Store]:
    """The unfit worker first, the healthy one as soon as the unfit one has checked (or,
    without the check, claimed): both run on the search at once."""
    store = Store(db_url)
    bad = _worker(db_url, name, tmp_path, "bad", *bad_args, prefix=prefix)
    wait_for(lambda: bad.poll() is not None or events(store, "worker unfit")
             or count(store, Job, Job.attempt > 0), timeout=120, every=0.02,
             what="the unfit worker's check or first claim")
    good = _worker(db_url, name, tmp_path, "good")
    return bad.wait(timeout=180), good.wait(timeout=180), store


def test_a_worker_that_cannot_write_the_checkpoint_root_costs_no_attempt(db_url, tmp_path):
    prefix = _unprivileged()
    create(db_url, "w", tmp_path, *DRY, "--dataset", "synthetic")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    bad, good, store = _two_workers(db_url, "w", tmp_path, ["--checkpoint-root", str(ro)],
                                    prefix=prefix)
    assert (bad, good) == (1, 0), _lines(tmp_path, "bad")
    _assert_one_unfit_line(tmp_path, "bad", "w", "(checkpoint root)", str(ro),
                           "is not writable", "--checkpoint-root")
    _assert_finished_first_try(store, db_url, "w", tmp_path)
    assert events(store, "worker unfit") == 1
    unfit = _unfit_rows(db_url, "w")
    assert len(unfit) == 1 and unfit[0]["state"] == "stopped", unfit
    assert "is not writable" in unfit[0]["why"]
    with store.transaction(write=False) as s:
        rows = s.execute(select(Worker.unfit).order_by(Worker.id)).scalars().all()
    assert rows[0] and "cannot serve search w" in rows[0] and rows[1] is None, rows
    store.dispose()


def test_a_worker_whose_data_dir_does_not_exist_costs_no_attempt(db_url, tmp_path):
    data = fashion_fixture(str(tmp_path / "fashion"))
    create(db_url, "d", tmp_path, *DRY, "--dataset", "fashion-mnist", "--data-dir", data)
    nope = tmp_path / "nope"
    bad, good, store = _two_workers(db_url, "d", tmp_path, ["--data-dir", str(nope)])
    assert (bad, good) == (1, 0), _lines(tmp_path, "bad")
    _assert_one_unfit_line(tmp_path, "bad", "d", "(data)", str(nope), "not found",
                           "--data-dir")
    _assert_finished_first_try(store, db_url, "d", tmp_path)
    store.dispose()


def test_a_search_whose_only_worker_is_unfit_waits_for_a_fit_one(db_url, tmp_path):
    create(db_url, "m", tmp_path, *DRY, "--dataset", "synthetic")
    (tmp_path / "file").write_text("not a folder")
    missing = tmp_path / "file" / "ck"            # can never be made
    store = Store(db_url)
    bad = _worker(db_url, "m", tmp_path, "bad", "--checkpoint-root", str(missing))
    assert bad.wait(timeout=120) == 1
    _assert_one_unfit_line(tmp_path, "bad", "m", "(checkpoint root)", str(missing),
                           "does not exist and cannot be created", "--checkpoint-root")
    assert search_status(store, "m") == "created"     # still runnable: nothing spent
    assert [(s, a) for _, s, a in _jobs(store)] == [("queued", 0)] * 2
    r = run_cli("status", "m", db_url=db_url)
    assert r.code == 0 and "unfit worker" in r.out and "cannot be created" in r.out, r.out
    assert "#Ex per model" in r.out
    assert _worker(db_url, "m", tmp_path, "good").wait(timeout=180) == 0
    _assert_finished_first_try(store, db_url, "m", tmp_path)
    store.dispose()


def test_a_checkpoint_root_gone_read_only_mid_search_gives_the_job_back(db_url, tmp_path):
    prefix = _unprivileged()
    create(db_url, "r", tmp_path, *DRY, "--dataset", "synthetic")
    store = Store(db_url)
    w = _worker(db_url, "r", tmp_path, "bad", prefix=prefix, dry="0.3")
    wait_for(lambda: count(store, Job, Job.state == "done") >= 1 or w.poll() is not None,
             timeout=120, every=0.02, what="a first commit")
    folder = tmp_path / "ck" / "r"
    for f in (tmp_path / "ck", folder):
        f.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        assert w.wait(timeout=120) == 1, _lines(tmp_path, "bad")
    finally:
        for f in (tmp_path / "ck", folder):
            f.chmod(stat.S_IRWXU)
    last = _lines(tmp_path, "bad")[-1]
    assert last.startswith("renas-db: error: worker ") and "cannot serve search r (" in last
    assert "checkpoint root" in last and "is not writable" in last, last
    assert events(store, "job given back") == 1
    with store.transaction(write=False) as s:
        msg = s.scalar(select(Event.message).where(Event.kind == "job given back"))
    assert "no attempt counted" in msg, msg
    assert _worker(db_url, "r", tmp_path, "good").wait(timeout=180) == 0
    _assert_finished_first_try(store, db_url, "r", tmp_path)
    store.dispose()


def test_an_error_of_the_job_still_counts_attempts(db_url, tmp_path):
    create(db_url, "j", tmp_path, *DRY, "--dataset", "synthetic")
    store = Store(db_url)
    with store.transaction(write=False) as s:
        first, genotype = s.execute(select(Job.id, Job.genotype).order_by(Job.id)).first()
    w = _worker(db_url, "j", tmp_path, "w", **{FAIL_GENOTYPE: genotype})
    assert w.wait(timeout=180) == 0
    assert search_status(store, "j") == "finished"
    with store.transaction(write=False) as s:
        state, attempt = s.execute(select(Job.state, Job.attempt)
                                   .where(Job.id == first)).one()
    assert (state, attempt) == ("dead", 2)                   # max_attempts
    assert events(store, "job failed") == 2
    assert events(store, "init job replaced") == 1
    assert events(store, "job given back") == 0 and events(store, "worker unfit") == 0
    assert count(store, Job, Job.state == "done") == 2 + 3
    store.dispose()
    assert_invariants(db_url, "j", tmp_path)
