"""Masked-patch metrics, and the trivial baselines they are read against.

Every number is computed on exactly the masked patches of one mask (``mask: (B, R, P)``,
1 = masked), pooled over all masked timepoints of all windows and regions:

- MSE and MAE;
- R^2 = 1 - SSE / SST, with SST around the mean of the masked targets (the original's
  ``r2_score`` on the pooled values, but not clipped at 0: a negative R^2 is reported as is);
- Pearson r between the pooled predictions and targets.

Baselines, given the same visible patches the model sees:

- ``zero``: predict 0 (the mean of normalised data);
- ``mean``: each region's mean over its visible timepoints in the window;
- ``interp``: per region, linear interpolation in time between the nearest visible timepoints
  before and after; flat (nearest value) where only one side exists; 0 where none does.

A model that does not beat ``interp`` is not using what it sees beyond temporal smoothness.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["MaskedMetrics", "baseline_predictions", "BASELINES", "masked_metrics"]

BASELINES = ("zero", "mean", "interp")
_SUMS = ("n", "sy", "syy", "sp", "spp", "syp", "sse", "sae")


class MaskedMetrics:
    """Running sums over masked timepoints; ``compute()`` gives mse, mae, r2 and pearson.

    Sums are float64, so results do not depend on how the data were split into batches (up to
    rounding), and can be all-reduced across processes (``state`` / ``merge``).
    """

    def __init__(self) -> None:
        self.sums = torch.zeros(len(_SUMS), dtype=torch.float64)

    def update(self, pred: Tensor, target: Tensor, mask: Tensor, weight: Tensor | None = None) -> None:
        """Add one batch.

        Args:
            pred, target: (B, R, P, W).
            mask: (B, R, P), 1 = masked; only these patches count.
            weight: optional (B,) 0/1 per window (0 drops padding windows).
        """
        m = mask.to(torch.float64)
        if weight is not None:
            m = m * weight.to(torch.float64).view(-1, 1, 1)
        m = m.unsqueeze(-1).expand(pred.shape)  # (B, R, P, W)
        y, p = target.to(torch.float64), pred.to(torch.float64)
        err = p - y
        self.sums += torch.stack([
            m.sum(), (m * y).sum(), (m * y * y).sum(), (m * p).sum(), (m * p * p).sum(), (m * y * p).sum(),
            (m * err * err).sum(), (m * err.abs()).sum(),
        ]).cpu()

    def merge(self, sums: Tensor) -> None:
        self.sums += sums.to(torch.float64).cpu()

    def compute(self) -> dict[str, float]:
        n, sy, syy, sp, spp, syp, sse, sae = self.sums.tolist()
        if n == 0:
            return {"mse": math.nan, "mae": math.nan, "r2": math.nan, "pearson": math.nan, "n": 0}
        sst = syy - sy * sy / n
        spp_c = spp - sp * sp / n
        cov = syp - sy * sp / n
        r2 = 1.0 - sse / sst if sst > 0 else math.nan
        pearson = cov / math.sqrt(sst * spp_c) if sst > 0 and spp_c > 0 else math.nan
        return {"mse": sse / n, "mae": sae / n, "r2": r2, "pearson": pearson, "n": int(n)}


def baseline_predictions(target: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """The three baselines' reconstructions from the visible patches only.

    Args:
        target: (B, R, P, W) true patches (only the visible ones are read).
        mask: (B, R, P), 1 = masked.

    Returns:
        ``{"zero": ..., "mean": ..., "interp": ...}``, each (B, R, P, W).
    """
    B, R, P, W = target.shape
    T = P * W
    x = target.reshape(B, R, T).float()  # (B, R, T)
    visible = (mask == 0).unsqueeze(-1).expand(B, R, P, W).reshape(B, R, T)  # (B, R, T)
    vis_f = visible.float()

    count = vis_f.sum(-1, keepdim=True)  # (B, R, 1)
    region_mean = (x * vis_f).sum(-1, keepdim=True) / count.clamp(min=1)  # (B, R, 1); 0 without visible
    mean = region_mean.expand(B, R, T)

    t = torch.arange(T, device=x.device).expand(B, R, T)
    prev = torch.where(visible, t, torch.full_like(t, -1)).cummax(-1).values  # last visible <= t, or -1
    nxt = torch.where(visible, t, torch.full_like(t, T)).flip(-1).cummin(-1).values.flip(-1)  # first visible >= t, or T
    has_prev, has_next = prev >= 0, nxt < T
    x_prev = x.gather(-1, prev.clamp(min=0))
    x_next = x.gather(-1, nxt.clamp(max=T - 1))
    span = (nxt - prev).clamp(min=1).float()
    frac = (t - prev).float() / span
    both = x_prev + frac * (x_next - x_prev)
    interp = torch.where(has_prev & has_next, both,
                         torch.where(has_prev, x_prev, torch.where(has_next, x_next, torch.zeros_like(x))))
    return {
        "zero": torch.zeros_like(target, dtype=torch.float32),
        "mean": mean.reshape(B, R, P, W),
        "interp": interp.reshape(B, R, P, W),
    }


def masked_metrics(pred: Tensor, target: Tensor, mask: Tensor) -> dict[str, float]:
    """mse, mae, r2, pearson of one prediction on the masked patches (see the module docstring)."""
    acc = MaskedMetrics()
    acc.update(pred, target, mask)
    return acc.compute()
