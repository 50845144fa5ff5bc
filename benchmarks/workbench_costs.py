"""What the workbench itself costs: dashboard render times with a full store, and the store's
write cost per training step.

    python benchmarks/workbench_costs.py                 # 500 runs × 1,000 steps
    python benchmarks/workbench_costs.py --quick         # a smoke run in seconds

Render: each page is rendered by Streamlit's AppTest (the real script, in process: what the
server does per rerun, without the browser's drawing), once to warm caches and imports, then
``--repeat`` times; the table shows the median and the slowest. Target: < 1 s.

Write cost: a ``StoreRecorder`` (what every worker uses) records ``--steps`` step events of the
offline default (49 layer scores each), flushing on its real cadence — every second, i.e.
every ⌈1 s / step time⌉ steps — while the time spent inside it is summed. The step time it is
compared with is measured in the same process: a TAPS step of the offline default
(EfficientNet-Lite0, 64 px, batch 32). Target: < 2 % of the step. Writes
benchmarks/results/workbench_costs.json.
"""
from __future__ import annotations

import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import ROOT, interleaved, median_ms, parser, print_table, write_result

PAGES = ["app_pages/runs.py", "app_pages/frontier.py", "app_pages/layer_patterns.py", "app_pages/task_packs.py",
         "app_pages/launch.py"]


def render_times(store_dir: str, repeat: int) -> list[dict]:
    os.environ["TAPS_RUNS_DIR"] = store_dir
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.run()
    rows = []
    for page in PAGES:
        at.switch_page(page).run()  # warm-up: imports, caches
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            at.run()
            times.append(time.perf_counter() - t)
        if at.exception:
            raise SystemExit(f"{page} raised: {at.exception[0].value}")
        rows.append({"page": Path(page).stem, "median_ms": median_ms(times), "max_ms": 1000 * max(times)})
    return rows


def write_cost(store_dir: str, steps: int, step_s: float, layers: int = 49) -> dict:
    """Seconds spent in the recorder per step, flushing as a worker does at this step time."""
    from taps.training.trainer import StepEvent
    from workbench.store import RunStore, StoreRecorder

    store = RunStore(store_dir)
    run_id = store.create_run({"method": "taps", "lam": 0.3}, name="write-cost")
    flush_every = max(1, math.ceil(1.0 / step_s))
    recorder = StoreRecorder(store, run_id, flush_every_s=math.inf, flush_every_steps=flush_every)
    spent = 0.0
    for step in range(1, steps + 1):
        event = StepEvent(step=step, total_steps=steps, epoch=0, loss=1.0, task_loss=0.9, penalty=0.1, lam_now=0.3,
                          lr=0.003, scores=[0.15 + 0.001 * (step % 7)] * layers, active_layers=layers,
                          images_per_sec=100.0)
        t = time.perf_counter()
        recorder.on_step(event)
        spent += time.perf_counter() - t
    t = time.perf_counter()
    recorder.close()
    spent += time.perf_counter() - t
    if len(store.steps_since(run_id)) != steps:
        raise SystemExit("the store lost steps")
    return {"steps": steps, "flush_every_steps": flush_every, "flushes": recorder.flushes,
            "ms_per_step": 1000 * spent / steps}


def main(argv=None) -> int:
    p = parser(__doc__, "20 runs × 50 steps, 2 renders, a 32 px step")
    p.add_argument("--runs", type=int, default=500)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    if args.quick:
        args.runs, args.steps, args.repeat = 20, 50, 2

    from benchmarks.synthetic_store import populate
    from benchmarks.training_overhead import build_step
    from taps.backbones import resolve_device
    from workbench.store import RunStore

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        populate(RunStore(tmp), args.runs, args.steps)
        fill_s = time.perf_counter() - t0
        store_mb = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file()) / 1e6
        pages = render_times(tmp, args.repeat)
    step = build_step("taps", "efficientnet_lite0", 32 if args.quick else 64, 4 if args.quick else 32,
                      resolve_device("cpu"))
    step_s = statistics.median(interleaved({"step": step}, 3 if args.quick else 10)["step"])
    with tempfile.TemporaryDirectory() as tmp:
        cost = write_cost(tmp, args.steps, step_s)
    cost.update(step_ms=1000 * step_s, share_pct=100 * cost["ms_per_step"] / (1000 * step_s))

    print(f"{args.runs} runs × {args.steps} steps in the store ({store_mb:.0f} MB, {fill_s:.0f} s to write), "
          f"{args.repeat} renders per page")
    print_table([("page", "page", "<"), ("median_ms", "median ms", ">.0f"), ("max_ms", "max ms", ">.0f")], pages)
    print(f"\nstore write cost: {cost['ms_per_step']:.3f} ms per step (flushing every {cost['flush_every_steps']} "
          f"steps) = {cost['share_pct']:.2f} % of a {cost['step_ms']:.0f} ms TAPS step")
    write_result("workbench_costs", args, {"store_mb": store_mb, "pages": pages, "write_cost": cost})
    return 0


if __name__ == "__main__":
    sys.exit(main())
