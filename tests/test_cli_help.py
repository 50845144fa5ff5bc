"""Issue 24: the command line explains itself. `python -m taps train --help` describes every flag
from the TrainConfig field it sets, with its default and choices, and gives examples; training
shows a progress bar with rate and ETA on a terminal and none in a log."""
from __future__ import annotations

import dataclasses
import io
import re
import subprocess
import sys
import time

from taps.cli import ConsoleProgress
from taps.training.train_config import SETTINGS, TrainConfig
from taps.training.trainer import EpochEvent, StartEvent, StepEvent
from speed import patience


def _flat(text: str) -> str:
    return " ".join(text.split())  # argparse wraps help to the terminal width


def test_train_help_describes_every_flag_with_its_default_and_choices():
    proc = subprocess.run([sys.executable, "-m", "taps", "train", "--help"], capture_output=True, text=True,
                          timeout=patience(120), env={"COLUMNS": "100", "PATH": ""})
    assert proc.returncode == 0, proc.stderr
    shown = _flat(proc.stdout)
    for _, f in SETTINGS.values():
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        assert f"{_flat(f.metadata['help'])} (default: {default})" in shown, flag
        if f.metadata["choices"]:
            assert f"{flag} {{{','.join(f.metadata['choices'])}}}" in shown, flag
    assert "--method {taps,finetune,feature_extractor,bn_only,manual_freeze}" in shown
    assert "examples: python -m taps train # the defaults" in shown
    assert "python -m taps train --budget-pct 25 # at most 25 % task-specific layers" in shown


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _train_for_one_epoch(stream) -> None:
    progress = ConsoleProgress(stream)
    progress.on_start(StartEvent(config=TrainConfig().to_dict(), device="CPU (2 cores)", layer_names=["a", "b"],
                                 layer_kinds=["conv"] * 2, layer_params=[10, 10], classes=["x", "y"],
                                 train_size=80, val_size=8, test_size=8, total_steps=8, start_epoch=0,
                                 total_epochs=2, steps_per_epoch=4))
    for step in range(1, 5):
        time.sleep(0.15)  # tqdm redraws at most every 0.1 s
        progress.on_step(StepEvent(step=step, total_steps=8, epoch=0, loss=1.5, task_loss=1.4, penalty=0.1,
                                   lam_now=0.3, lr=0.003, scores=[0.2, 0.05], active_layers=1, images_per_sec=50.0))
    progress.on_epoch(EpochEvent(epoch=0, epochs=2, train_loss=1.5, train_acc=0.5, val_acc=0.5, test_acc=0.5,
                                 task_specific_layers_pct=50.0, additional_params_pct=20.0, active_layers=1,
                                 seconds=3.0))


def test_progress_bar_inside_each_epoch_on_a_terminal_only():
    terminal, log = _Terminal(), io.StringIO()
    _train_for_one_epoch(terminal)
    _train_for_one_epoch(log)
    bar = terminal.getvalue()
    # tqdm's frame: position in the epoch, elapsed<ETA, rate, then the run's loss and active layers
    frames = re.findall(r"epoch 1: +\d+%\|[# ]+\| (\d)/4 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+step/s, "
                        r"loss 1\.500 active 1/2\]", bar)
    assert frames and frames[-1] == "4"
    epoch_line = ("epoch 1/2 train_loss 1.500 train_acc 0.500 val_acc 0.500 test_acc 0.500 task-specific layers "
                  "50.0% additional params 20.0% (3s)\n")
    assert log.getvalue() == ("device CPU (2 cores) · 2 gated layers · 2 classes · train/val/test 80/8/8 · "
                              "8 steps\n" + epoch_line)
    assert bar.endswith(epoch_line)


def test_workbench_list_shows_no_lambda_for_a_baseline(tmp_path):
    from workbench.launcher import Launcher

    launcher = Launcher(tmp_path)
    launcher.schedule = lambda: []  # queued, as the launcher records them
    baseline = launcher.launch(TrainConfig.from_flat(method="finetune").to_dict(), name="finetune")  # its config keeps λ 0.3
    taps_run = launcher.launch(TrainConfig.from_flat(lam=0.1).to_dict(), name="taps")
    proc = subprocess.run([sys.executable, "-m", "workbench", "list", "--runs-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=patience(120))
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines()[1:]}
    header = proc.stdout.splitlines()[0].split()
    lam = header.index("lam")
    assert rows[baseline][lam] == "–" and rows[taps_run][lam] == "0.1"
