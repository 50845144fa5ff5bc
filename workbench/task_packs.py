"""Task packs on disk, read for the app's pages and the notebooks: what a pack holds and costs,
the model it makes with its base, what that model predicts for an uploaded image, and what a
method's packs cost together. Pages and notebooks call these rather than the ``taps`` library, so
the workbench is the one place that knows which library function answers each question.

torch (through ``taps``) is imported inside the functions: every page load imports this module,
and a page that only lists packs should not pay for torch. Caching is the caller's business (the
Task packs page wraps these in ``st.cache_data`` / ``st.cache_resource``)."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from PIL import Image
    from torch import nn

    from taps.method.packs import TaskPack

__all__ = ["pack_summary", "load_pack_model", "decode_upload", "top_classes", "parameter_multiplier_of_runs"]


def pack_summary(path: str | os.PathLike, base_params: int) -> tuple[dict, dict]:
    """(the pack's metadata, what it costs as ``TaskStats.to_dict()``). The cost comes from
    ``taps.method.stats.pack_stats`` on the pack itself, the function the library and
    ``MultiTaskModel.report`` use, so the page shows the library's numbers; ``base_params`` is
    the base's size, which the pack does not record (the run's metrics do)."""
    from taps.method.packs import read_pack
    from taps.method.stats import pack_stats

    pack = read_pack(path)
    return pack.metadata, pack_stats(pack, base_params).to_dict()


def load_pack_model(path: str | os.PathLike) -> tuple[nn.Module, TaskPack]:
    """(the task's model, its pack): the base the pack names with the pack applied and merged,
    in eval mode — what :func:`top_classes` needs. Slow (builds a backbone): cache it."""
    from taps.inference import load_task_model

    return load_task_model(path)


def decode_upload(data: bytes) -> Image.Image:
    """An uploaded file's bytes as an RGB image; raises ``taps.errors.ConfigError`` saying why
    when they are not an image, or too large a one (checked before decoding), for the page to show."""
    from taps.data import decode_image

    return decode_image(data)


def top_classes(model: nn.Module, pack: TaskPack, image: Image.Image, top_k: int = 5) -> list[tuple[str, float]]:
    """The ``top_k`` (class name, probability) pairs for one image, best first, preprocessed as
    the pack's test split was (``taps.inference.classify``)."""
    from taps.inference import classify

    return classify(model, pack, [image], top_k=top_k)[0]


def parameter_multiplier_of_runs(runs: Iterable[dict]) -> float:
    """Total parameters of one base plus every task the runs add, over the base (the paper's
    "total params ×", e.g. full fine-tuning of K tasks ≈ K×): ``taps.method.stats.parameter_multiplier``
    on the ``TaskStats`` each finished run stored in its metrics. ValueError without runs."""
    from dataclasses import fields

    from taps.method.stats import TaskStats, parameter_multiplier

    names = [f.name for f in fields(TaskStats)]
    return parameter_multiplier([TaskStats(**{k: run["metrics"][k] for k in names}) for run in runs])
