"""Estimates from this machine: a short timed probe of the chosen setting, cached per machine and
setting, and the Launch page's time for a run and for a sweep built from it."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from app_testing import app, assert_clean
from workbench import calibration
from workbench.calibration import ProbeSetting, step_timing
from workbench.launcher import Launcher
from workbench.store import RunStore

TINY = ProbeSetting("test_resnet", 32, 8, "taps", "cpu")


def test_the_probe_times_real_training_steps_and_caches_them(tmp_path, monkeypatch):
    path = tmp_path / "step_times.json"
    timing = step_timing(TINY, path=path)
    assert timing.step_s > 0 and timing.eval_image_s > 0 and 1 <= timing.steps_timed <= calibration.PROBE_STEPS
    (key,) = json.loads(path.read_text())
    assert key == calibration.machine_key(TINY) and "|test_resnet|taps|32|8" in key
    monkeypatch.setattr(calibration, "measure_step", lambda s: pytest.fail("measured again instead of cached"))
    # (On a crowded machine the probe says so, and an idle machine would measure again.)
    assert step_timing(TINY, busy=timing.busy, path=path) == timing


def test_a_stale_busy_or_damaged_entry_is_measured_again(tmp_path, monkeypatch):
    path = tmp_path / "step_times.json"
    measured = []
    monkeypatch.setattr(calibration, "measure_step", lambda s: measured.append(s) or (0.25, 0.001, 3, False))
    first = step_timing(TINY, path=path, now=1000.0)
    assert (first.step_s, first.busy, measured) == (0.25, False, [TINY])
    step_timing(TINY, path=path, now=1000.0 + calibration.MAX_AGE_S - 1)
    assert len(measured) == 1  # fresh: from the cache
    step_timing(TINY, path=path, now=1000.0 + calibration.MAX_AGE_S + 1)
    assert len(measured) == 2  # a week old: measured again

    busy = step_timing(ProbeSetting("test_resnet", 64, 8), busy=True, path=path, now=2000.0)
    assert busy.busy and len(measured) == 3
    step_timing(ProbeSetting("test_resnet", 64, 8), busy=True, path=path, now=2001.0)
    assert len(measured) == 3  # still busy: the busy measurement is what the machine does now
    idle = step_timing(ProbeSetting("test_resnet", 64, 8), busy=False, path=path, now=2002.0)
    assert not idle.busy and len(measured) == 4  # idle again: measured again

    path.write_text("{not json")
    step_timing(TINY, path=path, now=3000.0)
    assert len(measured) == 5 and json.loads(path.read_text())  # rewritten whole


def test_a_probe_crowded_off_the_cores_counts_as_busy(tmp_path, monkeypatch):
    monkeypatch.setattr(calibration, "measure_step", lambda s: (0.25, 0.001, 3, True))
    assert step_timing(TINY, path=tmp_path / "t.json").busy


# ----------------------------------------------------------------------------- the Launch page

def _estimate(at) -> str:
    return next(i.value for i in at.info if i.value.startswith("Trains on"))


def _duration_s(text: str) -> int:
    minutes, seconds = re.fullmatch(r"(?:(\d+) min )?(\d+) s", text).groups()
    return int(minutes or 0) * 60 + int(seconds)


def _per_run_and_total(info: str) -> tuple[int, int | None]:
    per_run = _duration_s(re.search(r"About \*\*(.+?) per run\*\*", info).group(1))
    total = re.search(r"about \*\*(.+?)\*\* in all", info)
    return per_run, _duration_s(total.group(1)) if total else None


@pytest.mark.parametrize("step_s", [0.5, 1.0])
def test_launch_page_estimate_follows_the_step_timed_here(tmp_path, monkeypatch, step_s):
    monkeypatch.setenv("TAPS_CACHE_DIR", str(tmp_path / f"cache-{step_s}"))
    monkeypatch.setattr(calibration, "measure_step", lambda s: (step_s, 0.001, 3, False))
    at = app(tmp_path / "runs", monkeypatch)
    info = _estimate(at)
    # The default: 2,000 images in batches of 32 for 3 epochs, 1,000 validation and test images each epoch.
    per_run, total = _per_run_and_total(info)
    assert per_run == round(186 * step_s + 3 * 2000 * 0.001) and total is None
    assert "186 steps" in info and f"timed on this machine ({step_s:.2f} s)" in info


def test_launch_page_sweep_time_counts_every_run_and_the_slots(tmp_path, monkeypatch):
    monkeypatch.setenv("TAPS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(calibration, "measure_step", lambda s: (0.5, 0.001, 3, False))
    Launcher(RunStore(tmp_path / "runs"), max_concurrent=2)  # two runs at a time on this runs folder
    at = app(tmp_path / "runs", monkeypatch)
    next(t for t in at.text_input if t.label == "λ (sparsity)").set_value("0.1, 1").run()  # + 2 baselines
    assert_clean(at)
    per_run, total = _per_run_and_total(_estimate(at))
    assert "4 runs, 2 at a time" in _estimate(at)
    assert total == pytest.approx(4 * per_run / 2, abs=1)


def test_launch_page_estimate_uses_a_finished_run_like_it(tmp_path, monkeypatch):
    import socket

    from workbench.summaries import planned_steps

    monkeypatch.setenv("TAPS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(calibration, "measure_step", lambda s: (0.5, 0.001, 3, False))
    store = RunStore(tmp_path / "runs")
    at = app(tmp_path / "runs", monkeypatch)
    config = {k: v for k, v in Launcher.validate({}).to_dict().items()}
    run_id = store.create_run(config)
    store.mark_running(run_id, 1, None, host=socket.gethostname())
    store.record_steps(run_id, [{"step": s, "epoch": 0, "t": 100.0 + 2.0 * s} for s in range(1, 6)])  # 2 s a step
    store.finish(run_id, "done")
    at.run()
    assert_clean(at)
    info = _estimate(at)
    assert "this machine's last run like it" in info
    assert _per_run_and_total(info)[0] == pytest.approx(planned_steps(2000, 32, 3) * 2.0 + 6, abs=1)


def test_a_setting_that_cannot_be_timed_says_so(tmp_path, monkeypatch):
    def fail(setting):
        raise RuntimeError("no such model")

    monkeypatch.setenv("TAPS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(calibration, "measure_step", fail)
    at = app(tmp_path / "runs", monkeypatch)
    assert "How long a run takes is unknown: timing a training step failed (no such model)" in _estimate(at)



# A fixed duration per run ("about 35 s", "about a minute a run") is wrong on most machines:
# times come from the estimate measured here, or name the machine they were measured on.
FIXED_TIME = re.compile(r"\b(about|around|takes|in)\s+(a minute|\d+(\.\d+)?\s*(s|seconds|min|minutes))\b",
                        re.IGNORECASE)


def _user_facing_texts() -> dict[str, str]:
    root = Path(__file__).resolve().parent.parent
    texts = {str(p.relative_to(root)): p.read_text(encoding="utf-8")
             for p in [root / "app.py", root / "notebooks" / "README.md", *sorted((root / "app_pages").glob("*.py"))]}
    for nb in sorted((root / "notebooks").glob("*.ipynb")):
        texts[str(nb.relative_to(root))] = "\n".join("".join(c["source"]) for c in json.loads(
            nb.read_text(encoding="utf-8"))["cells"])
    return texts


def test_no_page_or_notebook_promises_a_fixed_time_per_run():
    texts = _user_facing_texts()
    assert len(texts) >= 9
    claims = {name: [m.group(0) for m in FIXED_TIME.finditer(text)] for name, text in texts.items()}
    assert not {name: found for name, found in claims.items() if found}
    # what the check catches: the captions this project used to show
    assert FIXED_TIME.search("Defaults train in about 35 s on a laptop CPU") and FIXED_TIME.search("about a minute a run")


def test_the_readme_says_what_reproduces_on_which_machine():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    table_end = readme.index("| full fine-tuning |")
    note = readme[table_end:table_end + 2500]
    assert "What reproduces where" in note and "AVX2" in note and "AVX-512" in note
    assert re.search(r"move by up to about a point", note)  # how far numbers move between machine types
