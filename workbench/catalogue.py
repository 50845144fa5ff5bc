"""What a user can choose before launching, for the Launch page and the notebooks (which read
through the workbench, never ``taps`` directly): the backbones and whether their weights are on
this machine, the datasets and whether they are here, the settings' defaults and choices, and
what is wrong with a choice. Settings are flat names here (``lam``, ``dataset``): a form's keys."""
from __future__ import annotations

from dataclasses import asdict

from taps.errors import ConfigError
from taps.training.train_config import SETTINGS, TrainConfig

__all__ = ["backbones", "datasets", "default_settings", "setting_choices", "settings_problem", "planned_epochs"]


def backbones() -> list[dict]:
    """Every known backbone: name, size, whether its weights are offline here and how to get them."""
    from taps.backbones import list_backbones  # reads the weight packages: only when asked

    return [asdict(b) for b in list_backbones()]


def datasets() -> list[dict]:
    """Every dataset with a manifest: name, title, classes, whether it is on this machine and how
    to get it."""
    from taps.data import list_datasets

    return [asdict(d) for d in list_datasets()]


def default_settings() -> dict:
    """Every setting's default, by flat name: the tested CPU defaults."""
    return TrainConfig().to_flat()


def setting_choices(name: str) -> tuple:
    """The values a setting allows (``norm_stats`` → auto, frozen, adapt); empty when any value of
    its type is allowed."""
    if name not in SETTINGS:
        raise KeyError(f"no setting named {name!r}")
    return tuple(SETTINGS[name][1].metadata.get("choices") or ())


def settings_problem(settings: dict) -> ConfigError | None:
    """What is wrong with flat ``settings`` (the error names its field in ``.field``), or None."""
    try:
        TrainConfig.from_flat(settings).validate()
    except ConfigError as exc:
        return exc
    return None


def planned_epochs(settings: dict) -> int:
    """Epochs the run trains in all (a λ path adds its later stages)."""
    return TrainConfig.from_flat(settings).planned_epochs
