"""What `renas-db run` shows: worker log lines in files (streamed only with --verbose),
plain progress lines when not on a terminal, the live view on one (a real pseudo-terminal),
and the dashboard's address with --dashboard. Real worker processes with the dry-run
executor (fake fitness, real commits), a real database."""
from __future__ import annotations

import os
import pty
import re
import subprocess
from pathlib import Path

from tests.helpers import cli_command, cli_env, run_cli

SEARCH = ["--workers", "2", "--threads", "1", "--dataset", "synthetic", "--population", "4",
          "--sample", "2", "--steps", "6", "--mutator", "random", "--dry-run", "0.2"]
WORKER_LINE = re.compile(r"worker\[\d+\] job \d+: (init|step) \d+ of ")


def _logs(tmp_path: Path, name: str) -> list[str]:
    return [p.read_text() for p in sorted((tmp_path / "logs" / name).glob("worker-*.log"))]


def test_worker_lines_go_to_files_and_progress_to_plain_lines(db_url, tmp_path):
    r = run_cli("run", "plain", *SEARCH, "--checkpoint-root", str(tmp_path / "ck"),
                "--dashboard", "--dashboard-port", "0", db_url=db_url, cwd=str(tmp_path),
                timeout=300)
    assert r.code == 0, r.err[-3000:]
    logs = _logs(tmp_path, "plain")
    assert len(logs) == 2
    assert all(WORKER_LINE.search(text) for text in logs), logs
    assert sum(len(WORKER_LINE.findall(text)) for text in logs) == 10  # 4 init + 6 steps
    assert not WORKER_LINE.search(r.err), r.err   # not streamed without --verbose
    lines = [ln for ln in r.err.splitlines() if " | init " in ln]
    assert lines and "\x1b[" not in r.err        # plain lines, no live view
    assert "steps 6/6" in lines[-1] and "plain finished" in lines[-1], lines
    assert re.search(r"dashboard http://127\.0\.0\.1:\d+/", lines[-1]), lines
    assert "best genotype" in r.out


def test_verbose_streams_the_worker_lines(db_url, tmp_path):
    r = run_cli("run", "loud", *SEARCH, "--verbose", "--checkpoint-root",
                str(tmp_path / "ck"), db_url=db_url, cwd=str(tmp_path), timeout=300)
    assert r.code == 0, r.err[-3000:]
    streamed = WORKER_LINE.findall(r.err)
    assert len(streamed) == 10, r.err
    assert sum(len(WORKER_LINE.findall(text)) for text in _logs(tmp_path, "loud")) == 10


def test_a_terminal_gets_the_live_view(db_url, tmp_path):
    parent, child = pty.openpty()
    env = cli_env(db_url, COLUMNS="120", LINES="40", TERM="xterm")
    p = subprocess.Popen(cli_command("run", "live", *SEARCH, "--checkpoint-root",
                                     str(tmp_path / "ck")),
                         stdin=child, stdout=child, stderr=child, env=env, cwd=str(tmp_path))
    os.close(child)
    shown = b""
    while True:
        try:
            chunk = os.read(parent, 65536)
        except OSError:   # the child side closed: the command is done
            break
        if not chunk:
            break
        shown += chunk
    os.close(parent)
    assert p.wait(timeout=300) == 0
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.decode(errors="replace"))
    assert "━" in text and "initial population" in text, text[-3000:]   # progress bars
    assert "worker logs" in text and "steps" in text
    assert not WORKER_LINE.search(text), text[-3000:]
    assert " | init " not in text   # the plain lines are for pipes only
    assert "best genotype" in text
