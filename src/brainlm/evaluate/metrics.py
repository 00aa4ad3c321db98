"""Metrics of reconstructions and forecasts, one formula everywhere.

Every number is computed on exactly the values that were hidden (``mask: (B, R, P)``, 1 =
masked, for reconstruction; the last k timepoints for forecasting), pooled over all hidden
values of all windows and regions:

- MSE and MAE;
- **R^2 = 1 - SSE / sum(y^2)**: the fraction of the hidden signal's energy that the
  prediction explains. Data are normalised per region, so predicting 0 scores exactly 0 and
  any useful method scores above it; a negative R^2 is reported as is;
- Pearson r between the pooled predictions and targets.

:class:`MaskedMetrics` keeps float64 running sums, so results do not depend on batching and
can be all-reduced across processes; per-window sums let :mod:`brainlm.pipelines.benchmark`
bootstrap over subjects.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import Tensor

__all__ = ["MaskedMetrics", "masked_metrics", "r2_per_region", "metrics_from_sums", "SUMS", "prediction_metric",
           "PREDICTION_METRICS"]

SUMS = ("n", "sy", "syy", "sp", "spp", "syp", "sse", "sae")


def metrics_from_sums(sums) -> dict[str, float]:
    """mse, mae, r2, pearson (and n) from the sums named in :data:`SUMS`."""
    n, sy, syy, sp, spp, syp, sse, sae = (float(v) for v in sums)
    if n == 0:
        return {"mse": math.nan, "mae": math.nan, "r2": math.nan, "pearson": math.nan, "n": 0}
    sst_c = syy - sy * sy / n
    spp_c = spp - sp * sp / n
    cov = syp - sy * sp / n
    r2 = 1.0 - sse / syy if syy > 0 else math.nan
    pearson = cov / math.sqrt(sst_c * spp_c) if sst_c > 0 and spp_c > 0 else math.nan
    return {"mse": sse / n, "mae": sae / n, "r2": r2, "pearson": pearson, "n": int(n)}


class MaskedMetrics:
    """Running sums over masked values; ``compute()`` gives mse, mae, r2 and pearson."""

    def __init__(self):
        self.sums = torch.zeros(len(SUMS), dtype=torch.float64)

    @staticmethod
    def window_sums(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """Per-window sums ``(B, 8)`` (order of :data:`SUMS`) over the masked values.

        Args:
            pred, target: (B, R, T), or (B, R, P, W) patches.
            mask: same shape as ``pred`` (or (B, R, P) for patches), 1 = masked.
        """
        m = mask.to(torch.float64)
        if m.shape != pred.shape:
            m = m.unsqueeze(-1).expand(pred.shape)  # a patch mask over (B, R, P, W)
        y, p = target.to(torch.float64), pred.to(torch.float64)
        err = p - y
        dims = tuple(range(1, pred.dim()))
        return torch.stack([m.sum(dims), (m * y).sum(dims), (m * y * y).sum(dims), (m * p).sum(dims),
                            (m * p * p).sum(dims), (m * y * p).sum(dims), (m * err * err).sum(dims),
                            (m * err.abs()).sum(dims)], dim=1).cpu()  # (B, 8)

    def update(self, pred: Tensor, target: Tensor, mask: Tensor, weight: Tensor | None = None) -> Tensor:
        """Add one batch; returns its per-window sums ``(B, 8)``.

        Args:
            pred, target, mask: as :meth:`window_sums`.
            weight: (B,) 0/1 per window (0 drops padding windows).
        """
        per_window = self.window_sums(pred, target, mask)
        if weight is not None:
            per_window = per_window * weight.to(torch.float64).view(-1, 1).cpu()
        self.sums += per_window.sum(0)
        return per_window

    def merge(self, sums: Tensor) -> None:
        self.sums += sums.to(torch.float64).cpu()

    def compute(self) -> dict[str, float]:
        return metrics_from_sums(self.sums.tolist())


def masked_metrics(pred: Tensor, target: Tensor, mask: Tensor) -> dict[str, float]:
    """mse, mae, r2, pearson of one prediction on the masked patches (module docstring)."""
    acc = MaskedMetrics()
    acc.update(pred, target, mask)
    return acc.compute()


def r2_per_region(true: np.ndarray, pred: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """R^2 = 1 - SSE / sum(y^2) per region, over the timepoints where ``mask`` is True.

    Args:
        true, pred: ``(T, R)``.
        mask: ``(T, R)`` bool, or None for all timepoints.

    Returns:
        ``(R,)``; NaN for a region with no evaluated timepoint or an all-zero truth.
    """
    true, pred = np.asarray(true, np.float64), np.asarray(pred, np.float64)
    m = np.ones_like(true, bool) if mask is None else np.asarray(mask, bool)
    ss_res = np.where(m, (true - pred) ** 2, 0).sum(0)
    ss_tot = np.where(m, true ** 2, 0).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = 1 - ss_res / ss_tot
    r2[(m.sum(0) == 0) | (ss_tot == 0)] = np.nan
    return r2


def prediction_metric(task: str, name: str, y, pred, score=None, classes=None) -> float:
    """One metric of target predictions (probes, fine-tuning): see :data:`PREDICTION_METRICS`.

    Regression: ``r2`` (the usual centred R^2 of targets such as age), ``mae``, ``pearson_r``.
    Classification: ``accuracy``, ``balanced_accuracy``, ``macro_f1``, ``auroc`` (needs class
    ``score``; one-vs-rest macro for more than two ``classes``). NaN where undefined.
    """
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        mean_absolute_error,
        r2_score,
        roc_auc_score,
    )

    if task == "regression":
        if name == "r2":
            return float(r2_score(y, pred)) if len(y) > 1 else np.nan
        if name == "mae":
            return float(mean_absolute_error(y, pred))
        if np.std(pred) == 0 or np.std(y) == 0:
            return np.nan
        return float(np.corrcoef(y, pred)[0, 1])
    if name == "accuracy":
        return float(accuracy_score(y, pred))
    if name == "macro_f1":
        from sklearn.metrics import f1_score

        return float(f1_score(y, pred, average="macro", zero_division=0))
    if name == "balanced_accuracy":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(balanced_accuracy_score(y, pred))
    present = np.unique(y)
    if len(present) < 2:
        return np.nan
    if len(classes) == 2:
        return float(roc_auc_score(y == classes[1], score))
    if len(present) < len(classes):
        return np.nan
    return float(roc_auc_score(y, score, multi_class="ovr", labels=classes))


PREDICTION_METRICS = {"regression": ("r2", "mae", "pearson_r"),
                      "classification": ("accuracy", "balanced_accuracy", "macro_f1", "auroc")}
