"""Every benchmark's smoke mode (--quick) runs end to end and its result file holds what the
full run would publish. No timing is asserted here: timings are the benchmarks' business."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from speed import patience

ROOT = Path(__file__).resolve().parent.parent


def run_quick(name: str, tmp_path: Path) -> dict:
    out = tmp_path / f"{name}.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=patience(600), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["benchmark"] == name and result["settings"]["quick"] is True
    assert result["machine"]["cpus"] >= 1 and result["machine"]["torch"]
    return result | {"stdout": proc.stdout}


def by(rows, key):
    return {r[key]: r for r in rows}


def test_training_overhead_measures_time_and_memory_of_each_step_kind(tmp_path):
    result = run_quick("training_overhead", tmp_path)
    rows = by(result["rows"], "kind")
    assert set(rows) == {"finetune", "taps", "taps_half_off", "taps_recompute", "taps_frozen_half_off"}
    assert rows["finetune"]["time_ratio"] == 1.0 and rows["finetune"]["memory_ratio"] == 1.0
    assert rows["finetune"]["resident_ratio"] == 1.0
    assert all(r["median_ms"] > 0 and r["resident_mb"] > 0 for r in rows.values())
    # Lite0's gated weights: every conv and the 10-class head, 3,328,992 floats.
    w = rows["taps"]["gated_weights_mb"]
    assert w == pytest.approx(3_328_992 * 4 / 2**20, rel=1e-6)
    peak = {kind: r["peak_mb"] for kind, r in rows.items()}
    # Fine-tuning holds weights, gradients and momentum (3 W) and activations on top.
    assert peak["finetune"] > 3 * w
    # All on, TAPS holds w̄, δ, its gradient and momentum, and keeps the composed w̄ + δ.
    assert peak["taps"] > peak["finetune"] + w
    assert rows["taps"]["weight_copies_over_finetune"] == pytest.approx((peak["taps"] - peak["finetune"]) / w)
    # Recompute keeps no composed weights, only one layer's scratch: it saves most of W, never more.
    assert 0.8 * w < peak["taps"] - peak["taps_recompute"] <= w
    assert peak["taps_half_off"] < peak["taps"]
    assert "× fine-tune" in result["stdout"] and "+ W over fine-tune" in result["stdout"]


def test_allocation_trace_counts_every_byte_held_at_once():
    import torch

    from benchmarks.allocated_memory import AllocationTrace

    with AllocationTrace() as trace:
        a = torch.empty(1_000_000)  # 4 MB
        b = torch.empty(2_000_000)  # 8 MB: 12 MB held
        del a
        with trace.window():
            c = torch.empty(1_500_000)  # 6 MB: 14 MB held, the peak in the window
            del b
            d = torch.ones(500_000) * 2  # 2 MB each, the product's input freed: 8 MB held after
            del c
        e = torch.empty(5_000_000)  # 20 MB outside the window: not its peak
    assert trace.peak_bytes() == 14_000_000
    assert trace.live_bytes() == 22_000_000
    del d, e


def test_allocation_trace_without_a_window_peaks_over_the_whole_trace():
    import torch

    from benchmarks.allocated_memory import AllocationTrace

    with AllocationTrace() as trace:
        big = torch.zeros(3_000_000)
        del big
        small = torch.zeros(1_000)
    assert trace.peak_bytes() == 12_000_000 and trace.live_bytes() == 4_000
    del small


def test_inference_compares_merged_gated_and_multitask_models(tmp_path):
    result = run_quick("inference", tmp_path)  # the script itself refuses models that disagree
    rows = by(result["rows"], "kind")
    assert set(rows) == {"plain", "merged", "gated", "multitask", "switch"}
    assert rows["plain"]["ratio"] == 1.0
    assert all(r["median_ms"] > 0 for r in rows.values())


@pytest.mark.parametrize("name", ["inference", "storage"])
def test_one_setting_per_backbone_scripts_default_to_every_benchmarked_backbone(name):
    """A full run (not --quick) takes its backbones from training_overhead's settings."""
    import importlib

    script = importlib.import_module(f"benchmarks.{name}")
    assert script.parse_args([]).backbones == ["efficientnet_lite0", "resnet50", "densenet121",
                                                "vit_small_patch16_224"]


def test_storage_pack_bytes_grow_with_the_task_specific_share(tmp_path):
    result = run_quick("storage", tmp_path)
    rows = sorted(result["by_share"], key=lambda r: r["share_pct"])
    sizes = [r["pack_mb"] for r in rows]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    assert rows[0]["ratio"] < 0.05  # head and norms only
    assert rows[-1]["ratio"] == pytest.approx(1.0, abs=0.05)  # every layer: about a full checkpoint


def test_accuracy_frontier_trains_every_method_and_draws_the_figure(tmp_path):
    result = run_quick("accuracy_frontier", tmp_path)
    rows = by(result["rows"], "method")
    assert set(rows) == {"feature_extractor", "finetune", "taps", "taps_budget", "manual_freeze", "lora"}
    assert all(0 <= r["test_acc"] <= 1 for r in rows.values())
    assert rows["feature_extractor"]["additional_params_pct"] < rows["finetune"]["additional_params_pct"]
    # the budget run ends within its budget; manual freeze trains as many layers as it kept
    budget, freeze = rows["taps_budget"], rows["manual_freeze"]
    assert budget["setting"] == "≤25%" and budget["task_specific_layers_pct"] <= 25
    assert freeze["task_specific_layers_pct"] == pytest.approx(budget["task_specific_layers_pct"])
    assert 0 < rows["lora"]["additional_params_pct"] < rows["finetune"]["additional_params_pct"]
    png = (tmp_path / "accuracy_frontier.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_workbench_costs_render_every_page_and_price_store_writes(tmp_path):
    result = run_quick("workbench_costs", tmp_path)
    assert {p["page"] for p in result["pages"]} == {"runs", "frontier", "layer_patterns", "task_packs", "launch"}
    cost = result["write_cost"]
    assert cost["steps"] == 50 and cost["flushes"] >= 1 and cost["ms_per_step"] > 0
    assert cost["share_pct"] == pytest.approx(100 * cost["ms_per_step"] / cost["step_ms"])


def test_joint_vs_incremental_reports_both_settings_for_both_tasks(tmp_path):
    result = run_quick("joint_vs_incremental", tmp_path)
    pairs = {(r["setting"], r["task"]) for r in result["rows"]}
    assert pairs == {(s, t) for s in ("incremental", "joint") for t in ("fashion-mnist", "digits")}


def test_budget_and_path_compares_with_an_independent_sweep(tmp_path):
    result = run_quick("budget_and_path", tmp_path)
    (budget,) = result["budget"]
    assert budget["within"] and budget["task_specific_layers_pct"] <= budget["budget_pct"]
    assert [p["lam"] for p in result["path"]] == [r["lam"] for r in result["sweep"]] == [0.3, 1.0]
    compute = result["compute"]  # stage 0 is one single run; the later stage adds one epoch
    assert compute["path_steps"] == 2 * compute["single_run_steps"] == compute["sweep_steps"]
    (seed,) = result["per_seed"]  # the tables are the per-seed rows averaged (one seed here)
    assert budget["test_acc"] == seed["budget"][0]["test_acc"] and budget["seeds"] == 1
    gap = seed["budget"][0]["gap_at_size"]
    assert gap is None or gap == pytest.approx(budget["test_acc"] - budget["sweep_acc_at_size"])
    assert (tmp_path / "budget_and_path.png").read_bytes()[:4] == b"\x89PNG"


def test_step_breakdown_adds_up_the_pieces_of_taps_extra_work(tmp_path):
    result = run_quick("step_breakdown", tmp_path)
    rows = by(result["rows"], "piece")
    assert set(rows) == {"fine-tune step", "compose", "score grads", "autograd", "penalty", "TAPS adds"}
    pieces = sum(rows[p]["ms"] for p in ("compose", "score grads", "autograd", "penalty"))
    assert all(rows[p]["ms"] > 0 for p in rows)
    assert rows["TAPS adds"]["ms"] == pytest.approx(pieces)
    assert rows["TAPS adds"]["expected_ratio"] == pytest.approx(1 + pieces / rows["fine-tune step"]["ms"])


def test_run_cost_times_both_phases_of_whole_runs_against_fine_tuning(tmp_path):
    result = run_quick("run_cost", tmp_path)
    rows = by(result["rows"], "method")
    assert set(rows) == {"fine-tune", "TAPS λ = 0.3", "TAPS λ = 1"}
    assert rows["fine-tune"]["run_ratio"] == 1.0 and rows["fine-tune"]["frozen_ms"] is None
    taps_rows = [rows["TAPS λ = 0.3"], rows["TAPS λ = 1"]]
    assert all(r["learning_ms"] > 0 and r["frozen_ms"] > 0 and r["seconds"] > 0 for r in taps_rows)
    assert all(r["per_run"][0]["active_layers"] == r["active_layers"] for r in taps_rows)
    # 2 epochs of 4 steps, the first of each epoch untimed (it follows an evaluation); the gates
    # freeze after ⌈0.7 · 8⌉ = 6 steps: steps 2-4 and 6 learn, 7-8 are frozen.
    assert [(r["per_run"][0]["learning_steps"], r["per_run"][0]["frozen_steps"]) for r in taps_rows] == [(4, 2)] * 2
    assert (rows["fine-tune"]["per_run"][0]["learning_steps"], rows["fine-tune"]["per_run"][0]["frozen_steps"]) == (6, 0)
    assert result["config"]["backbone"] == "test_resnet"  # the quick mode's tiny model


def test_live_view_cpu_measures_the_server_with_and_without_a_page_watching(tmp_path):
    result = run_quick("live_view_cpu", tmp_path)
    rows = by(result["rows"], "situation")
    assert set(rows) == {"no browser", "Runs page, run training", "Launch page"}
    assert all(0 <= r["server_cpu_pct"] < 100 and r["seconds"] >= 6 for r in rows.values())
    watched, idle = rows["Runs page, run training"], rows["Launch page"]
    assert watched["steps_per_s"] > 0  # the run trained while it was watched
    assert watched["reruns_per_s"] > 0.3 and idle["reruns_per_s"] == 0  # the live page polls; Launch does not
    assert watched["received_kb_per_s"] > 0 and rows["no browser"]["browser_cpu_pct"] is None
    # Generous: the benchmark states the target (5 %); here, only that watching is not a busy loop.
    assert watched["server_cpu_pct"] < 25
    assert result["target_met"] == (watched["server_cpu_pct"] < result["target_pct"])
    assert "watched:" in result["stdout"]
