"""How long each dashboard page takes to render with many runs in the store.

    python benchmarks/app_render.py                    # 200 runs × 1,000 steps
    python benchmarks/app_render.py --runs 500         # issue 8's 500 runs × 1,000 steps
    python benchmarks/app_render.py --quick            # a smoke run in seconds

Each page is rendered by Streamlit's AppTest (the real script, in process: what the server does
per rerun, without the browser's drawing), once to warm caches and imports, then ``--repeat``
times; the table shows the median and the slowest. Results go to benchmarks/results/app_render.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PAGES = ["app_pages/runs.py", "app_pages/frontier.py", "app_pages/layer_patterns.py", "app_pages/task_packs.py",
         "app_pages/launch.py"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="20 runs × 50 steps, 2 repetitions")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.steps, args.repeat = 20, 50, 2

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TAPS_RUNS_DIR"] = tmp
        os.chdir(ROOT)
        from streamlit.testing.v1 import AppTest

        from benchmarks.synthetic_store import populate
        from workbench.store import RunStore

        t0 = time.perf_counter()
        populate(RunStore(tmp), args.runs, args.steps)
        fill_s = time.perf_counter() - t0
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
        at.run()
        rows = []
        for page in PAGES:
            at.switch_page(page).run()  # warm-up: imports, caches
            times = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                at.run()
                times.append(time.perf_counter() - t)
            if at.exception:
                raise SystemExit(f"{page} raised: {at.exception[0].value}")
            rows.append({"page": Path(page).stem, "median_ms": 1000 * statistics.median(times),
                         "max_ms": 1000 * max(times)})

    print(f"{args.runs} runs × {args.steps} steps ({fill_s:.1f} s to write), {args.repeat} renders per page, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(f"{'page':<16}{'median ms':>12}{'max ms':>10}")
    for r in rows:
        print(f"{r['page']:<16}{r['median_ms']:>12.0f}{r['max_ms']:>10.0f}")
    out = ROOT / "benchmarks" / "results" / "app_render.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"runs": args.runs, "steps": args.steps, "repeat": args.repeat, "pages": rows,
                               "machine": platform.platform(), "cpus": os.cpu_count(),
                               "when": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
