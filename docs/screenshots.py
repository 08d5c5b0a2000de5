"""Screenshots of the dashboard's pages on the demo search, for docs/dashboard/.

    make demo                                   # the search, in demo-run/
    .venv/bin/pip install playwright            # the tests' browser driver
    .venv/bin/python docs/screenshots.py        # writes docs/dashboard/*.png

It starts `renas-db dashboard` on demo-run/renas.sqlite at a free port and drives Debian's
Chromium (chromium-headless-shell or chromium) by its path, waiting on each page's ready
marker; the individual page is the best alive child's (its lineage has edges to show),
or the best member's where no child is alive."""
from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BROWSERS = ("/usr/bin/chromium-headless-shell", "/usr/bin/chromium")


def main() -> None:
    db = ROOT / "demo-run" / "renas.sqlite"
    if not db.exists():
        sys.exit(f"no {db}: run `make demo` first")
    browser = next((b for b in BROWSERS if os.path.exists(b)), None)
    if browser is None:
        sys.exit("no Chromium: apt-get install chromium-headless-shell")
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        best = con.execute("SELECT id FROM individuals WHERE alive ORDER BY "
                           "origin = 'child' DESC, fitness DESC, id LIMIT 1").fetchone()[0]
    from playwright.sync_api import sync_playwright
    env = dict(os.environ, RENAS_DB_URL=f"sqlite:///{db}")
    proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "renas-db"), "dashboard", "--port",
                             "0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            m = re.search(r"dashboard on (http://\S+?)/? ", line)
            if m:
                base = m.group(1)
                break
        else:
            sys.exit("the dashboard did not start")
        out = ROOT / "docs" / "dashboard"
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=browser)
            page = b.new_page(viewport={"width": 1280, "height": 900})
            for name, path in (("searches", "/"), ("search", "/search/demo"),
                               ("individual", f"/individual/{best}")):
                page.goto(base + path)
                page.wait_for_selector('body[data-ready="1"]', timeout=30_000)
                page.screenshot(path=str(out / f"{name}.png"), full_page=True)
                print(f"{out / name}.png")
            b.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)


if __name__ == "__main__":
    main()
