"""Whole-recording reconstruction and forecasting of the last timepoints of each window,
each next to the baseline ladder (:mod:`brainlm.evaluate.baselines`) on the same values.

Dimension letters: B windows, R regions, T timepoints per window, L tokens of a window
(``model.num_tokens``), k forecast timepoints.

Reconstruction (``reconstruct_recording``): the recording is cut into consecutive windows of T
timepoints (a tail shorter than T is left out). With ``cover=True`` (default) each window is
run ``ceil(L / num_masked)`` times with disjoint random token masks of ``mask_ratio * L``
tokens, so every value is predicted once while hidden from the encoder; R^2 is then over
every timepoint. With ``cover=False`` one random mask is drawn per window and R^2 is over the
masked values only. Both model kinds work the same way: BrainLM tokens are (region, patch)
pairs, ViT-MAE tokens are image patches. The baselines fill the same hidden values from the
same visible ones.

Forecasting (``forecast_windows``): the model's ``forecast``, which hides the last k
timepoints of every region (the original code's ``last_timepoints_masking`` for BrainLM,
``predict_last`` for ViT-MAE). Baselines on the same windows: persistence, the context mean,
and, when a training split is given to fit them, per-region AR(p) and a ridge VAR(p).

R^2 is ``1 - SSE / sum(y^2)`` everywhere (:mod:`brainlm.evaluate.metrics`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from brainlm.distributed import (
    autocast_context,
    gather_in_order,
    rank_share,
    resolve_precision,
)
from brainlm.errors import UserError
from brainlm.evaluate.baselines import ForecastBaselines, ReconstructionBaselines
from brainlm.evaluate.metrics import r2_per_region
from brainlm.model import masking_noise
from brainlm.progress import progress as progress_bar

from .embed import recording_windows, window_starts
from .loading import Recordings, _as_tensor, check_finite, check_regions

__all__ = [
    "Reconstruction",
    "reconstruct_recording",
    "reconstruct_recordings",
    "forecast_windows",
    "ForecastResult",
    "forecast_recordings",
]


@dataclass
class Reconstruction:
    """One recording reconstructed window by window.

    Attributes:
        true, pred: ``(T', R)`` (T' = whole windows' timepoints).
        masked: ``(T', R)`` bool, True where the prediction was made with that value hidden.
        r2: ``(R,)`` R^2 over the masked values.
        baselines: name -> ``(T', R)`` the baselines' fill of the same hidden values.
    """

    true: np.ndarray
    pred: np.ndarray
    masked: np.ndarray
    r2: np.ndarray
    baselines: dict[str, np.ndarray] = field(default_factory=dict)

    def scores(self) -> dict[str, float]:
        """Pooled R^2 over the masked values: the model's and each baseline's."""
        y = self.true[self.masked].astype(np.float64)
        energy = float((y ** 2).sum())
        preds = {"model": self.pred, **self.baselines}
        return {name: 1 - float(((p[self.masked] - y) ** 2).sum()) / energy for name, p in preds.items()}


def _token_masks(n_win: int, L: int, num_masked: int, passes: int, g: torch.Generator) -> list[torch.Tensor]:
    """``passes`` disjoint random masks of ``num_masked`` tokens per window (the last wraps round)."""
    perm = torch.stack([torch.randperm(L, generator=g) for _ in range(n_win)])  # (n, L)
    masks = []
    for j in range(passes):
        sel = (torch.arange(num_masked) + j * num_masked) % L
        masked = torch.zeros(n_win, L, dtype=torch.bool)
        masked.scatter_(1, perm[:, sel], True)
        masks.append(masked)
    return masks


@torch.no_grad()
def reconstruct_recording(
    model: nn.Module,
    timeseries: np.ndarray,
    coords: np.ndarray,
    *,
    mask_ratio: float = 0.5,
    window: int | None = None,
    cover: bool = True,
    batch_size: int = 16,
    seed: int = 0,
    baselines: ReconstructionBaselines | None = None,
    dtype: torch.dtype = torch.float32,
) -> Reconstruction:
    """Reconstruct a whole recording window by window (module docstring).

    Args:
        model: a loaded model (either kind).
        timeseries: ``(T_rec, R)``.
        coords: ``(R, 3)``.
        mask_ratio: fraction of tokens hidden per pass, in (0, 1).
        window: T (default: the model's).
        cover: predict every value once while hidden.
        batch_size: forward passes per batch.
        seed: seed of the random masks.
        baselines: the ladder (fitted on a training split for the connectivity fill), or None.
        dtype: compute precision (autocast).
    """
    if not 0.0 < mask_ratio < 1.0:
        raise UserError(f"--mask-ratio must be in (0, 1), got {mask_ratio}")
    check_regions(model, timeseries.shape[1], "the recording")
    T = window or model.window_length
    n_win = len(timeseries) // T
    if n_win == 0:
        raise UserError(f"recording of {len(timeseries)} timepoints is shorter than one window ({T})")
    x = torch.from_numpy(recording_windows(timeseries, T))  # (n, R, T)
    R = x.shape[1]
    xyz = torch.as_tensor(coords, dtype=torch.float32).expand(n_win, R, 3)
    device = next(model.parameters()).device
    L = model.num_tokens(R, T)
    num_masked = L - int(L * (1 - mask_ratio))
    if num_masked == 0:
        raise UserError(f"--mask-ratio {mask_ratio} masks no token of {L}")
    passes = _token_masks(n_win, L, num_masked, math.ceil(L / num_masked) if cover else 1, torch.Generator().manual_seed(seed))
    pred, hidden, fills = _masked_passes(model, x, xyz, passes, batch_size, baselines, device, dtype)
    to_tr = lambda a: a.permute(0, 2, 1).reshape(n_win * T, R).numpy()  # (n, R, T) -> (n T, R)
    true, p, h = to_tr(x), to_tr(pred), to_tr(hidden)
    return Reconstruction(true, p, h, r2_per_region(true, p, h), {k: to_tr(v) for k, v in fills.items()})


def _masked_passes(model, x, xyz, passes, batch_size, baselines, device, dtype):
    """Run every masking pass over the windows ``x`` (n, R, T): the model's prediction, which
    values were hidden, and the baselines' fills, each value taken from the first pass that hid it."""
    names = baselines.names if baselines is not None else ()
    pred, hidden = torch.zeros_like(x), torch.zeros(x.shape, dtype=torch.bool)
    fills = {name: torch.zeros_like(x) for name in names}
    for masked in passes:
        noise, ratio = masking_noise(masked)
        for s in range(0, len(x), batch_size):
            sl = slice(s, s + batch_size)
            with autocast_context(device, dtype):
                out = model.reconstruct(x[sl].to(device), xyz[sl].to(device), noise=noise[sl].to(device), mask_ratio=ratio)
            check_finite(model, out.pred, "reconstructions")
            m = out.mask.cpu()  # (b, R, T)
            new = m & ~hidden[sl]  # the first pass that hid a value wins
            pred[sl] = torch.where(new, out.pred.float().cpu(), pred[sl])
            for name, fill in (baselines.predict(x[sl], m).items() if names else ()):
                fills[name][sl] = torch.where(new, fill, fills[name][sl])
            hidden[sl] |= m
    return pred, hidden, fills


def reconstruct_recordings(
    model: nn.Module, recordings: Recordings, *, progress: bool = True, precision: str = "fp32",
    baselines: ReconstructionBaselines | None = None, keep: int | None = None, **kwargs
) -> tuple[pd.DataFrame, dict[str, Reconstruction]] | None:
    """Reconstruct every recording; a table of R^2 per (recording, region) and the results.

    Under ``torchrun`` each process takes every world-size-th recording; rank 0 returns the
    table of all of them in recording order (other ranks return None) and the first ``keep``
    reconstructions (all when None). Recordings shorter than one window are left out.
    """
    check_regions(model, recordings.num_regions, recordings.source)
    T = kwargs.get("window") or model.window_length
    dtype = resolve_precision(precision, next(model.parameters()).device)
    local = []
    for i in progress_bar(rank_share(len(recordings)), enabled=progress, desc="reconstruct", unit="rec"):
        meta, ts = recordings.meta[i], recordings.load(i)
        if len(ts) < T:
            continue
        rec = reconstruct_recording(model, ts, recordings.coords, baselines=baselines, dtype=dtype, **kwargs)
        scores = rec.scores()
        rows = [{**meta, "region": r, "r2": v} for r, v in enumerate(rec.r2)]
        local.append((i, (meta["recording_id"], rows, scores, rec if keep is None or i < 4 * keep else None)))
    gathered = gather_in_order(local)
    if gathered is None:
        return None
    if not gathered:
        raise UserError(f"no recording of {recordings.source} holds a window of {T} timepoints (--window)")
    table = pd.DataFrame([row for _, rows, _, _ in gathered for row in rows])
    table.attrs["scores"] = {rid: scores for rid, _, scores, _ in gathered}
    kept = [(rid, rec) for rid, _, _, rec in gathered if rec is not None]
    return table, dict(kept[:keep] if keep is not None else kept)


# ---------------------------------------------------------------------------------------------
# Forecasting
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def forecast_windows(model: nn.Module, signal_vectors, xyz_vectors, k: int,
                     dtype: torch.dtype = torch.float32) -> np.ndarray:
    """The model's prediction of the last ``k`` timepoints of every region, given the rest.

    Args:
        model: a loaded model (either kind; see its ``forecast`` for the allowed ``k``).
        signal_vectors: ``(B, R, T)``.
        xyz_vectors: ``(B, R, 3)`` or ``(R, 3)``.

    Returns:
        ``(B, R, k)``.
    """
    x = _as_tensor(signal_vectors)
    xyz = _as_tensor(xyz_vectors)
    if xyz.dim() == 2:
        xyz = xyz.expand(x.shape[0], -1, -1)
    device = next(model.parameters()).device
    with autocast_context(device, dtype):
        pred = model.forecast(x.to(device), xyz.to(device), k)
    check_finite(model, pred, "forecasts")
    return pred.float().cpu().numpy()


def check_horizon(model: nn.Module, k: int, window: int, num_regions: int, flag: str = "k") -> None:
    """Refuse a forecast horizon the model cannot take, before any work, naming the flag it came from.

    The model's own ``forecast`` decides (a BrainLM model needs a multiple of its patch size,
    a ViT-MAE model its own range): one window of zeros is forecast and its refusal re-raised.
    """
    x = torch.zeros(1, num_regions, window)
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model.forecast(x.to(device), torch.zeros(1, num_regions, 3, device=device), k)
    except (ValueError, TypeError) as err:
        raise UserError(f"{flag} {k}: {err}") from None


@dataclass
class ForecastResult:
    """Forecast metrics and the arrays they came from.

    Attributes:
        metrics: one row per method (``brainlm``, then the baselines): ``mse`` over all forecast
            points and ``r2`` (pooled ``1 - SSE / sum(y^2)`` over them).
        true, preds: ``(N, R, k)`` truth and ``{method: (N, R, k)}``.
        context: ``(N, R, T - k)`` the visible part.
        index: one row per window (recording and subject IDs, ``window_start``).
    """

    metrics: pd.DataFrame
    true: np.ndarray
    preds: dict[str, np.ndarray]
    context: np.ndarray
    index: pd.DataFrame


def forecast_metrics(true: np.ndarray, pred: np.ndarray) -> dict:
    err = (np.asarray(true, np.float64) - pred) ** 2
    return {"mse": float(err.mean()), "r2": float(1 - err.sum() / (np.asarray(true, np.float64) ** 2).sum())}


def forecast_recordings(
    model: nn.Module,
    recordings: Recordings,
    k: int,
    *,
    window: int | None = None,
    stride: int | None = None,
    baselines: ForecastBaselines | None = None,
    batch_size: int = 16,
    precision: str = "fp32",
    progress: bool = True,
    flag: str = "k",
) -> ForecastResult:
    """Forecast the last k timepoints of sliding windows of every recording, with the baselines.

    Args:
        flag: the name ``k`` came under, for the message when the model cannot take it
            (``--last`` of ``brainlm forecast``, ``--forecast-k`` of ``brainlm benchmark``).
    """
    check_regions(model, recordings.num_regions, recordings.source)
    T = window or model.window_length
    check_horizon(model, k, T, recordings.num_regions, flag)
    dtype = resolve_precision(precision, next(model.parameters()).device)
    trues, preds, ctxs, rows = [], [], [], []
    for meta, ts in progress_bar(recordings, enabled=progress, total=len(recordings), desc="forecast", unit="rec"):
        starts = window_starts(len(ts), T, stride, "sliding")
        for s in range(0, len(starts), batch_size):
            x = np.stack([ts[t0 : t0 + T].T for t0 in starts[s : s + batch_size]])  # (b, R, T)
            preds.append(forecast_windows(model, x, recordings.coords, k, dtype))
            trues.append(x[..., T - k :])
            ctxs.append(x[..., : T - k])
            rows += [{**meta, "window_start": int(t0)} for t0 in starts[s : s + batch_size]]
    if not rows:
        raise UserError(f"no recording of {recordings.source} holds a window of {T} timepoints (--window)")
    true, ctx = np.concatenate(trues), np.concatenate(ctxs)
    ladder = (baselines or ForecastBaselines()).predict(ctx, k)
    methods = {"brainlm": np.concatenate(preds), **ladder}
    metrics = pd.DataFrame([{"method": m, **forecast_metrics(true, p)} for m, p in methods.items()])
    metrics["k"] = k
    metrics["num_windows"] = len(true)
    return ForecastResult(metrics, true, methods, ctx, pd.DataFrame(rows))
