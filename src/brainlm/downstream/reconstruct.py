"""Whole-recording reconstruction and forecasting of the last timepoints of each window.

Dimension letters: B windows, R regions, T timepoints per window, W timepoints per patch,
P = T / W patches per region, L = R * P tokens, k forecast timepoints.

Reconstruction (``reconstruct_recording``): the recording is cut into consecutive windows
of T timepoints (a tail shorter than T is left out). With ``cover=True`` (default, BrainLM
models) each window is run ``ceil(L / num_masked)`` times with disjoint random masks of
``mask_ratio * L`` tokens, so every patch is predicted once while hidden from the encoder;
R^2 is then over every timepoint. With ``cover=False`` one random mask is drawn per window
and R^2 is over the masked timepoints only. Released ViT-MAE models mask image patches and
are run once per window (``cover=False``).

Forecasting (``forecast_windows``): the last k timepoints of every region are hidden, as the
original code's ``last_timepoints_masking``. k must be a positive multiple of W smaller than
T (the model masks whole patches): k / W patches per region are masked, and the visible
tokens keep their region-major order. Baselines on the same windows: persistence (the last
visible value repeated) and a per-region autoregressive model AR(p) fitted by least squares
(with intercept) on the T - k visible timepoints of that window and iterated k steps; and the mean of the visible part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from brainlm.errors import UserError

from .loading import Recordings, _as_tensor, check_regions, is_vitmae, model_window

__all__ = [
    "r2_per_region",
    "masking_noise",
    "forecast_noise",
    "Reconstruction",
    "reconstruct_recording",
    "reconstruct_recordings",
    "persistence_forecast",
    "ar_forecast",
    "forecast_windows",
    "ForecastResult",
    "forecast_recordings",
]


def r2_per_region(true: np.ndarray, pred: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Coefficient of determination per region, over the timepoints where ``mask`` is True.

    R^2 = 1 - sum (y - yhat)^2 / sum (y - mean(y))^2, the mean over the same timepoints
    (``sklearn.metrics.r2_score`` with ``multioutput="raw_values"``). NaN for a region with
    fewer than two evaluated timepoints or constant truth.

    Args:
        true, pred: ``(T, R)``.
        mask: ``(T, R)`` bool, or None for all timepoints.

    Returns:
        ``(R,)``.
    """
    true, pred = np.asarray(true, np.float64), np.asarray(pred, np.float64)
    m = np.ones_like(true, bool) if mask is None else np.asarray(mask, bool)
    n = m.sum(0)
    mean = np.where(m, true, 0).sum(0) / np.maximum(n, 1)
    ss_res = np.where(m, (true - pred) ** 2, 0).sum(0)
    ss_tot = np.where(m, (true - mean) ** 2, 0).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = 1 - ss_res / ss_tot
    r2[(n < 2) | (ss_tot == 0)] = np.nan
    return r2


def masking_noise(masked: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Noise and mask ratio that make the model hide exactly the tokens marked in ``masked``.

    Kept tokens get noise equal to their region-major index, masked tokens that plus L, so
    the encoder sees the kept tokens in region-major order. Every row must mask the same
    number of tokens.

    Args:
        masked: ``(B, L)`` bool, True = hide.

    Returns:
        noise ``(B, L)`` float, and the ``mask_ratio`` to pass with it.
    """
    B, L = masked.shape
    counts = masked.sum(1)
    if (counts != counts[0]).any():
        raise UserError("every window must mask the same number of tokens")
    num_masked = int(counts[0])
    noise = torch.arange(L, dtype=torch.float32).expand(B, L) + L * masked.float()
    # int(L * (1 - ratio)) must equal L - num_masked exactly; half a token of slack absorbs rounding.
    ratio = (num_masked - 0.5) / L if num_masked else 0.0
    return noise, ratio


def forecast_noise(batch: int, num_regions: int, num_patches: int, num_masked_patches: int) -> tuple[torch.Tensor, float]:
    """Noise and mask ratio hiding the last ``num_masked_patches`` patches of every region.

    Returns:
        noise ``(B, R * P)`` and mask ratio; see :func:`masking_noise`.
    """
    if not 0 < num_masked_patches < num_patches:
        raise UserError(f"must mask between 1 and {num_patches - 1} of {num_patches} patches, got {num_masked_patches}")
    masked = torch.zeros(batch, num_regions, num_patches, dtype=torch.bool)
    masked[:, :, num_patches - num_masked_patches :] = True
    return masking_noise(masked.view(batch, -1))


@dataclass
class Reconstruction:
    """One recording reconstructed window by window.

    Attributes:
        true, pred: ``(T', R)`` (T' = whole windows' timepoints).
        masked: ``(T', R)`` bool, True where the prediction was made with that timepoint hidden.
        r2: ``(R,)`` R^2 over the masked timepoints.
    """

    true: np.ndarray
    pred: np.ndarray
    masked: np.ndarray
    r2: np.ndarray


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
) -> Reconstruction:
    """Reconstruct a whole recording window by window (module docstring).

    Args:
        model: ``BrainLMForPretraining`` or ``BrainLMViTMAE``.
        timeseries: ``(T_rec, R)``.
        coords: ``(R, 3)``.
        mask_ratio: fraction of tokens hidden per pass, in (0, 1).
        window: T (default: the model's).
        cover: predict every patch once while hidden (BrainLM models only).
        batch_size: forward passes per batch.
        seed: seed of the random masks.
    """
    if not 0.0 < mask_ratio < 1.0:
        raise UserError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
    check_regions(model, timeseries.shape[1], "the recording")
    T = window or model_window(model)
    n_win = len(timeseries) // T
    if n_win == 0:
        raise UserError(f"recording of {len(timeseries)} timepoints is shorter than one window ({T})")
    x = torch.from_numpy(np.ascontiguousarray(timeseries[: n_win * T].reshape(n_win, T, -1).transpose(0, 2, 1)))  # (n, R, T)
    R = x.shape[1]
    xyz = torch.as_tensor(coords, dtype=torch.float32).expand(n_win, R, 3)
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    pred = torch.zeros_like(x)
    hidden = torch.zeros(x.shape, dtype=torch.bool)
    if is_vitmae(model):
        for s in range(0, n_win, batch_size):
            out = model(x[s : s + batch_size].to(device), mask_ratio=mask_ratio,
                        noise=torch.rand(min(batch_size, n_win - s), model.num_patches, generator=g).to(device))
            pred[s : s + batch_size] = out.logits.float().cpu()
            hidden[s : s + batch_size] = out.mask.bool().cpu()
    else:
        Wp = model.config.timepoint_patching_size
        P = T // Wp
        L = R * P
        num_masked = L - int(L * (1 - mask_ratio))
        if num_masked == 0:
            raise UserError(f"mask_ratio {mask_ratio} masks no token of {L}")
        passes = math.ceil(L / num_masked) if cover else 1
        perm = torch.stack([torch.randperm(L, generator=g) for _ in range(n_win)])  # (n, L)
        for j in range(passes):
            sel = (torch.arange(num_masked) + j * num_masked) % L  # wraps in the last pass
            masked = torch.zeros(n_win, L, dtype=torch.bool)
            masked.scatter_(1, perm[:, sel], True)
            noise, ratio = masking_noise(masked)
            for s in range(0, n_win, batch_size):
                sl = slice(s, s + batch_size)
                out = model(x[sl].to(device), xyz[sl].to(device), noise=noise[sl].to(device), mask_ratio=ratio)
                logits = out.logits.float().cpu().reshape(-1, R, T)  # (b, R, T)
                m = out.mask.bool().cpu().repeat_interleave(Wp, dim=-1)  # (b, R, T)
                new = m & ~hidden[sl]  # first pass that hid this timepoint wins
                pred[sl] = torch.where(new, logits, pred[sl])
                hidden[sl] |= m
    to_tr = lambda a: a.permute(0, 2, 1).reshape(n_win * T, R).numpy()  # (n, R, T) -> (n T, R)
    true, p, h = to_tr(x), to_tr(pred), to_tr(hidden)
    return Reconstruction(true, p, h, r2_per_region(true, p, h))


def reconstruct_recordings(
    model: nn.Module, recordings: Recordings, *, progress: bool = True, **kwargs
) -> tuple[pd.DataFrame, dict[str, Reconstruction]]:
    """Reconstruct every recording; returns a table of R^2 per (recording, region) and the results.

    Recordings shorter than one window are skipped (absent from both outputs).
    """
    check_regions(model, recordings.num_regions, recordings.source)
    T = kwargs.get("window") or model_window(model)
    rows, results = [], {}
    for meta, ts in tqdm(recordings, total=len(recordings), desc="reconstruct", disable=not progress):
        if len(ts) < T:
            continue
        rec = reconstruct_recording(model, ts, recordings.coords, **kwargs)
        results[meta["recording_id"]] = rec
        rows += [{**meta, "region": r, "r2": v} for r, v in enumerate(rec.r2)]
    if not results:
        raise UserError(f"no recording of {recordings.source} holds a window of {T} timepoints")
    return pd.DataFrame(rows), results


# ---------------------------------------------------------------------------------------------
# Forecasting
# ---------------------------------------------------------------------------------------------


def persistence_forecast(visible: np.ndarray, k: int) -> np.ndarray:
    """The last visible value repeated: ``(B, R, T - k)`` -> ``(B, R, k)``."""
    return np.repeat(visible[..., -1:], k, axis=-1)


def ar_forecast(visible: np.ndarray, k: int, order: int = 3) -> np.ndarray:
    """Per-series AR(order) with intercept, least squares on the visible part, iterated k steps.

    Args:
        visible: ``(..., V)`` series (each row its own model).
        k: steps ahead.
        order: AR order p (V must exceed 2 p).

    Returns:
        ``(..., k)``.
    """
    shape = visible.shape
    y = np.asarray(visible, np.float64).reshape(-1, shape[-1])  # (S, V)
    S, V = y.shape
    if V <= 2 * order:
        raise UserError(f"AR({order}) needs more than {2 * order} visible timepoints, got {V}")
    # Design: [y_{t-1}, ..., y_{t-p}, 1] -> y_t, for t = p .. V-1.
    lags = np.stack([y[:, order - i - 1 : V - i - 1] for i in range(order)], axis=-1)  # (S, V-p, p)
    design = np.concatenate([lags, np.ones((S, V - order, 1))], axis=-1)  # (S, V-p, p+1)
    target = y[:, order:]  # (S, V-p)
    gram = design.transpose(0, 2, 1) @ design + 1e-8 * np.eye(order + 1)  # (S, p+1, p+1)
    beta = np.linalg.solve(gram, (design.transpose(0, 2, 1) @ target[..., None]))[..., 0]  # (S, p+1)
    hist = list(y[:, -order:].T)  # most recent last
    out = []
    for _ in range(k):
        feats = np.stack(hist[::-1][:order], axis=-1)  # (S, p): y_{t-1}, ..., y_{t-p}
        nxt = (feats * beta[:, :order]).sum(-1) + beta[:, order]
        out.append(nxt)
        hist.append(nxt)
    return np.stack(out, axis=-1).reshape(*shape[:-1], k).astype(np.float32)


@torch.no_grad()
def forecast_windows(model: nn.Module, signal_vectors, xyz_vectors, k: int) -> np.ndarray:
    """The model's prediction of the last k timepoints of every region, given the rest.

    Args:
        model: ``BrainLMForPretraining``.
        signal_vectors: ``(B, R, T)``.
        xyz_vectors: ``(B, R, 3)`` or ``(R, 3)``.
        k: a positive multiple of W, smaller than T.

    Returns:
        ``(B, R, k)``.
    """
    if is_vitmae(model):
        raise UserError("forecasting needs a BrainLM model: ViT-MAE image patches do not align with the last timepoints")
    x = _as_tensor(signal_vectors)
    xyz = _as_tensor(xyz_vectors)
    if xyz.dim() == 2:
        xyz = xyz.expand(x.shape[0], -1, -1)
    B, R, T = x.shape
    Wp = model.config.timepoint_patching_size
    if k <= 0 or k % Wp or k >= T:
        raise UserError(f"k = {k} must be a positive multiple of the patch size W = {Wp} and smaller than the window T = {T}")
    P = T // Wp
    noise, ratio = forecast_noise(B, R, P, k // Wp)
    device = next(model.parameters()).device
    out = model(x.to(device), xyz.to(device), noise=noise.to(device), mask_ratio=ratio)
    expected = torch.zeros(B, R, P)
    expected[:, :, P - k // Wp :] = 1
    assert torch.equal(out.mask.cpu(), expected), "forecast mask is not the last k timepoints"
    return out.logits.float().cpu().reshape(B, R, T)[..., T - k :].numpy()


@dataclass
class ForecastResult:
    """Forecast metrics and the arrays they came from.

    Attributes:
        metrics: one row per method (``brainlm``, ``persistence``, ``mean``, ``ar``): ``mse`` over all
            forecast points and ``r2`` (per-region R^2 over the forecast points of all windows,
            averaged over regions).
        true, preds: ``(N, R, k)`` truth and ``{method: (N, R, k)}``.
        context: ``(N, R, T - k)`` the visible part.
        index: one row per window (recording and subject IDs, ``window_start``).
    """

    metrics: pd.DataFrame
    true: np.ndarray
    preds: dict[str, np.ndarray]
    context: np.ndarray
    index: pd.DataFrame


def _forecast_metrics(true: np.ndarray, pred: np.ndarray) -> dict:
    R = true.shape[1]
    t = true.transpose(0, 2, 1).reshape(-1, R)  # (N k, R)
    p = pred.transpose(0, 2, 1).reshape(-1, R)
    return {"mse": float(((true - pred) ** 2).mean()), "r2": float(np.nanmean(r2_per_region(t, p)))}


def forecast_recordings(
    model: nn.Module,
    recordings: Recordings,
    k: int,
    *,
    window: int | None = None,
    stride: int | None = None,
    ar_order: int = 3,
    batch_size: int = 16,
    progress: bool = True,
) -> ForecastResult:
    """Forecast the last k timepoints of sliding windows of every recording, with baselines."""
    from .embed import window_starts

    check_regions(model, recordings.num_regions, recordings.source)
    T = window or model_window(model)
    trues, preds, ctxs, rows = [], [], [], []
    for meta, ts in tqdm(recordings, total=len(recordings), desc="forecast", disable=not progress):
        starts = window_starts(len(ts), T, stride, "sliding")
        for s in range(0, len(starts), batch_size):
            x = np.stack([ts[t0 : t0 + T].T for t0 in starts[s : s + batch_size]])  # (b, R, T)
            preds.append(forecast_windows(model, x, recordings.coords, k))
            trues.append(x[..., T - k :])
            ctxs.append(x[..., : T - k])
            rows += [{**meta, "window_start": int(t0)} for t0 in starts[s : s + batch_size]]
    if not rows:
        raise UserError(f"no recording of {recordings.source} holds a window of {T} timepoints")
    true, ctx = np.concatenate(trues), np.concatenate(ctxs)
    methods = {
        "brainlm": np.concatenate(preds),
        "persistence": persistence_forecast(ctx, k),
        "mean": np.repeat(ctx.mean(-1, keepdims=True), k, axis=-1),
        "ar": ar_forecast(ctx, k, ar_order),
    }
    metrics = pd.DataFrame([{"method": m, **_forecast_metrics(true, p)} for m, p in methods.items()])
    metrics["k"] = k
    metrics["num_windows"] = len(true)
    return ForecastResult(metrics, true, methods, ctx, pd.DataFrame(rows))
