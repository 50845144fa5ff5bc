"""Task packs hold only what a task adds and reload to the same predictions; merge is free."""
import json
import os

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

import taps
from tests.helpers import scramble, tiny_resnet


def _trained_lite0(num_classes=4):
    torch.manual_seed(0)
    model = timm.create_model("efficientnet_lite0", num_classes=num_classes)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    taps.adapt(model)
    scramble(model, off_every=2)
    return model.eval(), base_state


def _fresh_base(base_state, num_classes=4):
    model = timm.create_model("efficientnet_lite0", num_classes=num_classes)
    body = {k: v for k, v in base_state.items() if not k.startswith("classifier.")}
    missing, unexpected = model.load_state_dict(body, strict=False)
    assert missing == ["classifier.weight", "classifier.bias"] and not unexpected
    return model.eval()


def test_pack_round_trip_gives_identical_predictions(tmp_path):
    model, base_state = _trained_lite0()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    path = taps.save_pack(model, tmp_path / "task.safetensors", class_names=list("abcd"), lam=0.5,
                          metrics={"test_acc": 0.9})
    fresh = taps.load_pack(_fresh_base(base_state, num_classes=1000), path).eval()  # head is replaced
    with torch.no_grad():
        assert torch.equal(fresh(x), expected)
    pack = taps.read_pack(path)
    assert pack.metadata["class_names"] == list("abcd") and pack.metadata["metrics"]["test_acc"] == 0.9
    assert [r.active for r in taps.layer_report(fresh)] == [r.active for r in taps.layer_report(model)]


def test_pack_holds_no_delta_for_inactive_layers_and_little_else(tmp_path):
    model, _ = _trained_lite0()
    path = taps.save_pack(model, tmp_path / "task.safetensors")
    pack = taps.read_pack(path)
    active = [n for n, m in taps.gated_layers(model) if m.active]
    assert sorted(pack.active_layers) == sorted(active) and len(active) < len(taps.gated_layers(model))
    stats = taps.summarize(model)
    must_hold = 4 * (stats.delta_params + stats.norm_params + stats.head_params + stats.gated_layers)
    must_hold += 8 * len(taps.norm_layers(model))  # BatchNorm's int64 num_batches_tracked
    assert pack.payload_bytes() == must_hold
    assert os.path.getsize(path) <= 1.01 * must_hold


def test_loading_onto_the_wrong_backbone_fails_clearly_and_changes_nothing(tmp_path):
    model, _ = _trained_lite0()
    path = taps.save_pack(model, tmp_path / "lite0.safetensors")
    other = tiny_resnet()
    other.taps_backbone = None  # no name to compare: the layer check must catch it
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(taps.PackError, match="does not fit this model.*no Linear head named 'classifier'"):
        taps.load_pack(other, path)
    assert not taps.gated_layers(other)
    after = other.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    other.taps_backbone = "tv_resnet18"
    with pytest.raises(taps.PackError, match="trained on backbone 'efficientnet_lite0'.*'tv_resnet18'"):
        taps.load_pack(other, path)
    adapted = taps.adapt(tiny_resnet())
    adapted.taps_backbone = None
    scores = [m.score.item() for _, m in taps.gated_layers(adapted)]
    with pytest.raises(taps.PackError, match="49 gated layers in the pack, 20 in the model"):
        taps.load_pack(adapted, path)
    assert [m.score.item() for _, m in taps.gated_layers(adapted)] == scores


def test_pack_shape_mismatch_names_the_layer(tmp_path):
    model = taps.adapt(tiny_resnet())
    scramble(model)
    path = taps.save_pack(model, tmp_path / "r18.safetensors")
    wider = tiny_resnet()
    wider.layer1[0].conv2 = nn.Conv2d(64, 64, 5, padding=2, bias=False)
    with pytest.raises(taps.PackError, match="layer1.0.conv2"):
        taps.load_pack(wider, path, check_base=False)


def test_pack_for_other_base_weights_is_refused_unless_asked(tmp_path):
    model = taps.adapt(tiny_resnet())
    scramble(model)
    path = taps.save_pack(model, tmp_path / "r18.safetensors")
    other_weights = tiny_resnet()  # same architecture, different random base
    with pytest.raises(taps.PackError, match="base weights differ"):
        taps.load_pack(other_weights, path)
    assert taps.gated_layers(taps.load_pack(other_weights, path, check_base=False))


def test_files_that_are_not_packs_are_refused(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x80\x04not a safetensors file at all")
    with pytest.raises(taps.PackError, match="not a readable safetensors"):
        taps.read_pack(junk)
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(plain))
    with pytest.raises(taps.PackError, match="not a TAPS task pack"):
        taps.read_pack(plain)
    with pytest.raises(taps.PackError, match="not found"):
        taps.read_pack(tmp_path / "missing.safetensors")


def test_pack_metadata_is_plain_json(tmp_path):
    model = taps.adapt(tiny_resnet())
    path = taps.save_pack(model, tmp_path / "p.safetensors", lam=1.0)
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8:8 + header_len])
    meta = json.loads(header["__metadata__"]["taps"])
    assert meta["backbone"] == "tv_resnet18" and meta["lam"] == 1.0
    assert meta["config"]["threshold"] == 0.1 and len(meta["layers"]) == 20


@pytest.mark.parametrize("arch", ["efficientnet_lite0", "vit_small_patch16_224"])
def test_merged_model_equals_gated_model_and_has_no_gated_modules(arch):
    model = taps.adapt(timm.create_model(arch, num_classes=3)).eval()
    scramble(model, off_every=3)
    size = 224 if arch.startswith("vit") else 64
    x = torch.randn(2, 3, size, size)
    merged = taps.merge(model).eval()
    with torch.no_grad():
        assert torch.allclose(merged(x), model(x), atol=1e-5)
    assert not any(isinstance(m, taps.GatedLayer) for m in merged.modules())
    plain = timm.create_model(arch, num_classes=3)
    assert [type(m) for m in merged.modules()] == [type(m) for m in plain.modules()]
    assert sum(p.numel() for p in merged.parameters()) == sum(p.numel() for p in plain.parameters())
    assert taps.gated_layers(model)  # merge copied by default: the TAPS model is untouched
