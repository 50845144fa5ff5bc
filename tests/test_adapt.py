"""adapt() on every architecture the paper uses: exact at step 0, head never gated."""
import pytest
import timm
import torch
import torchvision
from torch import nn

import taps

ARCHITECTURES = {
    # name: (builder, input size)
    "resnet50": (lambda: timm.create_model("resnet50", num_classes=7), 64),
    "densenet121": (lambda: timm.create_model("densenet121", num_classes=7), 64),
    "efficientnet_lite0": (lambda: timm.create_model("efficientnet_lite0", num_classes=7), 64),
    "vit_small_patch16_224": (lambda: timm.create_model("vit_small_patch16_224", num_classes=7), 224),
    "convnext_tiny": (lambda: timm.create_model("convnext_tiny", num_classes=7), 64),
    "tv_resnet18": (lambda: torchvision.models.resnet18(num_classes=7), 64),
}


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_adapted_model_at_step_zero_equals_the_original(arch):
    build, size = ARCHITECTURES[arch]
    model = build().eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = model(x)
    plain_layers = [n for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    head = taps.find_head(model)
    taps.adapt(model)
    with torch.no_grad():
        got = model(x)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)
    gated = [n for n, _ in taps.gated_layers(model)]
    assert head not in gated and isinstance(model.get_submodule(head), nn.Linear)
    assert gated == [n for n in plain_layers if n != head]  # every other Conv2d/Linear is gated
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(f"{n}.delta" in trainable and f"{n}.score" in trainable for n in gated)
    assert not any(n.endswith(".weight") and n.rsplit(".", 1)[0] in gated for n in trainable)


def test_vit_attention_and_mlp_layers_are_gated_separately():
    model = taps.adapt(timm.create_model("vit_small_patch16_224", num_classes=3))
    kinds = {r.name: r.kind for r in taps.layer_report(model)}
    block = "blocks.0"
    assert kinds[f"{block}.attn.qkv"] == "attention-qkv"
    assert kinds[f"{block}.attn.proj"] == "attention-proj"
    assert kinds[f"{block}.mlp.fc1"] == kinds[f"{block}.mlp.fc2"] == "mlp"
    assert kinds["patch_embed.proj"] == "conv"
    assert len(kinds) == 1 + 12 * 4  # patch embedding + (qkv, proj, fc1, fc2) per block


def test_include_and_exclude_patterns_select_layers():
    model = torchvision.models.resnet18(num_classes=3)
    taps.adapt(model, taps.TAPSConfig(include=["layer4.*"], exclude=["*downsample*"]))
    names = [n for n, _ in taps.gated_layers(model)]
    assert names == ["layer4.0.conv1", "layer4.0.conv2", "layer4.1.conv1", "layer4.1.conv2"]


def test_norms_and_head_train_everything_else_is_frozen():
    model = taps.adapt(torchvision.models.resnet18(num_classes=3))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "fc.weight" in trainable and "fc.bias" in trainable
    assert "bn1.weight" in trainable and "layer1.0.bn2.bias" in trainable
    assert "conv1.weight" not in trainable and "conv1.delta" in trainable
    frozen_bn = taps.adapt(torchvision.models.resnet18(num_classes=3), taps.TAPSConfig(train_norms=False))
    assert not frozen_bn.bn1.weight.requires_grad


def test_adapting_twice_or_matching_nothing_is_refused():
    model = taps.adapt(torchvision.models.resnet18(num_classes=3))
    with pytest.raises(ValueError, match="already adapted"):
        taps.adapt(model)
    with pytest.raises(ValueError, match="no layer matched"):
        taps.adapt(torchvision.models.resnet18(), taps.TAPSConfig(include=["nothing.*"]))


def test_invalid_config_is_refused():
    with pytest.raises(ValueError, match="penalty_mode"):
        taps.TAPSConfig(penalty_mode="bytes")
