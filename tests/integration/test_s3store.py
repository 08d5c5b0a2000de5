"""The S3 checkpoint store against a real S3-compatible server (moto's standalone server,
reached over HTTP through a TCP proxy that can refuse connections or cut answers)."""
from __future__ import annotations

import hashlib
import sys
import threading
import time

import pytest
import torch

from renas_db import s3store
from renas_db.checkpoints import CheckpointStore, open_store
from renas_db.config import SearchConfig
from renas_db.db.admin import absolute_root
from renas_db.errors import CheckpointError, ConfigError, MissingDependency, StorageError

PAYLOAD = {"genotype": "g", "state": {"w": torch.arange(12.0).reshape(3, 4)}}


def _store(s3, prefix: str = "runs/a") -> s3store.S3Store:
    return s3store.S3Store(f"s3://{s3.bucket}/{prefix}")


def _keys(s3, prefix: str = "") -> list[str]:
    answer = s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=prefix)
    return sorted(o["Key"] for o in answer.get("Contents", []))


def test_round_trip_with_the_sha256_alongside(s3):
    store = open_store(f"s3://{s3.bucket}/runs/a/")
    assert isinstance(store, s3store.S3Store)
    sha = store.save("s/1-abc.pt", PAYLOAD)
    assert _keys(s3) == ["runs/a/s/1-abc.pt"]
    raw = s3.client().get_object(Bucket=s3.bucket, Key="runs/a/s/1-abc.pt")
    assert hashlib.sha256(raw["Body"].read()).hexdigest() == sha
    assert raw["Metadata"] == {"sha256": sha}
    payload = store.load("s/1-abc.pt", sha)
    assert torch.equal(payload["state"]["w"], PAYLOAD["state"]["w"])
    assert store.verify("s/1-abc.pt", sha) and not store.damaged("s/1-abc.pt", sha)
    assert store.describe("s/1-abc.pt") == f"s3://{s3.bucket}/runs/a/s/1-abc.pt"
    with pytest.raises(CheckpointError, match="relative"):
        store.load("../x.pt", None)
    store.probe()
    assert _keys(s3) == ["runs/a/s/1-abc.pt"]   # the probe's object is gone
    store.delete("s/1-abc.pt")
    store.delete("s/1-abc.pt")                   # deleting twice is fine
    assert _keys(s3) == []


def test_a_write_to_an_existing_key_is_refused(s3):
    store = _store(s3)
    sha = store.save("s/2-abc.pt", PAYLOAD)
    with pytest.raises(CheckpointError, match="exists already"):
        store.save("s/2-abc.pt", {"genotype": "other", "state": {}})
    assert store.load("s/2-abc.pt", sha)["genotype"] == "g"   # the first write stands


def test_tampered_and_missing_objects_are_refused(s3):
    store = _store(s3)
    sha = store.save("s/3-abc.pt", PAYLOAD)
    raw = s3.client().get_object(Bucket=s3.bucket, Key="runs/a/s/3-abc.pt")["Body"].read()
    bad = bytearray(raw)
    bad[-30] ^= 0xFF
    # the metadata still carries the right digest: only the database's counts
    s3.client().put_object(Bucket=s3.bucket, Key="runs/a/s/3-abc.pt", Body=bytes(bad),
                           Metadata={"sha256": sha})
    with pytest.raises(CheckpointError, match="does not match its sha256"):
        store.load("s/3-abc.pt", sha)
    assert not store.verify("s/3-abc.pt", sha)
    assert store.damaged("s/3-abc.pt", sha)
    with pytest.raises(CheckpointError, match=f"s3://{s3.bucket}/runs/a/s/none.pt is missing"):
        store.load("s/none.pt", None)
    assert store.damaged("s/none.pt", None) and not store.verify("s/none.pt", sha)


def test_an_answer_lost_after_the_write_is_not_a_second_write(s3):
    # the server stores the object, the answer never arrives: the retry's conditional
    # create is refused (412), and the object there is ours (same sha256)
    store = _store(s3)
    s3.proxy.cut_answers = 1
    sha = store.save("s/4-abc.pt", PAYLOAD)
    assert s3.proxy.cut_answers == 0
    assert store.load("s/4-abc.pt", sha)["genotype"] == "g"


def test_refused_connections_are_ridden_out(s3):
    store = _store(s3)
    store.probe()                 # a pooled connection exists: closing cuts it too
    s3.proxy.close()
    reopen = threading.Timer(2.0, s3.proxy.open)
    reopen.start()
    try:
        sha = store.save("s/5-abc.pt", PAYLOAD)
    finally:
        reopen.join()
    s3.proxy.close()
    threading.Timer(2.0, s3.proxy.open).start()
    assert store.load("s/5-abc.pt", sha)["genotype"] == "g"


def test_a_persistent_outage_is_one_error_and_not_damage(s3, monkeypatch):
    monkeypatch.setattr(s3store, "RETRY_SECONDS", 1.0)
    store = _store(s3)
    sha = store.save("s/6-abc.pt", PAYLOAD)
    s3.proxy.close()
    with pytest.raises(StorageError, match="unreachable for 1 s") as exc:
        store.load("s/6-abc.pt", sha)
    assert "\n" not in str(exc.value) and isinstance(exc.value, OSError)
    assert not store.damaged("s/6-abc.pt", sha)   # away is an outage: no quarantine
    s3.proxy.open()
    assert not store.damaged("s/6-abc.pt", sha)


def test_a_missing_bucket_fails_at_once(s3, monkeypatch):
    monkeypatch.setattr(s3store, "RETRY_SECONDS", 3600.0)   # would hang if retried
    store = s3store.S3Store("s3://renas-no-such-bucket/p")
    with pytest.raises(StorageError, match="NoSuchBucket: the bucket does not exist"):
        store.probe()
    with pytest.raises(StorageError, match="NoSuchBucket"):
        store.save("s/1.pt", PAYLOAD)
    assert not store.damaged("s/1.pt", None)


def test_collect_keeps_the_live_and_the_young_in_batches(s3, monkeypatch):
    monkeypatch.setattr(s3store, "DELETE_BATCH", 2)
    store = _store(s3)
    for name in ("a", "b", "c", "d", "e", "f"):
        store.save(f"s/{name}.pt", {"state": {}})
    store.save("other/z.pt", {"state": {}})
    s3.client().put_object(Bucket=s3.bucket, Key="runs/a/s/notes.txt", Body=b"x")
    # young: nothing goes, not even the orphans
    assert store.collect("s", keep=["s/a.pt"], grace_seconds=3600) == []
    time.sleep(1.1)   # LastModified has a resolution of one second
    removed = store.collect("s", keep=["s/a.pt"], grace_seconds=1)
    assert sorted(removed) == ["b.pt", "c.pt", "d.pt", "e.pt", "f.pt"]   # three batches
    assert _keys(s3) == ["runs/a/other/z.pt", "runs/a/s/a.pt", "runs/a/s/notes.txt"]


def test_without_boto3_an_s3_root_is_one_clear_line(s3, monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(MissingDependency, match=r"renas-db\[s3\]"):
        s3store.S3Store(f"s3://{s3.bucket}/x")


def test_roots_are_validated_and_kept(tmp_path):
    cfg = SearchConfig(checkpoint_root="s3://my-bucket/runs/x")
    assert absolute_root(cfg).checkpoint_root == "s3://my-bucket/runs/x"
    for bad, why in (("s3://B_ad/x", "not a valid S3 bucket"), ("s3://ok-bucket/a//b", "prefix"),
                     ("gs://bucket/x", "not supported")):
        with pytest.raises(ConfigError, match=why):
            SearchConfig(checkpoint_root=bad)
    assert isinstance(open_store(tmp_path), CheckpointStore)
