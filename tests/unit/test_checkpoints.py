from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time

import pytest
import torch

from renas_db.checkpoints import PLAIN_FORMAT, CheckpointStore, PackedState, encode
from renas_db.errors import CheckpointError


def test_round_trip(tmp_path):
    store = CheckpointStore(tmp_path)
    state = {"w": torch.randn(3, 3)}
    sha = store.save("s/1-abc.pt", {"genotype": "g", "state": state})
    payload = store.load("s/1-abc.pt", sha)
    assert torch.equal(payload["state"]["w"], state["w"]) and payload["genotype"] == "g"
    assert store.verify("s/1-abc.pt", sha)
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["1-abc.pt"]


def test_a_network_state_is_packed_one_buffer_per_dtype_and_reads_back_exactly(tmp_path):
    """channels_last weights, int64 counters, 0-d and empty tensors: each comes back with
    its values and shape, from a file holding one record per dtype, not one per tensor."""
    torch.manual_seed(0)
    state = {"conv": torch.randn(4, 3, 3, 3).to(memory_format=torch.channels_last),
             "bn.count": torch.tensor(7), "bias": torch.randn(4), "none": torch.zeros(0, 3),
             "half": torch.randn(5).to(torch.bfloat16)}
    store = CheckpointStore(tmp_path)
    sha = store.save("s/p.pt", {"genotype": "g", "state": state})
    back = store.load("s/p.pt", sha)["state"]
    assert list(back) == list(state)
    for k, v in state.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(back[k], v)
    raw = torch.load(tmp_path / "s" / "p.pt", weights_only=True)
    assert sorted(raw["state"]["buffers"]) == ["bfloat16", "float32", "int64"]
    # packing copies: changing the source after the save changes nothing kept
    packed = PackedState.pack(state)
    state["bias"].add_(1)
    assert not torch.equal(packed.unpack()["bias"], state["bias"])


def test_a_checkpoint_of_the_plain_format_still_loads(tmp_path):
    """Searches started before the packed format keep their parents readable."""
    state = {"w": torch.randn(3, 3), "n": torch.tensor(2)}
    (tmp_path / "s").mkdir()
    torch.save({"format": PLAIN_FORMAT, "genotype": "g", "state": state},
               tmp_path / "s" / "old.pt")
    back = CheckpointStore(tmp_path).load("s/old.pt", None)
    assert back["genotype"] == "g" and torch.equal(back["state"]["w"], state["w"])


@pytest.mark.parametrize("index", [[["w", "float32", 0, [100]]], [["w", "int8", 0, [1]]],
                                   "nonsense", [["w", "float32", -1, [1]]],
                                   [["w", "float32", 0, [-2, -2]]]])
def test_a_malformed_packed_state_is_a_checkpoint_error(tmp_path, index):
    data, _ = encode({"genotype": "g", "state": {"w": torch.zeros(4)}})
    payload = torch.load(__import__("io").BytesIO(data), weights_only=True)
    payload["state"]["index"] = index
    (tmp_path / "s").mkdir()
    torch.save(payload, tmp_path / "s" / "bad.pt")
    with pytest.raises(CheckpointError, match="malformed"):
        CheckpointStore(tmp_path).load("s/bad.pt", None)


def test_tampered_and_code_carrying_files_are_refused(tmp_path):
    store = CheckpointStore(tmp_path)
    sha = store.save("s/a.pt", {"state": {"w": torch.zeros(4)}})
    path = tmp_path / "s" / "a.pt"
    data = bytearray(path.read_bytes())
    data[-30] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        store.load("s/a.pt", sha)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    evil = tmp_path / "s" / "evil.pt"
    torch.save({"format": "renas-checkpoint-1", "x": Evil()}, evil)
    with pytest.raises(CheckpointError, match="carries code"):
        store.load("s/evil.pt", None)
    evil.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError):
        store.load("s/evil.pt", None)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="missing"):
        store.load("s/none.pt", None)
    with pytest.raises(CheckpointError, match="relative"):
        store.load("../../etc/passwd", None)


CRASH = """
import os, sys, torch
from renas_db import checkpoints
real_replace = os.replace
def hang(src, dst):
    print("WRITTEN", flush=True)
    import time; time.sleep(60)
checkpoints.os.replace = hang
state = {"state": {"w": torch.zeros(1000)}}
checkpoints.CheckpointStore(sys.argv[1]).save("s/7-deadbeef.pt", state)
"""


def test_crash_between_temp_write_and_rename_leaves_nothing_readable(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", CRASH, str(tmp_path)], stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "WRITTEN"
    p.kill()
    p.wait()
    store = CheckpointStore(tmp_path)
    files = os.listdir(tmp_path / "s")
    assert len(files) == 1 and files[0].startswith(".tmp-")
    with pytest.raises(CheckpointError, match="missing"):
        store.load("s/7-deadbeef.pt", None)
    assert store.collect("s", keep=[], grace_seconds=3600) == []   # young: kept
    old = time.time() - 7200
    os.utime(tmp_path / "s" / files[0], (old, old))
    assert store.collect("s", keep=[], grace_seconds=3600) == [files[0]]


def test_collect_keeps_the_keep_set_and_young_files(tmp_path):
    store = CheckpointStore(tmp_path)
    for name in ("a", "b", "c"):
        store.save(f"s/{name}.pt", {"state": {}})
    old = time.time() - 7200
    for name in ("a", "b"):
        os.utime(tmp_path / "s" / f"{name}.pt", (old, old))
    removed = store.collect("s", keep=["s/a.pt"], grace_seconds=3600)
    assert removed == ["b.pt"]
    assert sorted(os.listdir(tmp_path / "s")) == ["a.pt", "c.pt"]


# -- the worker's in-memory cache of recent checkpoints (issue 16) ---------------------------
class CountingStore(CheckpointStore):
    """A folder store that counts its disk reads."""

    def __init__(self, root):
        super().__init__(root)
        self.reads = 0

    def load(self, uri, sha256):
        self.reads += 1
        return super().load(uri, sha256)


def test_a_checkpoint_written_is_served_from_memory_byte_identical_to_the_file(tmp_path):
    from renas_db.checkpoints import CheckpointCache, encode
    store, cache = CountingStore(tmp_path), CheckpointCache(2**20)
    state = {"w": torch.randn(8, 3, 3, 3), "b": torch.randn(8)}
    sha = cache.save(store, "s/1-abc.pt", {"genotype": "g", "state": state})
    payload = cache.load(store, "s/1-abc.pt", sha)
    assert store.reads == 0 and cache.hits == 1  # without the cache: a disk read
    data, cached_sha = encode(payload)
    assert data == (tmp_path / "s" / "1-abc.pt").read_bytes() and cached_sha == sha
    # a read from disk is kept too: the next load of the same parent reads nothing
    other = CheckpointStore(tmp_path)
    sha2 = other.save("s/2-abc.pt", {"genotype": "h", "state": {"w": torch.ones(4)}})
    for _ in range(3):
        assert cache.load(store, "s/2-abc.pt", sha2)["genotype"] == "h"
    assert store.reads == 1


def test_the_cache_serves_only_the_databases_digest_and_stays_within_its_bytes(tmp_path):
    from renas_db.checkpoints import CheckpointCache
    store, cache = CountingStore(tmp_path), CheckpointCache(3 * 4096)
    shas = [cache.save(store, f"s/{i}.pt", {"state": {"w": torch.full((1024,), float(i))}})
            for i in range(4)]  # 4 KiB each: the oldest is dropped
    cache.load(store, "s/0.pt", shas[0])
    assert store.reads == 1
    with pytest.raises(CheckpointError, match="sha256"):  # not the digest it holds: disk
        cache.load(store, "s/3.pt", shas[2])
    assert store.reads == 2
    assert cache.load(store, "s/3.pt", shas[3])["state"]["w"][0] == 3.0 and store.reads == 2
