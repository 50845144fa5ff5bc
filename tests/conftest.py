import os
import time

import pytest
import torch

from speed import REFERENCE_MACHINE, REFERENCE_STEP_S, SLOWDOWN_ENV, patience, probe_step_seconds

# Deterministic, and fast on the 2-core CI machines.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ------------------------------------------------------------------ the suite's time budget

def pytest_addoption(parser):
    parser.addoption("--suite-budget-min", type=float, default=None, metavar="MINUTES",
                     help="fail when the suite's wall time, scaled to the reference machine by the "
                          "speed probe, exceeds MINUTES (make test sets the README's budget)")


def pytest_configure(config):
    if config.option.collectonly:
        return
    config._suite_clock = {"probe_start_s": probe_step_seconds(), "started": time.monotonic()}
    # Children (workers, notebook kernels, the app's server) wait as patiently as the tests.
    os.environ[SLOWDOWN_ENV] = f"{config._suite_clock['probe_start_s'] / REFERENCE_STEP_S:.3f}"


def pytest_collection_modifyitems(config, items):
    """Every per-test timeout (pytest-timeout's default or a test's own) scaled by the slowdown."""
    default = float(config.getini("timeout") or 0)
    for item in items:
        marker = item.get_closest_marker("timeout")
        seconds = float(marker.args[0]) if marker and marker.args else default
        if seconds:
            item.add_marker(pytest.mark.timeout(patience(seconds)), append=False)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    clock = getattr(session.config, "_suite_clock", None)
    if clock is None:
        return
    clock["wall_s"] = time.monotonic() - clock["started"]
    clock["probe_end_s"] = probe_step_seconds()
    # The slower probe: a machine that got busy during the run is judged by its busy speed.
    clock["slowdown"] = max(clock["probe_start_s"], clock["probe_end_s"]) / REFERENCE_STEP_S
    clock["reference_s"] = clock["wall_s"] / clock["slowdown"]
    budget_min = session.config.getoption("--suite-budget-min")
    clock["over_budget"] = budget_min is not None and clock["reference_s"] > 60 * budget_min
    if clock["over_budget"] and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    clock = getattr(config, "_suite_clock", None)
    if not clock or "wall_s" not in clock:
        return
    budget_min = config.getoption("--suite-budget-min")
    line = (f"suite time {clock['wall_s'] / 60:.1f} min here; speed probe {clock['probe_start_s']:.3f} s "
            f"then {clock['probe_end_s']:.3f} s a step (reference {REFERENCE_STEP_S:.3f} s on a "
            f"{REFERENCE_MACHINE}): slowdown {clock['slowdown']:.2f}×, "
            f"{clock['reference_s'] / 60:.1f} min on the reference machine")
    terminalreporter.section("time budget")
    if budget_min is None:
        terminalreporter.write_line(line)
    elif clock["over_budget"]:
        terminalreporter.write_line(f"{line}: OVER the budget of {budget_min:g} min", red=True, bold=True)
    else:
        terminalreporter.write_line(f"{line}, within the budget of {budget_min:g} min", green=True)
