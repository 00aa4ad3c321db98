"""Pretraining: settings, optimiser, checkpoints, and the trainer.

Public API::

    TrainConfig, train_preset(name), TRAIN_PRESETS, apply_overrides, resolve_config
    pretrain(config, resume=False, train_dataset=None, val_dataset=None) -> RunResult
    Trainer(config, ...).fit();  build_datasets(config);  read_metrics(run_dir)
    run_pretrain(...)                       the ``brainlm pretrain`` command

Evaluation against the baselines lives in :mod:`brainlm.evaluate`; devices, precision and
process groups in :mod:`brainlm.distributed`.
"""

from brainlm.train.checkpointing import load_checkpoint
from brainlm.train.config import (
    TRAIN_PRESETS,
    TrainConfig,
    apply_overrides,
    forecast_finetune,
    resolve_config,
    train_preset,
)
from brainlm.train.optim import build_optimizer, lr_at, param_groups, scaled_lr
from brainlm.train.run import run_pretrain
from brainlm.train.data import build_datasets, fit_baselines
from brainlm.train.loggers import read_metrics
from brainlm.train.masking import structured_noise
from brainlm.train.region_init import connectivity_embedding, init_region_embedding
from brainlm.train.trainer import NonFiniteLossError, RunResult, Trainer, pretrain

__all__ = [
    "TrainConfig", "TRAIN_PRESETS", "train_preset", "forecast_finetune", "apply_overrides", "resolve_config",
    "pretrain", "run_pretrain", "Trainer", "RunResult", "NonFiniteLossError", "build_datasets", "fit_baselines",
    "read_metrics", "structured_noise", "connectivity_embedding", "init_region_embedding", "param_groups", "build_optimizer", "lr_at", "scaled_lr",
    "load_checkpoint",
]
