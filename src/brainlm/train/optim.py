"""AdamW with the right parameters decayed, and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["param_groups", "build_optimizer", "lr_at", "build_scheduler", "scaled_lr"]

# Parameters that are never decayed besides norms and biases (every parameter with < 2 dims).
_NO_DECAY_NAMES = ("cls_token", "mask_token")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: matrices decayed; norms, biases, CLS and mask tokens not.

    Returns:
        ``[{"params": [...], "weight_decay": wd, "names": [...]}, {... "weight_decay": 0.0}]``
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or any(token in name for token in _NO_DECAY_NAMES):
            no_decay.append((name, p))
        else:
            decay.append((name, p))
    return [
        {"params": [p for _, p in decay], "weight_decay": weight_decay, "names": [n for n, _ in decay]},
        {"params": [p for _, p in no_decay], "weight_decay": 0.0, "names": [n for n, _ in no_decay]},
    ]


def scaled_lr(base_lr: float, global_batch: int) -> float:
    """The original rule: lr = base_lr x global batch / 256."""
    return base_lr * global_batch / 256


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`; the fused kernel (one call per step instead of a dozen
    per parameter, which is most of the optimiser's time for a small model on a CPU) unless
    the parameters are FSDP shards, which take the default implementation."""
    groups = param_groups(model, weight_decay)
    for g in groups:
        g.pop("names")
    plain = all(type(p) is nn.Parameter for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=plain or None)


def lr_at(step: int, max_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak learning rate at optimiser ``step`` (0-based).

    Linear warmup from 1/warmup to 1 over ``warmup_steps``, then a half cosine from 1 down to
    ``min_ratio`` at ``max_steps``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    progress = min(1.0, progress)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, max_steps: int, warmup_steps: int, min_ratio: float = 0.0):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, max_steps, warmup_steps, min_ratio))


def build_optimization(model: nn.Module, config, global_batch: int):
    """The run's AdamW and learning-rate schedule from its settings (``TrainConfig``): the peak lr
    scaled by the global batch unless ``lr`` is given, warmup in steps or as a share of ``max_steps``."""
    c = config
    peak_lr = c.lr if c.lr is not None else scaled_lr(c.base_lr, global_batch)
    optimizer = build_optimizer(model, peak_lr, c.weight_decay, (c.beta1, c.beta2))
    warmup = c.warmup_steps if c.warmup_steps is not None else round(c.warmup_ratio * c.max_steps)
    return optimizer, build_scheduler(optimizer, c.max_steps, warmup, c.min_lr_ratio)
