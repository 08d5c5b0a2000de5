"""The committed uPlot files are the ones their README names (version and sha256)."""
from __future__ import annotations

import hashlib
import re
from importlib.resources import files


def test_vendored_files_match_their_readme():
    static = files("renas_db.dashboard") / "static"
    readme = (static / "README.md").read_text()
    rows = re.findall(r"^\| (\S+) \| uplot (\S+), .*\| ([0-9a-f]{64}) \|$", readme, re.M)
    assert {r[0] for r in rows} == {"uPlot.iife.min.js", "uPlot.min.css", "uPlot.LICENSE"}
    assert len({r[1] for r in rows}) == 1
    for name, _version, digest in rows:
        data = (static / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, name
    js = (static / "uPlot.iife.min.js").read_text()
    assert f"(v{rows[0][1]})" in js.splitlines()[0]
    assert "MIT License" in (static / "uPlot.LICENSE").read_text()
