"""The app in a real browser: `streamlit run app.py` on a free localhost port, driven by headless
Debian Chromium through Playwright — Launch → Runs (the step count rises live) → Frontier →
click a point → its run. Any Streamlit exception box or page error fails the test; screenshots of
each page go to test-artifacts/screenshots/ (or $TAPS_TEST_ARTIFACTS)."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from speed import patience

from workbench.launcher import Launcher
from workbench.store import RunStore

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
IDLE = "[data-testid=stApp][data-test-script-state=notRunning]"
SHOTS = Path(os.environ.get("TAPS_TEST_ARTIFACTS") or ROOT / "test-artifacts") / "screenshots"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    """The app as users start it, on its own runs folder; workers slowed to watch them live."""
    port = _free_port()
    env = dict(os.environ, TAPS_RUNS_DIR=str(tmp_path / "runs"), TAPS_WORKER_STEP_DELAY="0.3")
    log = open(tmp_path / "streamlit.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                             "--server.port", str(port), "--server.address", "localhost"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://localhost:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"streamlit did not start: {(tmp_path / 'streamlit.log').read_text()[-2000:]}")
        time.sleep(0.3)
    yield url, tmp_path / "runs"
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)
    log.close()
    launcher = Launcher(RunStore(tmp_path / "runs"))
    for run in launcher.list_runs(status="running"):  # never leave a worker behind
        launcher.cancel(run["id"], grace_s=2)


def _settle(page: Page) -> None:
    page.wait_for_timeout(300)
    page.wait_for_selector(IDLE, timeout=120_000)


def _no_exceptions(page: Page, errors: list[str]) -> None:
    assert page.locator("[data-testid=stException]").count() == 0, page.locator(
        "[data-testid=stException]").first.inner_text()
    assert not errors, errors


def _shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_launch_watch_live_then_frontier_in_chromium(server):
    url, runs_dir = server
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 2400})  # tall: the whole page in each screenshot
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            page.goto(url)
            page.wait_for_selector(IDLE, timeout=120_000)
            page.get_by_role("heading", name="Launch a run").wait_for()
            _shot(page, "1-launch")

            lam = page.get_by_role("textbox", name="λ (sparsity)")
            lam.fill("-1")
            lam.press("Enter")
            _settle(page)
            assert page.locator("[data-testid=stAlert]", has_text="λ must be a finite number ≥ 0").count() == 1
            lam.fill("0.3")
            lam.press("Enter")
            _settle(page)
            for label, value in (("Epochs", "2"), ("Resolution (px)", "32"), ("Training images (0: all)", "300")):
                box = page.get_by_role("spinbutton", name=label, exact=True)
                box.fill(value)
                box.press("Enter")
                _settle(page)
            _no_exceptions(page, errors)
            page.get_by_role("button", name="Launch run").click()

            page.wait_for_url(re.compile(r".*/runs\?run=r-"), timeout=120_000)
            run_id = page.url.split("run=")[1]
            page.get_by_role("heading", name="Runs").wait_for()
            seen, deadline = [], time.monotonic() + patience(300)  # longer on a slower or busy machine
            done = page.locator("h3", has_text="done")
            while time.monotonic() < deadline and not done.count():
                progress = page.locator("[data-testid=stProgress]")
                match = re.search(r"step (\d+) /", progress.first.inner_text() if progress.count() else "")
                if match:
                    seen.append(int(match.group(1)))
                    if len(set(seen)) == 2:
                        _shot(page, "2-runs-live")
                page.wait_for_timeout(400)
            distinct = sorted(set(s for s in seen if s > 0))
            assert len(distinct) >= 2 and seen == sorted(seen), f"step counts seen live: {seen}"
            assert done.count(), "the run did not finish"
            page.wait_for_selector(".js-plotly-plot .heatmaplayer .hm", timeout=30_000)  # the heatmap drew
            _settle(page)
            _no_exceptions(page, errors)
            _shot(page, "3-runs-done")
            assert RunStore(runs_dir).get_run(run_id)["status"] == "done"

            page.locator("[data-testid=stSidebarNav] a", has_text="Frontier").click()
            page.get_by_role("heading", name="Frontier").wait_for()
            point = page.locator(".js-plotly-plot .scatterlayer .trace .points path")
            point.first.wait_for(timeout=30_000)
            _settle(page)
            _no_exceptions(page, errors)
            _shot(page, "4-frontier")
            point.first.click(force=True)
            page.wait_for_url(re.compile(rf".*/runs\?run={run_id}"), timeout=60_000)
            page.get_by_role("heading", name="Runs").wait_for()
            _settle(page)
            _no_exceptions(page, errors)
        finally:
            _shot(page, "last")
            browser.close()
