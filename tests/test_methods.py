"""The baselines expressed with gates behave as their names say."""
import copy

import pytest
import torch
import torch.nn.functional as F

import taps
from taps.errors import ConfigError
from taps.training.methods import layers_for_budget, prepare_model, set_train_mode
from tests.helpers import tiny_resnet


def _sgd_steps(model, params, steps=3):  # noqa: D103
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 5, (8,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def test_finetune_through_deltas_follows_plain_finetuning_exactly():
    # Two steps: the second uses momentum. From the third on, a tiny ResNet in train-mode BN on
    # batches of 8 is chaotic: 1-ulp differences (w̄ + δ rounds unlike w) grow to 1e-2 for some seeds.
    # Even in two they reach 2e-5 on some CPUs (AVX-512 kernels round unlike AVX2 ones), while
    # every weight moves by 2e-3 to 0.3: a wrong gradient or update would differ by that much.
    torch.manual_seed(0)
    plain = tiny_resnet()
    before = {k: v.detach().clone() for k, v in plain.named_parameters()}
    gated = prepare_model(copy.deepcopy(plain), "finetune", taps.TAPSConfig())
    _sgd_steps(plain.train(), plain.parameters(), steps=2)
    _sgd_steps(set_train_mode(gated), [p for p in gated.parameters() if p.requires_grad], steps=2)
    merged = taps.merge(gated).eval()
    ours, theirs = dict(merged.named_parameters()), dict(plain.named_parameters())
    assert ours.keys() == theirs.keys()
    assert min((theirs[k] - before[k]).abs().max().item() for k in ours) > 1e-3  # every weight moved
    assert max((ours[k] - theirs[k]).abs().max().item() for k in ours) < 1e-4  # float rounding only
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(merged(x), plain.eval()(x), rtol=1e-4, atol=1e-4)
    assert taps.summarize(gated).task_specific_layers_pct == 100.0


def test_feature_extractor_trains_only_the_head_and_keeps_bn_statistics():
    model = prepare_model(tiny_resnet(), "feature_extractor", taps.TAPSConfig())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    stats_before = model.bn1.running_mean.clone()
    _sgd_steps(set_train_mode(model), [p for p in model.parameters() if p.requires_grad], steps=1)
    assert torch.equal(model.bn1.running_mean, stats_before)
    assert taps.summarize(model).active_layers == 0


def test_bn_only_trains_norms_and_head():
    model = prepare_model(tiny_resnet(), "bn_only", taps.TAPSConfig())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "bn1.weight" in trainable and "fc.weight" in trainable
    assert not any(n.endswith((".delta", ".score")) for n in trainable)


def test_manual_freeze_opens_the_last_layers_within_the_budget():
    model = prepare_model(tiny_resnet(), "manual_freeze", taps.TAPSConfig(), freeze_layers=3)
    active = [r.name for r in taps.layer_report(model) if r.active]
    assert active == [n for n, _ in taps.gated_layers(model)][-3:]
    budgeted = taps.adapt(tiny_resnet())
    stats = taps.summarize(budgeted)
    fixed = stats.norm_params + stats.head_params
    last = [m.delta.numel() for _, m in taps.gated_layers(budgeted)][::-1]
    budget = 100 * (fixed + sum(last[:2]) + 1) / stats.base_params  # room for exactly two layers
    assert layers_for_budget(budgeted, budget) == 2
    with pytest.raises(ConfigError, match="unknown method"):
        prepare_model(tiny_resnet(), "lora", taps.TAPSConfig())


def test_frozen_norm_statistics_keep_pretrained_stats_but_train_affine():
    model = prepare_model(tiny_resnet(), "bn_only", taps.TAPSConfig())
    before = model.bn1.running_mean.clone(), model.bn1.weight.detach().clone()
    _sgd_steps(set_train_mode(model, freeze_norm_stats=True), [p for p in model.parameters() if p.requires_grad], 1)
    assert torch.equal(model.bn1.running_mean, before[0])
    assert not torch.equal(model.bn1.weight, before[1])
    _sgd_steps(set_train_mode(model, freeze_norm_stats=False), [p for p in model.parameters() if p.requires_grad], 1)
    assert not torch.equal(model.bn1.running_mean, before[0])
