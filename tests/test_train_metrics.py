"""Metrics and baselines against hand computations; LR schedule; weight-decay groups; settings."""

import math

import numpy as np
import pytest
import torch

from brainlm.model import BrainLMForPretraining, brainlm_tiny
from brainlm.train import (
    MaskedMetrics,
    TrainConfig,
    apply_overrides,
    baseline_predictions,
    lr_at,
    masked_metrics,
    param_groups,
    parse_overrides,
    scaled_lr,
    train_preset,
)
from brainlm.train.config import TRAIN_PRESETS


def _patches(values, W=2):
    x = torch.tensor(values, dtype=torch.float32)
    return x.view(1, 1, -1, W)  # (B=1, R=1, P, W)


def test_baselines_by_hand_interior_gap():
    target = _patches([1, 2, 3, 4, 5, 6])  # patches [1,2] [3,4] [5,6]
    mask = torch.tensor([[[0.0, 1.0, 0.0]]])  # middle patch masked
    base = baseline_predictions(target, mask)
    # interpolation between t=1 (value 2) and t=4 (value 5): t=2 -> 3, t=3 -> 4
    assert base["interp"][0, 0, 1].tolist() == pytest.approx([3.0, 4.0])
    assert base["mean"][0, 0, 1].tolist() == pytest.approx([3.5, 3.5])  # mean of 1, 2, 5, 6
    assert masked_metrics(base["interp"], target, mask)["mse"] == pytest.approx(0.0)
    assert masked_metrics(base["mean"], target, mask)["mse"] == pytest.approx(0.25)
    assert masked_metrics(base["zero"], target, mask)["mse"] == pytest.approx((9 + 16) / 2)
    assert masked_metrics(base["zero"], target, mask)["mae"] == pytest.approx(3.5)


def test_interpolation_extrapolates_flat_and_zero_without_visible():
    target = _patches([1, 2, 5, 6, 3, 4])
    mask = torch.tensor([[[1.0, 0.0, 1.0]]])  # visible only t=2 (5) and t=3 (6)
    interp = baseline_predictions(target, mask)["interp"][0, 0]
    assert interp[0].tolist() == [5.0, 5.0] and interp[2].tolist() == [6.0, 6.0]
    all_masked = torch.ones(1, 1, 3)
    base = baseline_predictions(target, all_masked)
    assert base["interp"].abs().sum() == 0 and base["mean"].abs().sum() == 0


def test_metrics_match_pooled_sklearn_definitions():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(3, 5, 4, 6, generator=g)
    pred = target + 0.5 * torch.randn(3, 5, 4, 6, generator=g)
    mask = (torch.rand(3, 5, 4, generator=g) < 0.4).float()
    sel = mask.bool()
    y, p = target[sel].flatten().double().numpy(), pred[sel].flatten().double().numpy()
    m = masked_metrics(pred, target, mask)
    assert m["mse"] == pytest.approx(np.mean((p - y) ** 2))
    assert m["mae"] == pytest.approx(np.mean(np.abs(p - y)))
    assert m["r2"] == pytest.approx(1 - np.sum((p - y) ** 2) / np.sum((y - y.mean()) ** 2))
    assert m["pearson"] == pytest.approx(np.corrcoef(p, y)[0, 1])
    # batching does not change the pooled result; padding windows (weight 0) do not count
    acc = MaskedMetrics()
    acc.update(pred[:2], target[:2], mask[:2])
    acc.update(pred[2:], target[2:], mask[2:])
    acc.update(pred[:1] + 100, target[:1], mask[:1], weight=torch.zeros(1))
    assert acc.compute()["r2"] == pytest.approx(m["r2"])


def test_interp_matches_numpy_interp_on_random_masks():
    g = torch.Generator().manual_seed(1)
    target = torch.randn(2, 3, 6, 4, generator=g)
    mask = (torch.rand(2, 3, 6, generator=g) < 0.5).float()
    interp = baseline_predictions(target, mask)["interp"]
    for b in range(2):
        for r in range(3):
            vis = (mask[b, r] == 0).repeat_interleave(4).numpy()
            x = target[b, r].reshape(-1).numpy()
            t = np.arange(24)
            expect = np.interp(t, t[vis], x[vis]) if vis.any() else np.zeros(24)  # np.interp is flat outside
            np.testing.assert_allclose(interp[b, r].reshape(-1).numpy(), expect, rtol=1e-5, atol=1e-5)


def test_lr_schedule_warmup_then_cosine():
    assert lr_at(0, 100, 10) == pytest.approx(0.1)
    assert lr_at(9, 100, 10) == pytest.approx(1.0)
    assert lr_at(10, 100, 10) == pytest.approx(1.0)
    assert lr_at(55, 100, 10) == pytest.approx(0.5)
    assert lr_at(100, 100, 10, min_ratio=0.1) == pytest.approx(0.1)
    values = [lr_at(s, 100, 10) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert scaled_lr(1e-3, 512) == pytest.approx(2e-3)


def test_no_weight_decay_on_norms_biases_and_tokens():
    model = BrainLMForPretraining(brainlm_tiny())
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {"encoder.cls_token", "decoder.mask_token", "encoder.norm.weight", "encoder.signal_proj.bias"} <= set(no_decay["names"])
    assert all(not n.endswith(".bias") and "norm" not in n and "token" not in n for n in decay["names"])
    assert "encoder.signal_proj.weight" in decay["names"]
    assert len(decay["names"]) + len(no_decay["names"]) == len(list(model.parameters()))


def test_presets_and_overrides():
    for name in TRAIN_PRESETS:
        train_preset(name).model_config(num_regions=94)
    cfg = apply_overrides(train_preset("demo"), parse_overrides(["--max_steps=7", "--lr=none", "--fsdp=true",
                                                                 "--model.hidden_size=32", "precision=fp32"]))
    assert cfg.max_steps == 7 and cfg.lr is None and cfg.fsdp is True and cfg.precision == "fp32"
    assert cfg.model_config().hidden_size == 32
    with pytest.raises(ValueError, match="unknown training setting 'max_stepz'"):
        apply_overrides(cfg, {"max_stepz": "3"})
    with pytest.raises(ValueError, match="unknown model setting 'hiden_size'"):
        apply_overrides(cfg, {"model.hiden_size": "3"})
    with pytest.raises(ValueError, match="max_steps: expected an integer"):
        apply_overrides(cfg, {"max_steps": "many"})
    with pytest.raises(ValueError, match="not of the form --key=value"):
        parse_overrides(["--max_steps"])
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="must divide hidden_size"):
        apply_overrides(cfg, {"model.hidden_size": "30"})


def test_round_trip_of_saved_settings(tmp_path):
    cfg = apply_overrides(train_preset("650m"), {"max_steps": "3"})
    cfg.save(tmp_path / "c.json")
    assert TrainConfig.load(tmp_path / "c.json") == cfg
    assert not math.isnan(cfg.base_lr)
