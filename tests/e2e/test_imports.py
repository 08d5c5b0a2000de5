"""Commands that train nothing never import torch: `renas-db --help` and `search list`
answer in a fraction of a second instead of after torch's seconds-long import."""
from __future__ import annotations

import subprocess

import pytest

from tests.helpers import NEUTRAL_CWD, cli_command, cli_env, run_cli

HEAVY = ("torch", "torchvision")


def _imported(importtime_log: str) -> set[str]:
    """The top-level packages named in `python -X importtime`'s report."""
    names = set()
    for line in importtime_log.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


@pytest.mark.parametrize("args", [["--help"], ["search", "list"]], ids=" ".join)
def test_commands_that_train_nothing_never_import_torch(args, tmp_path):
    db = f"sqlite:///{tmp_path / 'renas.sqlite'}"
    r = run_cli("search", "create", "listed", "--population", "4", "--sample", "2",
                "--mutator", "random", db_url=db)
    assert r.code == 0, r.err
    command = cli_command("--db", db, *args)
    p = subprocess.run([command[0], "-X", "importtime", *command[1:]], env=cli_env(None),
                       cwd=NEUTRAL_CWD, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    assert ("Usage: renas-db" if args == ["--help"] else "listed") in p.stdout, p.stdout
    imported = _imported(p.stderr)
    assert "renas_db" in imported                   # the report is read right
    assert imported.isdisjoint(HEAVY), sorted(imported & set(HEAVY))
