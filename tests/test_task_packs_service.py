"""workbench.task_packs, the read service the Task packs page and the analysis notebook use
instead of the taps library: each answer is the library's own, on the same pack or runs."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import taps
from helpers import scramble
from taps.backbones import create_backbone
from taps.backbones.checkpoints import save_backbone_checkpoint
from taps.data import decode_image
from taps.errors import ConfigError
from taps.inference import classify, load_task_model
from taps.method.stats import TaskStats, pack_stats, parameter_multiplier, summarize
from workbench import task_packs

ROOT = Path(__file__).resolve().parent.parent
CLASSES = [str(d) for d in range(10)]


@pytest.fixture(scope="module")
def pack_path(tmp_path_factory) -> Path:
    """A digits pack on a small random base (no download): the base saved beside it as a joint
    run saves its trained base, so ``load_task_model`` finds it; random deltas, norms and head,
    every other layer switched off."""
    folder = tmp_path_factory.mktemp("pack")
    torch.manual_seed(0)
    model = create_backbone("test_resnet", len(CLASSES), "none")
    head = taps.find_head(model)
    base = {k: v for k, v in model.state_dict().items() if not k.startswith(head + ".")}
    save_backbone_checkpoint(base, folder / "base.safetensors", like=model)
    model = taps.adapt(model)
    scramble(model, off_every=2, seed=3)
    return taps.save_pack(model.eval(), folder / "task.safetensors", class_names=CLASSES,
                          extra={"dataset": "digits", "resolution": 32, "base": "base.safetensors"})


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_pack_summary_is_the_librarys_pack_stats(pack_path):
    pack = taps.read_pack(pack_path)
    meta, stats = task_packs.pack_summary(pack_path, 123_456)
    assert meta == pack.metadata
    assert stats == pack_stats(pack, 123_456).to_dict()
    assert 0 < stats["active_layers"] < stats["gated_layers"]  # a pack that kept some layers, not all
    assert stats["base_params"] == 123_456


def test_classification_is_the_librarys_on_the_same_image(pack_path):
    model, pack = task_packs.load_pack_model(pack_path)
    assert not model.training and pack.metadata == taps.read_pack(pack_path).metadata
    expected_model, expected_pack = load_task_model(pack_path)
    for seed in (0, 1):
        png = _png(seed)
        image = task_packs.decode_upload(png)
        assert image.mode == "RGB" and np.array_equal(np.asarray(image), np.asarray(decode_image(png)))
        top = task_packs.top_classes(model, pack, image, top_k=5)
        expected = classify(expected_model, expected_pack, [decode_image(png)], top_k=5)[0]
        assert [c for c, _ in top] == [c for c, _ in expected]
        np.testing.assert_allclose([p for _, p in top], [p for _, p in expected], rtol=1e-6)
        assert len(top) == 5 and set(c for c, _ in top) <= set(CLASSES)
        assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)
    assert len(task_packs.top_classes(model, pack, image, top_k=3)) == 3


def test_what_is_not_an_image_is_refused_saying_so():
    with pytest.raises(ConfigError, match="not an image"):
        task_packs.decode_upload(b"these are not pixels")


def _run(stats: TaskStats) -> dict:
    return {"metrics": {**stats.to_dict(), "test_acc": 0.5, "val_acc": 0.5}}


def test_parameter_multiplier_of_runs_is_the_librarys_on_their_stored_stats():
    models = []
    for off_every in (2, 3):
        model = taps.adapt(create_backbone("test_resnet", 4, "none"))
        scramble(model, off_every=off_every)
        models.append(model)
    stats = [summarize(m) for m in models]
    assert stats[0].additional_params != stats[1].additional_params
    runs = [_run(s) for s in stats]
    assert task_packs.parameter_multiplier_of_runs(runs) == parameter_multiplier(stats)
    assert task_packs.parameter_multiplier_of_runs(iter(runs)) == parameter_multiplier(stats)
    base = stats[0].base_params
    assert parameter_multiplier(stats) == pytest.approx((base + sum(s.additional_params for s in stats)) / base)
    assert task_packs.parameter_multiplier_of_runs(runs[:1]) == pytest.approx(1 + stats[0].additional_params_pct / 100)
    with pytest.raises(ValueError):
        task_packs.parameter_multiplier_of_runs([])


def test_importing_the_service_does_not_import_torch():
    code = "import sys, workbench.task_packs; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.stdout.strip() == "False"
