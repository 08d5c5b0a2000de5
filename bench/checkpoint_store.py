"""Save and load latency of a search-size checkpoint: an s3:// root against a local folder,
measured in one run (issue 18).

The checkpoint is a search's network at the defaults (Fashion-MNIST, F=24, N=2, B=5, a
random cell): the state a worker writes after every job and reads for every step. The S3
side is moto's standalone server on 127.0.0.1 (started here), or any endpoint given with
--endpoint and the standard AWS credentials. Both stores go through the same code a
worker runs (`open_store(root).save/load`, sha256 included); save and load alternate
between the two stores, so drift of the machine's load hits both alike.

    python bench/checkpoint_store.py [--repeats 30] [--endpoint URL --bucket NAME]
"""
from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.1)
    raise SystemExit("moto server did not start")


def checkpoint_payload() -> dict:
    from renas_db import space
    from renas_db.network import Network, spec_for
    genotype = space.random_genotype(5, random.Random(0))
    net = Network(genotype, spec_for("fashion-mnist", cells=2, filters=24))
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    return {"genotype": genotype.to_text(), "state": state}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--endpoint", help="an S3 endpoint (default: a local moto server)")
    ap.add_argument("--bucket", help="an existing bucket at --endpoint")
    args = ap.parse_args()
    proc = None
    if args.endpoint is None:
        proc, args.endpoint = start_moto()
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                          AWS_DEFAULT_REGION="us-east-1")
    os.environ["AWS_ENDPOINT_URL"] = args.endpoint
    try:
        import boto3

        from renas_db.checkpoints import encode, open_store
        bucket = args.bucket or f"renas-bench-{uuid.uuid4().hex[:8]}"
        if args.bucket is None:
            boto3.client("s3").create_bucket(Bucket=bucket)
        payload = checkpoint_payload()
        size = len(encode(payload)[0])
        folder = tempfile.mkdtemp(prefix="renas-bench-ck-")
        stores = {"folder": open_store(folder),
                  "s3": open_store(f"s3://{bucket}/bench-{uuid.uuid4().hex[:6]}")}
        times: dict[tuple[str, str], list[float]] = {(k, op): [] for k in stores
                                                     for op in ("save", "load")}
        for i in range(args.repeats + 2):   # the first two are warm-up (connections)
            for name, store in stores.items():
                uri = f"s/{i}-{uuid.uuid4().hex[:8]}.pt"
                t0 = time.perf_counter()
                sha = store.save(uri, payload)
                t1 = time.perf_counter()
                store.load(uri, sha)
                t2 = time.perf_counter()
                store.delete(uri)
                if i >= 2:
                    times[(name, "save")].append(t1 - t0)
                    times[(name, "load")].append(t2 - t1)
        print(f"checkpoint: {size / 1e6:.2f} MB ({len(payload['state'])} tensors), "
              f"{args.repeats} repeats, endpoint {'moto (local)' if proc else 'given'}")
        print(f"{'op':6} {'folder ms':>10} {'s3 ms':>10} {'s3/folder':>10}")
        for op in ("save", "load"):
            f = statistics.median(times[("folder", op)]) * 1000
            s = statistics.median(times[("s3", op)]) * 1000
            print(f"{op:6} {f:10.2f} {s:10.2f} {s / f:10.1f}x")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
