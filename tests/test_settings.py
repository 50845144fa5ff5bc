"""TrainConfig: nested typed groups, one flat input language, one versioned JSON form that still
reads what older versions wrote (issue 22, item 2)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from taps.errors import ConfigError
from taps.method.config import TAPSConfig
from taps.training.checkpoint import resume_key
from taps.training.points import RunKind
from taps.training.train_config import (CONFIG_VERSION, GROUPS, SETTINGS, DataSettings, OptimSettings,
                                        SparsitySettings, TrainConfig)


def test_the_config_holds_a_taps_config_and_groups_data_optimisation_and_sparsity():
    config = TrainConfig.from_flat(lam=1.5, dataset="digits", lr=0.01, threshold=0.2, tasks=[])
    assert isinstance(config.taps, TAPSConfig) and config.taps.threshold == 0.2
    assert isinstance(config.data, DataSettings) and config.data.dataset == "digits"
    assert isinstance(config.optim, OptimSettings) and config.optim.lr == 0.01
    assert isinstance(config.sparsity, SparsitySettings) and config.sparsity.lam == 1.5
    assert not hasattr(config, "lam") and not hasattr(config, "taps_config")  # one place per setting


def test_every_flat_name_is_unique_and_names_its_field():
    grouped = [f.name for kind in GROUPS.values() for f in kind.__dataclass_fields__.values()]
    top = [n for n in TrainConfig.__dataclass_fields__ if n not in GROUPS]
    assert sorted(SETTINGS) == sorted(grouped + top) and len(set(grouped + top)) == len(grouped + top)
    config = TrainConfig()
    for name, (group, field) in SETTINGS.items():
        holder = config if group is None else getattr(config, group)
        assert field.name == name and field.metadata["help"], name
        assert config.to_flat()[name] == getattr(holder, name)


def test_flat_settings_change_only_what_they_name_and_leave_the_original_alone():
    base = TrainConfig.from_flat(include=["blocks.*"], lam_path=[0.1, 1.0])
    changed = base.updated(lam=2.0, epochs=7)
    changed.taps.include.append("head")  # a copy: the base's lists are its own
    assert base.taps.include == ["blocks.*"] and base.sparsity.lam == 0.3 and base.optim.epochs == 3
    assert (changed.sparsity.lam, changed.optim.epochs) == (2.0, 7)
    assert {k for k, v in changed.to_flat().items() if v != base.to_flat()[k]} == {"lam", "epochs", "include"}
    with pytest.raises(ConfigError, match="unknown training settings: lamda"):
        base.updated(lamda=1)


def test_the_json_form_is_nested_and_versioned_and_reads_back_equal():
    config = TrainConfig.from_flat(lam_path=[0.1, 1.0], dataset="digits", recompute_weights=True, seed=4)
    stored = json.loads(json.dumps(config.to_dict()))
    assert stored["version"] == CONFIG_VERSION == 2
    assert set(stored) == {"version", *GROUPS, *(n for n, (g, _) in SETTINGS.items() if g is None)}
    assert stored["sparsity"]["lam_path"] == [0.1, 1.0] and stored["taps"]["recompute_weights"] is True
    assert stored["data"]["dataset"] == "digits" and stored["seed"] == 4
    assert TrainConfig.from_dict(stored) == config


def test_version_1_flat_configs_of_old_stores_and_users_still_read():
    old = {"backbone": "tv_resnet18", "dataset": "digits", "lam": 0.5, "lr": 0.01, "threshold": 0.05,
           "budget_pct": None, "tasks": [], "recompute_weights": False}  # as stores held them before the groups
    config = TrainConfig.from_dict(old)
    assert (config.backbone, config.data.dataset, config.sparsity.lam, config.optim.lr, config.taps.threshold) == (
        "tv_resnet18", "digits", 0.5, 0.01, 0.05)
    assert config == TrainConfig.from_dict({"version": 1, **old}) == TrainConfig.from_flat(old)
    assert TrainConfig.from_dict({}) == TrainConfig()


@pytest.mark.parametrize("stored, message", [
    ({"version": 3}, "version 3"),
    ({"version": 2, "lam": 1.0}, "'lam' belongs in the 'sparsity' group"),
    ({"version": 2, "sparsity": {"lr": 1.0}}, "unknown sparsity settings: lr"),
    ({"version": 2, "optim": 0.1}, "group 'optim' must be a mapping"),
    ({"lam": 1.0, "colour": "red"}, "unknown training settings: colour"),
])
def test_settings_that_do_not_read_say_why(stored, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(stored)


def test_run_kinds_are_enums_known_before_training():
    assert TrainConfig().run_kind is RunKind.SINGLE
    assert TrainConfig.from_flat(tasks=["digits", "hanzi"]).run_kind is RunKind.JOINT
    assert TrainConfig.from_flat(lam_path=[0.1, 1.0]).run_kind is RunKind.PATH
    assert TrainConfig.from_flat(budget_pct=25.0).run_kind is RunKind.BUDGET
    assert TrainConfig.from_flat(budget_pct=25.0).planned_lam is None  # found during training
    assert TrainConfig.from_flat(lam_path=[0.1, 1.0], epochs=2, path_stage_epochs=3).planned_epochs == 5


def test_a_checkpoint_written_before_the_groups_still_resumes():
    """Checkpoints keep their settings as flat names; those written before the TAPS settings
    train_norms and head were settings lack them, and must still match at their defaults."""
    config = TrainConfig.from_flat(lam=0.7)
    old_key = {k: v for k, v in config.to_flat().items()
               if k not in ("out_dir", "device", "num_workers", "recompute_weights", "train_norms", "head")}
    assert resume_key(config) == json.dumps(old_key, sort_keys=True)
    assert resume_key(config.updated(train_norms=False)) != resume_key(config)


def test_the_settings_the_dashboard_reads_import_without_torch():
    code = ("import sys; import taps.training.train_config, workbench.catalogue, workbench.store, workbench.summaries; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
