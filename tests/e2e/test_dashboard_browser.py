"""The dashboard in a real browser: Playwright driving Debian's Chromium (launched by its
path; `playwright install` is never run), against a real `renas-db dashboard` process.
Every wait is on an explicit marker (body[data-ready], data-ticks, data-conn), never a
sleep. Screenshots go to the test's tmp_path (and to $RENAS_TEST_ARTIFACTS if set)."""
from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from renas_db.db.session import Store
from renas_db.testing import chromium_path
from tests.dashboard_helpers import dashboard, known_search
from tests.e2e.common import create
from tests.helpers import spawn_worker

POLL = "?poll=200"


def _browser_path() -> str:
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium: apt-get install chromium-headless-shell (.ci/run does)")
    return path


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=_browser_path())
        yield b
        b.close()


class Page:
    """A page that records console errors and uncaught exceptions."""

    def __init__(self, browser, tmp_path: Path) -> None:
        self.page = browser.new_page(viewport={"width": 1300, "height": 900})
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text)
                     if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        self.tmp_path = tmp_path

    def open(self, url: str, ready: bool = True):  # type: ignore[no-untyped-def]
        response = self.page.goto(url)
        if ready:
            self.page.wait_for_selector('body[data-ready="1"]', timeout=20_000)
        return response

    def ticks(self) -> int:
        return int(self.page.get_attribute("body", "data-ticks") or 0)

    def wait_ticks_past(self, n: int) -> None:
        self.page.wait_for_function(f"() => Number(document.body.dataset.ticks || 0) > {n}",
                                    timeout=20_000)

    def shot(self, name: str) -> Path:
        path = self.tmp_path / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 10_000
        out = os.environ.get("RENAS_TEST_ARTIFACTS")
        if out:
            os.makedirs(out, exist_ok=True)
            shutil.copy(path, out)
        return path

    def text(self, selector: str) -> str:
        return self.page.inner_text(selector)

    def close(self) -> None:
        self.page.close()


@pytest.fixture
def sqlite_url(tmp_path):
    from renas_db.db.schema import upgrade
    url = f"sqlite:///{tmp_path / 'dash.sqlite'}"
    store = Store(url)
    upgrade(store)
    store.dispose()
    return url


def test_each_page_renders_its_data(browser, sqlite_url, tmp_path):
    store = Store(sqlite_url)
    known_search(store, tmp_path, "k", steps=37)
    known_search(store, tmp_path, "j", steps=5, population=3, seed=2)
    store.dispose()
    with dashboard(sqlite_url) as d:
        p = Page(browser, tmp_path)
        p.open(d.base + "/" + POLL)
        rows = p.page.locator("table.data tbody tr")
        assert rows.count() == 2
        assert "37 / 37" in p.text("table.data") and "finished" in p.text("table.data")
        p.shot("searches")

        p.open(d.base + "/search/k" + POLL)
        assert p.text("#steps") == "37 / 37"
        assert p.page.get_attribute("#progress-chart", "data-points") == "37"
        assert p.page.locator("#progress-chart canvas").count() == 1
        pop = d.json("/api/searches/k/population")["population"]
        table = p.page.locator("#sec-population tbody tr")
        assert table.count() == len(pop)
        assert table.first.locator("td").first.inner_text() == str(pop[0]["id"])
        # sortable: by age, ascending then descending
        header = p.page.locator("#sec-population th", has_text="age")
        header.click()
        first_age = table.first.locator("td").nth(4).inner_text()
        assert int(first_age) == max(r["age_steps"] for r in pop)
        header.click()
        assert int(table.first.locator("td").nth(4).inner_text()) == \
            min(r["age_steps"] for r in pop)
        events = d.json("/api/searches/k/workers")["events"]
        assert p.page.locator("#events li").count() == len(events)
        # another search overlaid on the progress chart
        p.page.select_option("#overlay", "j")
        p.page.wait_for_function("() => document.querySelector('.u-legend') && "
                                 "document.querySelector('.u-legend').textContent"
                                 ".includes('j best')", timeout=20_000)
        p.shot("search")

        best = pop[0]["id"]
        p.open(d.base + f"/individual/{best}" + POLL)
        assert p.page.locator("#cell svg").count() == 1
        lineage = d.json(f"/api/individuals/{best}")["lineage"]
        assert p.page.locator("#sec-lineage tbody tr").count() \
            == len(lineage)
        assert "b0.op1=1" in p.text("#sec-lineage")
        p.shot("individual")

        response = p.open(d.base + "/search/nope", ready=False)
        assert response.status == 404
        assert "no search named 'nope'" in p.text("#ready")
        assert p.errors == [] or all("404" in e for e in p.errors), p.errors
        errors = [e for e in p.errors if "404" not in e]
        p.close()
    assert errors == []


def test_live_page_follows_a_real_worker(browser, tmp_path):
    """A real worker process commits children while the page is open: the step count and
    the curve advance without a reload."""
    url = f"sqlite:///{tmp_path / 'live.sqlite'}"
    create(url, "live", tmp_path, "--population", "4", "--sample", "2", "--steps", "30",
           "--mutator", "single", "--blocks", "3")
    with dashboard(url) as d:
        p = Page(browser, tmp_path)
        p.open(d.base + "/search/live" + POLL)
        assert p.text("#steps") == "0 / 30"
        p.page.evaluate("() => { window.__notReloaded = true; }")
        worker = spawn_worker(url, "live", "--dry-run", "0.1", "--idle-exit", "3",
                              cwd=str(tmp_path), log_path=str(tmp_path / "worker.log"))
        try:
            seen = []
            for target in (3, 15, 30):
                p.page.wait_for_function(
                    f"() => parseInt(document.getElementById('steps').textContent) >= {target}",
                    timeout=60_000)
                seen.append(int(p.page.get_attribute("#progress-chart", "data-last-step")))
            assert seen == sorted(seen) and seen[-1] >= 15 and seen[0] < 30
            p.page.wait_for_function("() => document.getElementById('steps').textContent"
                                     " === '30 / 30'", timeout=60_000)
            p.page.wait_for_function("() => document.getElementById('progress-chart')"
                                     ".dataset.lastStep === '30'", timeout=20_000)
            assert p.page.evaluate("() => window.__notReloaded") is True
            assert worker.wait(timeout=60) == 0
        finally:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
        assert int(p.page.get_attribute("#progress-chart", "data-points")) == 30
        p.shot("live")
        assert p.errors == []
        p.close()


def test_page_says_when_the_database_is_gone_and_recovers(browser, sqlite_url, tmp_path):
    store = Store(sqlite_url)
    known_search(store, tmp_path, "k", steps=5)
    store.dispose()
    path = sqlite_url.removeprefix("sqlite:///")
    with dashboard(sqlite_url) as d:
        p = Page(browser, tmp_path)
        p.open(d.base + "/search/k" + POLL)
        assert p.page.get_attribute("body", "data-conn") == "ok"
        os.rename(path, path + ".away")
        try:
            p.page.wait_for_selector('body[data-conn="down"]', timeout=20_000)
            assert p.text("#conn") == "database unreachable \u2014 retrying"
            assert p.text("#steps") == "5 / 5"   # what it showed stays
            p.shot("unreachable")
        finally:
            os.rename(path + ".away", path)
        ticks = p.ticks()
        p.page.wait_for_selector('body[data-conn="ok"]', timeout=20_000)
        p.wait_ticks_past(ticks)
        assert p.text("#conn") == "live"
        # the only console errors: the browser's own line for each 503 answer
        assert p.errors and all("503" in e for e in p.errors), p.errors
        p.close()
