"""Searches whose checkpoints live in object storage (an s3:// root), with real worker
processes reaching moto's standalone S3 server through the standard AWS environment."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import select

from renas_db.checkpoints import open_store
from renas_db.db import gc
from renas_db.db.models import Individual, Job, Search, Worker
from renas_db.db.schema import upgrade
from renas_db.db.session import Store
from tests.e2e.common import assert_invariants, count, events, search_status
from tests.helpers import (
    TINY,
    Result,
    assert_one_line_error,
    cli_env,
    run_cli,
    spawn_worker,
    wait_for,
)
from tests.s3server import MotoServer

PREFIX = "cluster/runs"


@pytest.fixture
def sqlite_url(tmp_path):  # type: ignore[no-untyped-def]
    """The store does not depend on the database: SQLite here, PostgreSQL below."""
    url = f"sqlite:///{tmp_path / 'renas.sqlite'}"
    store = Store(url)
    upgrade(store)
    store.dispose()
    return url


def _create(db_url: str, name: str, root: str, tmp_path, *args: str) -> None:
    r = run_cli("search", "create", name, "--checkpoint-root", root, *args, db_url=db_url,
                cwd=str(tmp_path))
    assert r.code == 0, r.err


def _objects(s3, prefix: str) -> dict[str, bytes]:
    c = s3.client()
    keys = [o["Key"] for o in c.list_objects_v2(Bucket=s3.bucket, Prefix=prefix)
            .get("Contents", [])]
    return {k: c.get_object(Bucket=s3.bucket, Key=k)["Body"].read() for k in keys}


def _alive(store: Store, name: str) -> dict[str, str]:
    with store.transaction(write=False) as s:
        rows = s.execute(select(Individual.checkpoint_uri, Individual.checkpoint_sha256)
                         .join(Search, Search.id == Individual.search_id)
                         .where(Search.name == name, Individual.alive.is_(True))).all()
    return {f"{PREFIX}/{uri}": sha for uri, sha in rows}


def _assert_only_alive_objects_left(s3, store: Store, name: str) -> None:
    """Every alive individual's object is there and matches the database's hash, and
    nothing else is left under the search's prefix."""
    alive = _alive(store, name)
    objects = _objects(s3, f"{PREFIX}/{name}/")
    assert sorted(objects) == sorted(alive)
    for key, sha in alive.items():
        assert hashlib.sha256(objects[key]).hexdigest() == sha, key


@pytest.mark.slow
def test_a_search_on_s3_survives_a_worker_killed_mid_fine_tune(pg_url, s3, tmp_path):
    root = f"s3://{s3.bucket}/{PREFIX}"
    _create(pg_url, "k3", root, tmp_path, *TINY, "--population", "4", "--sample", "2",
            "--steps", "8", "--mutator", "renas", "--controller-hidden", "16",
            "--lease-seconds", "2", "--max-attempts", "20", "--finetune-examples", "1024")
    # an object no row will ever reference, as a worker that died after its write leaves
    c = s3.client()
    c.put_object(Bucket=s3.bucket, Key=f"{PREFIX}/k3/9999-deadbeef.pt", Body=b"orphan")
    store = Store(pg_url)
    logs = [str(tmp_path / f"w{i}.log") for i in range(2)]
    workers = [spawn_worker(pg_url, "k3", cwd=str(tmp_path), log_path=lg) for lg in logs]

    def fine_tuning():  # type: ignore[no-untyped-def]
        with store.transaction(write=False) as s:
            return s.execute(select(Worker.pid).join(Job, Job.worker_id == Worker.id).where(
                Job.state == "running", Job.kind == "step", Job.progress > 0)).first()
    row = wait_for(fine_tuning, timeout=300, every=0.05, what="a step mid-fine-tune")
    victim = next(p for p in workers if p.pid == row[0])   # type: ignore[index]
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    survivor = next(p for p in workers if p is not victim)
    assert survivor.wait(timeout=400) == 0, open(logs[workers.index(survivor)]).read()
    assert search_status(store, "k3") == "finished"
    assert count(store, Job, Job.kind == "step", Job.state == "done") == 8
    assert count(store, Job, Job.attempt > 1) >= 1        # the killed job was taken over
    assert_invariants(pg_url, "k3", tmp_path)             # hashes verified over S3

    # the orphan scan, as the workers run it: an orphan goes once older than the grace
    # period (by the server's clock), never before; live objects never
    with store.transaction(write=False) as s:
        sid = s.scalar(select(Search.id).where(Search.name == "k3"))
    keep = gc.live_checkpoints(store, sid)
    files = open_store(root)
    assert files.collect("k3", keep, grace_seconds=3600) == []
    c.put_object(Bucket=s3.bucket, Key=f"{PREFIX}/k3/9998-young.pt", Body=b"orphan")
    grace = 3.0
    gone = files.collect("k3", keep, grace_seconds=grace)
    assert "9998-young.pt" not in gone                    # younger than the grace period
    assert f"{PREFIX}/k3/9998-young.pt" in _objects(s3, f"{PREFIX}/k3/")
    assert f"{PREFIX}/k3/9999-deadbeef.pt" not in _objects(s3, f"{PREFIX}/k3/")
    wait_for(lambda: "9998-young.pt" in files.collect("k3", keep, grace_seconds=grace),
             timeout=60, every=0.5, what="the young orphan to age past the grace period")
    _assert_only_alive_objects_left(s3, store, "k3")
    store.dispose()


def test_an_s3_outage_mid_search_is_ridden_out(sqlite_url, s3, tmp_path):
    root = f"s3://{s3.bucket}/{PREFIX}"
    _create(sqlite_url, "o3", root, tmp_path, "--population", "4", "--sample", "2",
            "--steps", "40", "--mutator", "random", "--blocks", "2", "--lease-seconds", "60")
    store = Store(sqlite_url)
    workers = [spawn_worker(sqlite_url, "o3", "--dry-run", "0.1", cwd=str(tmp_path),
                            log_path=str(tmp_path / f"w{i}.log")) for i in range(2)]

    def done() -> int:
        return count(store, Job, Job.state == "done")
    wait_for(lambda: done() >= 6, timeout=120, every=0.02, what="six jobs done")
    s3.proxy.close()                  # refused connections, the open ones cut
    time.sleep(4)
    s3.proxy.open()
    before = done()
    wait_for(lambda: done() >= before + 4, timeout=120, every=0.02, what="four more jobs")
    s3.server.pause()                 # a hung server: connections accepted, no answer
    time.sleep(3)
    s3.server.resume()
    for p in workers:
        assert p.wait(timeout=300) == 0
    logs = "".join(open(tmp_path / f"w{i}.log").read() for i in range(2))
    assert "checkpoint store:" in logs and "retrying" in logs   # the outage was met
    assert search_status(store, "o3") == "finished"
    assert count(store, Job, Job.state == "done") == 44
    # nothing lost: no job failed, none was retried
    assert events(store, "job failed") == 0
    assert count(store, Job, Job.attempt > 1) == 0
    assert count(store, Job, Job.error.is_not(None)) == 0
    assert_invariants(sqlite_url, "o3", tmp_path)
    # the victims' objects went with them (after each commit; every 10th the scan)
    _assert_only_alive_objects_left(s3, store, "o3")
    # a tampered object is a finding of `check`, as a tampered file is
    key = sorted(_alive(store, "o3"))[0]
    s3.client().put_object(Bucket=s3.bucket, Key=key, Body=b"tampered")
    r = run_cli("check", "o3", db_url=sqlite_url, cwd=str(tmp_path))
    assert r.code == 1 and "violated invariant 4" in r.out, r.out + r.err
    store.dispose()


def test_wrong_credentials_a_missing_bucket_or_no_boto3_is_one_line(sqlite_url, s3,
                                                                    tmp_path):
    _create(sqlite_url, "c3", f"s3://{s3.bucket}/{PREFIX}", tmp_path, "--population",
            "2", "--sample", "2", "--steps", "2", "--blocks", "2")
    store = Store(sqlite_url)
    args = ("worker", "--search", "c3", "--dry-run", "0")
    checking = MotoServer(auth=True)       # every key is unknown to this one
    try:
        env = cli_env(sqlite_url, AWS_ENDPOINT_URL=checking.url,
                      AWS_SECRET_ACCESS_KEY="not-the-secret-xyz")
        r = run_cli(*args, env=env, cwd=str(tmp_path))
    finally:
        checking.stop()
    assert_one_line_error(r, "InvalidAccessKeyId", "credentials")
    assert "not-the-secret-xyz" not in r.err + r.out and "testing" not in r.err
    r = run_cli(*args, "--checkpoint-root", "s3://renas-no-such-bucket/x",
                db_url=sqlite_url, cwd=str(tmp_path))
    assert_one_line_error(r, "NoSuchBucket", "renas-no-such-bucket")
    # no job was claimed, none failed
    assert count(store, Job, Job.attempt > 0) == 0
    p = subprocess.run([sys.executable, "-c",
                        "import sys; sys.modules['boto3'] = None\n"
                        "from renas_db.cli.main import main; sys.exit(main())", *args],
                       env=cli_env(sqlite_url), cwd=str(tmp_path), capture_output=True,
                       text=True, timeout=120)
    assert_one_line_error(Result(p.returncode, p.stdout, p.stderr), "renas-db[s3]")
    r = run_cli("search", "create", "g3", "--checkpoint-root", "gs://bucket/x",
                db_url=sqlite_url, cwd=str(tmp_path))
    assert_one_line_error(r, "gs://", "s3://bucket/prefix")
    # with them right, the same worker serves the search
    r = run_cli(*args, db_url=sqlite_url, cwd=str(tmp_path))
    assert r.code == 0, r.err
    assert search_status(store, "c3") == "finished"
    store.dispose()


def test_a_lost_parent_object_is_quarantined_as_a_lost_file_is(sqlite_url, s3, tmp_path):
    root = f"s3://{s3.bucket}/{PREFIX}"
    # sample = population: every step's parent is the fittest individual
    _create(sqlite_url, "q3", root, tmp_path, "--population", "3", "--sample", "3",
            "--steps", "4", "--mutator", "random", "--blocks", "2")
    store = Store(sqlite_url)
    r = run_cli("worker", "--search", "q3", "--dry-run", "0", "--max-jobs", "3",
                db_url=sqlite_url, cwd=str(tmp_path))
    assert r.code == 0, r.err
    with store.transaction(write=False) as s:
        best, uri = s.execute(select(Individual.id, Individual.checkpoint_uri)
                              .order_by(Individual.fitness.desc(), Individual.id)).first()
    s3.client().delete_object(Bucket=s3.bucket, Key=f"{PREFIX}/{uri}")
    r = run_cli("worker", "--search", "q3", "--dry-run", "0", db_url=sqlite_url,
                cwd=str(tmp_path))
    assert r.code == 0, r.err
    assert search_status(store, "q3") == "finished"
    assert events(store, "parent quarantined") == 1
    assert count(store, Individual, Individual.id == best,
                 Individual.quarantined.is_(True)) == 1
    assert count(store, Job, Job.kind == "step", Job.state == "done") == 4
    r = run_cli("check", "q3", db_url=sqlite_url, cwd=str(tmp_path))
    assert r.code == 1 and "quarantined" in r.out and f"individual {best}" in r.out, r.out
    store.dispose()
