"""What every benchmark script shares: its command line, the machine description, timing by
interleaved repetitions, the printed table and the JSON result file."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CHROMIUM = "/usr/bin/chromium"  # Debian's, installed by scripts/install-system-deps.sh --browser
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from workbench.calibration import cpu_name  # noqa: E402  (ROOT on the path first)


def parser(doc: str, quick_help: str) -> argparse.ArgumentParser:
    """The arguments all benchmarks take: ``--quick`` (a smoke run in seconds, what CI runs) and
    ``--out`` (where the JSON goes; quick runs never overwrite the published results)."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--quick", action="store_true", help=f"smoke run in seconds: {quick_help}")
    p.add_argument("--out", type=Path, default=None,
                   help="result file (default: benchmarks/results/<name>.json, or results/quick/ with --quick)")
    return p


def result_path(name: str, args) -> Path:
    if args.out is not None:
        return args.out
    return RESULTS / "quick" / f"{name}.json" if args.quick else RESULTS / f"{name}.json"


def machine() -> dict:
    """Where the numbers come from, recorded beside them."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "processor": cpu_name(), **_cpu_generation()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def _cpu_generation() -> dict:
    """Family, model and widest vector unit: a VM's CPU may be named only "AMD EPYC", and the same
    name has covered machines 5–8× apart on a training step (one of them AVX2 only)."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().splitlines() if ":" in line)
    except OSError:
        return {}
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    vector = next((isa for isa in ("avx512f", "avx2", "avx") if isa in flags), "none")
    return {"cpu_family": fields.get("cpu family"), "cpu_model": fields.get("model"), "vector_isa": vector}


def interleaved(candidates: dict[str, Callable[[], object]], repeat: int, warmup: int = 2,
                sync: Callable[[], object] = lambda: None) -> dict[str, list[float]]:
    """Seconds per call of each candidate, measured in turn within each repetition so slow drifts
    of the machine (heat, other processes) hit all candidates alike."""
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    sync()
    times = {name: [] for name in candidates}
    for _ in range(repeat):
        for name, fn in candidates.items():
            t = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t)
    return times


def median_ms(seconds: list[float]) -> float:
    return 1000 * statistics.median(seconds)


def print_table(columns: list[tuple[str, str, str]], rows: list[dict]) -> None:
    """``columns``: (key, header, format spec such as '>10.2f'); a missing value prints as '–'."""
    def cell(row, key, spec):
        value = row.get(key)
        return "–" if value is None else format(value, spec.lstrip("<>"))

    widths = [max([len(header), 8] + [len(cell(r, key, spec)) for r in rows]) + 2 for key, header, spec in columns]
    print("".join(f"{header:>{w}}" if i else f"{header:<{w}}"
                  for i, ((_, header, _), w) in enumerate(zip(columns, widths))))
    for row in rows:
        cells = []
        for i, ((key, _, spec), w) in enumerate(zip(columns, widths)):
            text = cell(row, key, spec)
            cells.append(f"{text:<{w}}" if i == 0 else f"{text:>{w}}")
        print("".join(cells))


def write_result(name: str, args, payload: dict) -> Path:
    """``payload`` plus the settings, the machine and the time, as benchmarks/results/<name>.json."""
    path = result_path(name, args)
    path.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    path.write_text(json.dumps({"benchmark": name, "settings": settings, "machine": machine(),
                                "when": time.strftime("%Y-%m-%d %H:%M:%S"), **payload}, indent=2) + "\n")
    print(f"\nwrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return path


def save_figure(fig, name: str, args, width: int = 900, height: int = 520) -> Path:
    """The figure as a PNG beside the JSON, drawn by headless Chromium from a self-contained page
    (plotly.js from the installed package: no network), for BENCHMARKS.md to show."""
    path = result_path(name, args).with_suffix(".png")
    html = fig.to_html(include_plotlyjs=True, full_html=True, default_width=width, default_height=height)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": width + 40, "height": height + 40})
        page.set_content(html)
        page.wait_for_selector(".main-svg")
        page.locator(".plotly-graph-div").screenshot(path=str(path))
        browser.close()
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def streamlit_app(env: dict, log_path: Path, start_timeout_s: float = 90) -> Iterator[tuple[str, subprocess.Popen]]:
    """The app as users start it (``streamlit run app.py``) on a free localhost port, with ``env``
    added to this process's environment; yields (url, server process) once it answers, and stops
    the server's process group afterwards. Its output goes to ``log_path``."""
    port = free_port()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                                 "--server.port", str(port), "--server.address", "localhost"],
                                cwd=ROOT, env=dict(os.environ, **env), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            url = f"http://localhost:{port}"
            deadline = time.monotonic() + start_timeout_s
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                        if r.read().strip() == b"ok":
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"streamlit did not start: {log_path.read_text(errors='replace')[-2000:]}")
                time.sleep(0.3)
            yield url, proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
