"""The dashboard from tests: a real `renas-db dashboard` process on a free port, HTTP
requests with the standard library, and a small search with known history."""
from __future__ import annotations

import json
import random
import re
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tests.helpers import NEUTRAL_CWD, cli_command, cli_env


@dataclass
class Dashboard:
    base: str
    proc: subprocess.Popen
    first_line: str
    lines: list[str] = field(default_factory=list)

    def get(self, path: str, method: str = "GET") -> tuple[int, Any, dict[str, str]]:
        """(status, JSON or text, headers) of one request."""
        req = urllib.request.Request(self.base + path, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status, body, headers = r.status, r.read().decode(), dict(r.headers)
        except urllib.error.HTTPError as e:
            status, body, headers = e.code, e.read().decode(), dict(e.headers)
        kind = headers.get("content-type", "")
        return status, json.loads(body) if kind.startswith("application/json") else body, \
            {k.lower(): v for k, v in headers.items()}

    def json(self, path: str) -> Any:
        status, body, _ = self.get(path)
        assert status == 200, (path, status, body)
        return body


@contextmanager
def dashboard(db_url: str, *extra: str) -> Iterator[Dashboard]:
    """`renas-db dashboard --port 0`; its stderr's first line gives the URL."""
    proc = subprocess.Popen(cli_command("dashboard", "--port", "0", *extra),
                            env=cli_env(db_url), cwd=NEUTRAL_CWD, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        lines = []
        while True:
            line = proc.stdout.readline()
            if not line:
                raise AssertionError("dashboard exited: " + "".join(lines))
            lines.append(line)
            m = re.search(r"dashboard on (http://\S+?)/? ", line)
            if m:
                break
        yield Dashboard(m.group(1), proc, line, lines)
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        if out:
            lines.append(out)


def known_search(store, tmp_path, name: str = "k", steps: int = 37, population: int = 4,
                 seed: int = 1) -> int:  # type: ignore[no-untyped-def]
    """A finished search with random (seeded) fitness, run through the real protocol."""
    from renas_db import searches
    from renas_db.config import SearchConfig
    from renas_db.db import admin, protocol
    from renas_db.testing import fake_result_for
    cfg = SearchConfig(population=population, sample=2, steps=steps, mutator="random",
                       blocks=2, checkpoint_root=str(tmp_path / f"ck-{name}"))
    sid = searches.create(store, name, cfg)
    wid = admin.register_worker(store, "h", 1, "cpu")
    rng = random.Random(seed)
    while True:
        job = protocol.claim(store, sid, wid)
        if job is None:
            return sid
        mutation = [[0, "op1", 1]] * rng.randint(1, 3) if job.kind == "step" else None
        protocol.commit_job(store, job, fake_result_for(
            job, rng.random(), checkpoint=False, examples_seen=100, train_seconds=1.0,
            mutation=mutation), wid)
