"""The app in a real browser: `streamlit run app.py` on a free localhost port, driven by headless
Debian Chromium through Playwright — Launch a λ sweep with baselines → Runs (the step count of
its first run rises live) → Frontier (a point per run, the baselines as reference lines) → click
a point → its run. Any Streamlit exception box or page error fails the test; screenshots of each
page go to test-artifacts/screenshots/ (or $TAPS_TEST_ARTIFACTS)."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from speed import patience

from benchmarks.common import CHROMIUM, CHROMIUM_ARGS, streamlit_app
from workbench.launcher import Launcher
from workbench.store import RunStore

ROOT = Path(__file__).resolve().parent.parent
IDLE = "[data-testid=stApp][data-test-script-state=notRunning]"
SHOTS = Path(os.environ.get("TAPS_TEST_ARTIFACTS") or ROOT / "test-artifacts") / "screenshots"


@pytest.fixture
def server(tmp_path):
    """The app as users start it, on its own runs folder; workers slowed to watch them live."""
    env = {"TAPS_RUNS_DIR": str(tmp_path / "runs"), "TAPS_WORKER_STEP_DELAY": "0.3"}
    with streamlit_app(env, tmp_path / "streamlit.log", start_timeout_s=patience(90)) as (url, _):
        yield url, tmp_path / "runs"
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


def _runs_table_columns() -> dict:
    """The Runs page's TABLE_COLUMNS, read from its source (importing a page would run it)."""
    import ast

    tree = ast.parse((ROOT / "app_pages" / "runs.py").read_text(encoding="utf-8"))
    node = next(n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "TABLE_COLUMNS")
    return ast.literal_eval(node.value)


def _shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


# Each point of a Plotly scatter carries its trace's run id (customdata) and label (text): d3
# binds the trace's data to its <g class="trace"> and the point's index to each marker.
TAG_POINTS = """() => {
  for (const group of document.querySelectorAll('.js-plotly-plot .scatterlayer .trace')) {
    const trace = group.__data__ && group.__data__[0] && group.__data__[0].trace;
    if (!trace) continue;
    for (const point of group.querySelectorAll('.points path')) {
      const i = point.__data__ && point.__data__.i;
      if (i === undefined) continue;
      if (trace.customdata) point.setAttribute('data-run', trace.customdata[i]);
      if (Array.isArray(trace.text)) point.setAttribute('data-label', trace.text[i]);
    }
  }
}"""


def _middle_y(locator) -> float:
    box = locator.bounding_box()
    return box["y"] + box["height"] / 2


def test_launch_sweep_watch_live_then_frontier_in_chromium(server):
    """A λ sweep with its baselines, from the Launch page to the Frontier: its first TAPS run is
    followed live, every run of the sweep is a point, and each baseline a reference line."""
    url, runs_dir = server
    Launcher(RunStore(runs_dir), max_concurrent=2)  # the sweep's 4 runs in two waves: each worker 1 of 2 cores
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
            lam.fill("0.1, 1")
            lam.press("Enter")
            _settle(page)
            assert page.get_by_role("checkbox", name="Add baselines to the sweep").is_checked()  # on by default
            page.get_by_text("Advanced", exact=True).click()
            for label, value in (("Epochs", "2"), ("Resolution (px)", "32"), ("Training images (0: all)", "300"),
                                 ("Evaluation images (0: all)", "100")):
                box = page.get_by_role("spinbutton", name=label, exact=True)
                box.fill(value)
                box.press("Enter")
                _settle(page)
            _no_exceptions(page, errors)
            page.get_by_role("button", name="Launch sweep (4 runs)").click()

            page.wait_for_url(re.compile(r".*/runs\?run=r-"), timeout=120_000)
            run_id = page.url.split("run=")[1]
            store = RunStore(runs_dir)
            (sweep,) = store.sweeps()
            runs = {r["id"]: r for r in store.list_runs(sweep=sweep)}
            methods = sorted((r["method"], r["config"]["sparsity"]["lam"]) for r in runs.values() if r["method"] == "taps")
            assert methods == [("taps", 0.1), ("taps", 1.0)]
            assert sorted(r["method"] for r in runs.values()) == ["feature_extractor", "finetune", "taps", "taps"]
            assert (runs[run_id]["method"], runs[run_id]["config"]["sparsity"]["lam"]) == ("taps", 0.1)  # the first launched
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
            # Every column of the runs table fits a 1400 px window beside the sidebar ("% params" was cut off).
            table = page.locator("[data-testid=stDataFrame]").first.bounding_box()
            assert table["width"] >= sum(width for _, width, _, _ in _runs_table_columns().values()), table

            while time.monotonic() < deadline and any(store.get_run(i)["status"] != "done" for i in runs):
                page.wait_for_timeout(1000)
            runs = {i: store.get_run(i) for i in runs}
            assert {r["status"] for r in runs.values()} == {"done"}, {i: r["status"] for i, r in runs.items()}

            page.locator("[data-testid=stSidebarNav] a", has_text="Frontier").click()
            page.get_by_role("heading", name="Frontier").wait_for()
            page.locator(".js-plotly-plot .scatterlayer .trace .points path").first.wait_for(timeout=30_000)
            _settle(page)
            _no_exceptions(page, errors)
            _shot(page, "4-frontier")
            page.evaluate(TAG_POINTS)
            points = page.locator(".js-plotly-plot .scatterlayer .points path[data-run]")
            assert sorted(points.evaluate_all("ps => ps.map(p => p.dataset.run)")) == sorted(runs)  # one each
            labels = page.locator(".js-plotly-plot .scatterlayer .points path[data-label^='λ=']")
            assert sorted(labels.evaluate_all("ps => ps.map(p => p.dataset.label)")) == ["λ=0.1", "λ=1"]
            centres = {i: points.and_(page.locator(f"[data-run='{i}']")).bounding_box() for i in runs}
            centres = {i: (b["x"] + b["width"] / 2, b["y"] + b["height"] / 2) for i, b in centres.items()}
            # The baselines are horizontal lines across the plot, at their accuracy, named with it.
            lines = page.locator(".js-plotly-plot .shapelayer path")
            notes = page.locator(".js-plotly-plot .annotation-text")
            assert lines.count() == 2
            by_method = {r["method"]: r for r in runs.values()}
            expected = {f"{name} {by_method[m]['metrics']['test_acc']:.3f}"
                        for m, name in (("finetune", "full fine-tuning"), ("feature_extractor", "feature extractor"))}
            assert set(notes.all_text_contents()) == expected
            plot = page.locator(".js-plotly-plot .nsewdrag").first.bounding_box()
            line_ys = sorted(_middle_y(lines.nth(k)) for k in range(2))
            for k in range(2):
                box = lines.nth(k).bounding_box()
                assert box["height"] < 4 and box["width"] > 0.9 * plot["width"]
            baseline_ys = sorted(centres[i][1] for i, r in runs.items() if r["method"] != "taps")
            assert line_ys == pytest.approx(baseline_ys, abs=2)  # each line runs through its baseline's point

            # Click a point that no other covers (short runs put TAPS on fine-tuning's 100 %), TAPS first.
            alone = [i for i, (x, y) in centres.items()
                     if all(abs(x - u) + abs(y - v) > 12 for j, (u, v) in centres.items() if j != i)]
            assert alone, f"every point covers another: {centres}"
            target = sorted(alone, key=lambda i: runs[i]["method"] != "taps")[0]
            page.mouse.click(*centres[target])
            page.wait_for_url(re.compile(rf".*/runs\?run={target}"), timeout=60_000)
            page.get_by_role("heading", name="Runs").wait_for()
            _settle(page)
            _no_exceptions(page, errors)
        finally:
            _shot(page, "last")
            browser.close()
