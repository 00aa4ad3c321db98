"""Pretraining: settings, optimiser, metrics with baselines, checkpoints, distribution, the loop.

Public API::

    TrainConfig, train_preset(name), TRAIN_PRESETS, apply_overrides, parse_overrides
    pretrain(config, resume=False, train_dataset=None, val_dataset=None) -> RunResult
    evaluate(model, dataset, ...) -> (metrics, examples)
    MaskedMetrics, baseline_predictions, masked_metrics
    init_distributed(), wrap_model(model, mode), resolve_device, resolve_precision, autocast_context
"""

from brainlm.train.checkpointing import (
    latest_checkpoint,
    load_checkpoint,
    verify_checkpoint,
)
from brainlm.train.config import (
    TRAIN_PRESETS,
    TrainConfig,
    apply_overrides,
    parse_overrides,
    resolve_config,
    train_preset,
)
from brainlm.train.distributed import (
    autocast_context,
    init_distributed,
    resolve_device,
    resolve_precision,
    unwrap_model,
    wrap_model,
)
from brainlm.train.loop import (
    NonFiniteLossError,
    RunResult,
    build_datasets,
    evaluate,
    pretrain,
    read_metrics,
    run_pretrain,
)
from brainlm.train.metrics import (
    BASELINES,
    MaskedMetrics,
    baseline_predictions,
    masked_metrics,
)
from brainlm.train.optim import build_optimizer, lr_at, param_groups, scaled_lr

__all__ = [
    "TrainConfig", "TRAIN_PRESETS", "train_preset", "apply_overrides", "parse_overrides", "resolve_config",
    "pretrain", "run_pretrain", "evaluate", "RunResult", "NonFiniteLossError", "build_datasets", "read_metrics",
    "MaskedMetrics", "baseline_predictions", "masked_metrics", "BASELINES",
    "init_distributed", "wrap_model", "unwrap_model", "resolve_device", "resolve_precision", "autocast_context",
    "param_groups", "build_optimizer", "lr_at", "scaled_lr",
    "latest_checkpoint", "load_checkpoint", "verify_checkpoint",
]
