"""LR schedule, weight-decay groups, settings and their overrides."""

import math

import pytest

from brainlm.model import BrainLMForPretraining, brainlm_tiny
from brainlm.train import (
    TrainConfig,
    apply_overrides,
    lr_at,
    param_groups,
    scaled_lr,
    train_preset,
)
from brainlm.train.config import TRAIN_PRESETS


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
    import argparse

    from brainlm.train.run import PretrainOptions

    parser = PretrainOptions.add_to(argparse.ArgumentParser())
    given = PretrainOptions.from_args(parser.parse_args(["--max_steps=7", "--lr=none", "--compile", "--plots=false",
                                                         "--model.hidden_size=32", "--precision", "fp32"])).overrides
    cfg = apply_overrides(train_preset("demo"), given)
    assert cfg.compile is True and cfg.plots is False
    assert cfg.max_steps == 7 and cfg.lr is None and cfg.precision == "fp32"
    assert cfg.model_config().hidden_size == 32
    with pytest.raises(ValueError, match="unknown training setting 'max_stepz'"):
        apply_overrides(cfg, {"max_stepz": "3"})
    with pytest.raises(ValueError, match="unknown model setting 'hiden_size'"):
        apply_overrides(cfg, {"model.hiden_size": "3"})
    with pytest.raises(ValueError, match="max_steps: expected an integer"):
        apply_overrides(cfg, {"max_steps": "many"})
    with pytest.raises(SystemExit):  # a setting without its value
        parser.parse_args(["--max_steps"])
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="must divide hidden_size"):
        apply_overrides(cfg, {"model.hidden_size": "30"})


def test_round_trip_of_saved_settings(tmp_path):
    cfg = apply_overrides(train_preset("650m"), {"max_steps": "3"})
    cfg.save(tmp_path / "c.json")
    assert TrainConfig.load(tmp_path / "c.json") == cfg
    assert not math.isnan(cfg.base_lr)
