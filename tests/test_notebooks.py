"""The companion notebooks run top to bottom in quick mode, and are committed clean.

Each notebook is executed with nbclient in a fresh kernel (the virtualenv's ``python3``) with
TAPS_NOTEBOOK_QUICK=1, its own temporary run store (TAPS_RUNS_DIR) and output folder
(TAPS_NOTEBOOK_OUT). The notebooks assert on their own results in their last cells; the tests
here add checks on what they leave on disk.
"""
from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from speed import patience

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = int(patience(600))  # nbclient takes whole seconds


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS] == ["01_walkthrough.ipynb", "02_analysis.ipynb",
                                           "03_lambda_explorer.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    nb = nbformat.read(str(path), as_version=nbformat.NO_CONVERT)
    assert nb.nbformat == 4
    nbformat.validate(nb)
    dirty = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, (f"{path.name}: cells {dirty} hold outputs or execution counts; clear them "
                       "(jupyter nbconvert --clear-output --inplace notebooks/*.ipynb)")
    first_code = next(cell for cell in nb.cells if cell.cell_type == "code")
    assert "TAPS_NOTEBOOK_QUICK" in first_code.source, "the first code cell is the parameters cell"


def _stop_leftover_runs(runs_dir: Path) -> None:
    """A notebook that failed mid-sweep leaves workers running: stop them."""
    if not (runs_dir / "runs.sqlite").exists():
        return
    from workbench.launcher import Launcher

    launcher = Launcher(runs_dir)
    for run in launcher.list_runs(status=("queued", "running")):
        launcher.cancel(run["id"], grace_s=2.0)


def execute(path: Path, tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    """Run a notebook top to bottom in quick mode; returns (runs folder, output folder)."""
    runs_dir, out_dir = tmp_path / "runs", tmp_path / "out"
    monkeypatch.setenv("TAPS_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("TAPS_RUNS_DIR", str(runs_dir))
    monkeypatch.setenv("TAPS_NOTEBOOK_OUT", str(out_dir))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(str(path), as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, startup_timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()  # raises CellExecutionError naming the cell and its traceback
    finally:
        _stop_leftover_runs(runs_dir)
    return runs_dir, out_dir


@pytest.mark.slow
def test_walkthrough(tmp_path, monkeypatch):
    _, out_dir = execute(ROOT / "notebooks" / "01_walkthrough.ipynb", tmp_path, monkeypatch)
    packs = sorted(out_dir.glob("*/task.safetensors"))
    assert len(packs) == 5, packs  # quick mode: 3 λ values and 2 baselines, one pack each
    full = (out_dir / "full_model.pt").stat().st_size
    smallest = min(p.stat().st_size for p in packs)
    assert smallest < full / 10  # a sparse task pack is a small fraction of a full model


@pytest.mark.slow
def test_analysis(tmp_path, monkeypatch):
    runs_dir, out_dir = execute(ROOT / "notebooks" / "02_analysis.ipynb", tmp_path, monkeypatch)
    from workbench.store import RunStore

    store = RunStore(runs_dir)
    runs = store.list_runs()
    assert runs and all(r["status"] == "done" for r in runs), [(r["name"], r["status"], r["error"]) for r in runs]
    assert {r["method"] for r in runs} == {"taps", "finetune", "feature_extractor"}
    assert {r["dataset"] for r in runs} == {"hanzi", "fashion-mnist"}
    for name in ("frontier-hanzi.html", "frontier-params-fashion-mnist.html", "layers-efficientnet_lite0-by-task.html",
                 "layers-efficientnet_lite0-by-lambda.html", "results.csv", "plotly.min.js"):
        assert (out_dir / name).is_file(), f"{name} not written; found {sorted(p.name for p in out_dir.iterdir())}"
    table = (out_dir / "results.csv").read_text(encoding="utf-8").splitlines()
    assert table[0].split(",")[:3] == ["method", "fashion-mnist", "hanzi"] and "total params (×)" in table[0]
    assert any(line.startswith("TAPS (λ=") for line in table[1:])


@pytest.mark.slow
def test_lambda_explorer(tmp_path, monkeypatch):
    runs_dir, _ = execute(ROOT / "notebooks" / "03_lambda_explorer.ipynb", tmp_path, monkeypatch)
    from workbench.store import RunStore

    runs = RunStore(runs_dir).list_runs()
    assert [(r["method"], r["status"]) for r in runs] == [("taps", "done")] * 2
    by_kind = {"budget" if r["config"]["sparsity"]["budget_pct"] else "lam": r for r in runs}
    assert by_kind["lam"]["lam"] == pytest.approx(0.3)  # the slider's run
    budget = by_kind["budget"]  # the budget button's run ended within its budget
    assert budget["metrics"]["task_specific_layers_pct"] <= budget["config"]["sparsity"]["budget_pct"] == 25.0
