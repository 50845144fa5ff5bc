"""Eq. 3's penalty, and the paper's cost numbers."""
import pytest
import torch

import taps
from tests.helpers import scramble, tiny_resnet


def test_layers_penalty_is_lambda_over_real_layer_count_times_abs_score_sum():
    model = taps.adapt(tiny_resnet())
    scramble(model)
    with torch.no_grad():
        for i, (_, layer) in enumerate(taps.gated_layers(model)):
            layer.score.fill_((-1) ** i * 0.01 * (i + 1))  # negative scores count by |s|
    scores = torch.tensor([m.score.item() for _, m in taps.gated_layers(model)])
    assert len(scores) == 20  # resnet18: 17 convs on the main path + 3 downsample; fc not gated
    value = taps.sparsity_penalty(model, lam=0.7)
    assert torch.allclose(value, 0.7 / 20 * scores.abs().sum())
    value.backward()
    grads = torch.stack([m.score.grad for _, m in taps.gated_layers(model)])
    assert torch.allclose(grads, 0.7 / 20 * torch.sign(scores))


def test_params_penalty_weights_each_score_by_its_parameter_share():
    model = taps.adapt(tiny_resnet(), taps.TAPSConfig(penalty_mode="params"))
    sizes = torch.tensor([m.weight.numel() for _, m in taps.gated_layers(model)], dtype=torch.float64)
    scores = torch.tensor([m.score.item() for _, m in taps.gated_layers(model)], dtype=torch.float64)
    expected = 2.0 * (sizes / sizes.sum() * scores.abs()).sum()
    assert torch.allclose(taps.sparsity_penalty(model, lam=2.0).double(), expected, atol=1e-6)
    weights = taps.penalty_weights(model)
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-6)
    big = max(range(len(sizes)), key=lambda i: sizes[i])
    assert weights[big] == weights.max() and weights.max() > 1.0 / len(sizes)


def test_penalty_built_once_follows_the_scores_as_they_train():
    model = taps.adapt(tiny_resnet())
    penalty = taps.SparsityPenalty(model)  # what the trainer builds once per run
    with torch.no_grad():
        for i, (_, layer) in enumerate(taps.gated_layers(model)):
            layer.score.fill_(0.01 * i - 0.05)
    assert torch.equal(penalty(0.4), taps.sparsity_penalty(model, lam=0.4))
    penalty(0.4).backward()
    assert torch.allclose(torch.stack([m.score.grad for _, m in taps.gated_layers(model)]),
                          0.4 / 20 * torch.sign(torch.tensor([0.01 * i - 0.05 for i in range(20)])))


def test_summary_counts_active_deltas_norms_and_head():
    model = taps.adapt(tiny_resnet(num_classes=5))
    scramble(model, off_every=2)
    layers = taps.gated_layers(model)
    stats = taps.summarize(model)
    active = [m for _, m in layers if m.active]
    assert stats.gated_layers == 20 and stats.active_layers == len(active) == 10
    assert stats.task_specific_layers_pct == 50.0
    assert stats.delta_params == sum(m.weight.numel() for m in active)
    bn_numel = sum(4 * m.num_features for _, m in taps.norm_layers(model))  # γ, β, mean, var
    assert stats.norm_params == bn_numel
    assert stats.head_params == 512 * 5 + 5
    base = sum(p.numel() for n, p in tiny_resnet().named_parameters() if not n.startswith("fc."))
    assert stats.base_params == base
    assert stats.additional_params_pct == pytest.approx(
        100 * (stats.delta_params + bn_numel + 2565) / base)


def test_layer_report_lists_layers_input_to_head():
    model = taps.adapt(tiny_resnet())
    scramble(model, off_every=3)
    report = taps.layer_report(model)
    assert [r.name for r in report][:2] == ["conv1", "layer1.0.conv1"]
    assert [r.index for r in report] == list(range(20))
    assert all(r.kind == "conv" for r in report)
    assert [r.active for r in report] == [i % 3 != 0 for i in range(20)]
    assert report[0].params == 64 * 3 * 7 * 7


def test_parameter_multiplier_and_decathlon_score():
    stats = taps.TaskStats(20, 10, 50.0, 100, 0, 0, 100, 1000, 10.0)
    assert taps.parameter_multiplier([stats] * 4) == pytest.approx(1.4)
    # A perfect task scores 1000; an error of twice the baseline scores 0.
    base = {"a": 0.2, "b": 0.1}
    assert taps.decathlon_score({"a": 0.0, "b": 0.2}, base) == pytest.approx(1000.0)
    assert taps.decathlon_score({"a": 0.2, "b": 0.1}, base) == pytest.approx(2 * 1000 / 4)
