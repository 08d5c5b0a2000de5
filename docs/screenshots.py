"""Screenshots of the dashboard's pages on the demo search, for docs/dashboard/.

    make demo                                   # the search, in demo-run/
    .venv/bin/pip install playwright            # the tests' browser driver
    .venv/bin/python docs/screenshots.py        # writes docs/dashboard/*.png

It starts `renas-db dashboard` on demo-run/renas.sqlite at a free port and drives Debian's
Chromium (chromium-headless-shell or chromium) by its path, waiting on each page's ready
marker; the individual page is the best alive child's (its lineage has edges to show),
or the best member's where no child is alive."""
from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))   # the tests' dashboard launcher


def main() -> None:
    from renas_db.testing import chromium_path
    from tests.dashboard_helpers import dashboard
    db = ROOT / "demo-run" / "renas.sqlite"
    if not db.exists():
        sys.exit(f"no {db}: run `make demo` first")
    browser = chromium_path()
    if browser is None:
        sys.exit("no Chromium: apt-get install chromium-headless-shell")
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        best = con.execute("SELECT id FROM individuals WHERE alive ORDER BY "
                           "origin = 'child' DESC, fitness DESC, id LIMIT 1").fetchone()[0]
    from playwright.sync_api import sync_playwright
    out = ROOT / "docs" / "dashboard"
    with dashboard(f"sqlite:///{db}") as d, sync_playwright() as p:
        b = p.chromium.launch(executable_path=browser)
        page = b.new_page(viewport={"width": 1280, "height": 900})
        for name, path in (("searches", "/"), ("search", "/search/demo"),
                           ("individual", f"/individual/{best}")):
            page.goto(d.base + path)
            page.wait_for_selector('body[data-ready="1"]', timeout=30_000)
            page.screenshot(path=str(out / f"{name}.png"), full_page=True)
            print(f"{out / name}.png")
        b.close()


if __name__ == "__main__":
    main()
