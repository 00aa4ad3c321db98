"""Embeddings of recording windows from a trained encoder, with masking off.

Dimension letters: B windows in a batch, R regions, T timepoints per window, P = T / W
patches per region, L = R * P tokens, D hidden size, N windows in total.

Poolings (``pooling=``):

- ``"cls"``: the CLS token, ``(N, D)``.
- ``"mean"``: the mean of the L patch tokens (CLS excluded), ``(N, D)``.
- ``"region_time"``: the tokens reshaped to ``(R, P, D)`` (region-major order, which holds with
  masking off and no noise) and averaged over time, ``(N, R, D)``; with
  ``average_regions=True`` also over regions, ``(N, D)``. Not available for the released
  ViT-MAE models, whose tokens are image patches.

Windows of a recording (``windows=``): ``"first"`` the window at timepoint 0; ``"sliding"``
every window at ``0, stride, 2 * stride, ...``; ``"average"`` the mean of the sliding windows'
embeddings, one row per recording (``window = -1``).

CLS attention (``attention=True``): the last encoder layer's attention of the CLS query over
the L patch tokens, averaged over heads and renormalised after dropping the CLS token's
attention to itself, summed over each region's patches: ``(N, R)``, each row sums to 1.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from brainlm.errors import UserError
from brainlm.io import INDEX_COLUMNS, Embeddings

from .loading import (
    Recordings,
    _as_tensor,
    check_regions,
    is_vitmae,
    load_model,
    model_window,
    open_recordings,
)

__all__ = ["POOLINGS", "WINDOW_MODES", "embed_windows", "cls_attention", "window_starts", "embed_recordings", "embed"]

POOLINGS = ("cls", "mean", "region_time")
WINDOW_MODES = ("first", "sliding", "average")


def _as_batch(signal_vectors, xyz_vectors) -> tuple[torch.Tensor, torch.Tensor]:
    x = _as_tensor(signal_vectors)
    xyz = _as_tensor(xyz_vectors)
    if x.dim() != 3:
        raise UserError(f"signal_vectors must be (B, R, T), got shape {tuple(x.shape)}")
    if xyz.dim() == 2:
        xyz = xyz.expand(x.shape[0], -1, -1)  # (B, R, 3)
    return x, xyz


@torch.no_grad()
def embed_windows(
    model: nn.Module,
    signal_vectors,
    xyz_vectors,
    pooling: str = "cls",
    average_regions: bool = False,
    attention: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Embed a batch of windows with masking off.

    Args:
        model: ``BrainLMForPretraining`` or ``BrainLMViTMAE``.
        signal_vectors: ``(B, R, T)`` windows (array or tensor).
        xyz_vectors: ``(B, R, 3)`` or ``(R, 3)`` coordinates.
        pooling: ``"cls"``, ``"mean"`` or ``"region_time"`` (module docstring).
        average_regions: with ``region_time``, also average over regions.
        attention: also return CLS attention per region, ``(B, R)``.

    Returns:
        ``(B, D)`` or ``(B, R, D)`` float32 embeddings; with ``attention``, ``(emb, attn)``.
    """
    if pooling not in POOLINGS:
        raise UserError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    x, xyz = _as_batch(signal_vectors, xyz_vectors)
    device = next(model.parameters()).device
    x, xyz = x.to(device), xyz.to(device)
    if is_vitmae(model):
        if pooling == "region_time":
            raise UserError("region_time pooling is not applicable to ViT-MAE models (their tokens are image patches); use 'cls' or 'mean'")
        if attention:
            raise UserError("CLS attention maps are only available for BrainLM models, not ViT-MAE")
        return model.embed(x, pooling=pooling).float().cpu().numpy()
    # Embeddings need the encoder only: masking off, no noise -> region-major tokens.
    hidden, _, _, _, cls_attentions = model.forward_encoder(x, xyz, mask_ratio=0.0, output_cls_attentions=attention)
    # hidden: (B, 1 + L, D)
    B, R, T = x.shape
    P = T // model.config.timepoint_patching_size
    if pooling == "cls":
        emb = hidden[:, 0]  # (B, D)
    elif pooling == "mean":
        emb = hidden[:, 1:].mean(1)  # (B, D)
    else:
        tokens = hidden[:, 1:].reshape(B, R, P, -1)  # (B, R, P, D)
        emb = tokens.mean(2)  # (B, R, D)
        if average_regions:
            emb = emb.mean(1)  # (B, D)
    emb = emb.float().cpu().numpy()
    if not attention:
        return emb
    return emb, _token_attention(cls_attentions[-1], R, P).sum(-1).cpu().numpy()  # (B, R)


def _token_attention(cls_attn: torch.Tensor, R: int, P: int) -> torch.Tensor:
    """(B, H, 1 + L) CLS attention of one layer -> (B, R, P), head mean, renormalised over tokens."""
    a = cls_attn.float().mean(1)[:, 1:]  # (B, L) drop the CLS token's attention to itself
    a = a / a.sum(-1, keepdim=True)
    return a.view(-1, R, P)  # (B, R, P)


@torch.no_grad()
def cls_attention(model: nn.Module, signal_vectors, xyz_vectors, layer: int = -1) -> np.ndarray:
    """CLS attention over patch tokens in one encoder layer, averaged over heads.

    Returns:
        ``(B, R, P)``; each window's map sums to 1 over its R * P tokens (the CLS token's
        attention to itself is dropped and the rest renormalised).
    """
    if is_vitmae(model):
        raise UserError("CLS attention maps are only available for BrainLM models, not ViT-MAE")
    x, xyz = _as_batch(signal_vectors, xyz_vectors)
    device = next(model.parameters()).device
    *_, cls_attentions = model.forward_encoder(x.to(device), xyz.to(device), mask_ratio=0.0, output_cls_attentions=True)
    B, R, T = x.shape
    P = T // model.config.timepoint_patching_size
    return _token_attention(cls_attentions[layer], R, P).cpu().numpy()  # (B, R, P)


def window_starts(num_timepoints: int, window: int, stride: int | None = None, mode: str = "sliding") -> np.ndarray:
    """Start timepoints of the windows of one recording (``first``: only 0)."""
    if mode not in WINDOW_MODES:
        raise UserError(f"windows must be one of {WINDOW_MODES}, got {mode!r}")
    if num_timepoints < window:
        return np.zeros(0, dtype=np.int64)
    if mode == "first":
        return np.zeros(1, dtype=np.int64)
    return np.arange(0, num_timepoints - window + 1, stride or window, dtype=np.int64)


def embed_recordings(
    model: nn.Module,
    recordings: Recordings,
    *,
    pooling: str = "cls",
    average_regions: bool = False,
    windows: str = "average",
    window: int | None = None,
    stride: int | None = None,
    batch_size: int = 32,
    attention: bool = False,
    progress: bool = True,
) -> Embeddings:
    """Embed every recording of ``recordings`` window by window (batched across recordings).

    Args:
        model: a loaded model.
        recordings: from :func:`open_recordings`.
        pooling, average_regions: see :func:`embed_windows`.
        windows: ``"first"``, ``"sliding"`` or ``"average"``.
        window: timepoints per window (default: the model's training window).
        stride: step of sliding windows (default: ``window``).
        batch_size: windows per forward pass.
        attention: also compute CLS attention per region.
        progress: show a progress bar.

    Returns:
        ``Embeddings``; recordings shorter than ``window`` are listed in ``skipped``.
    """
    check_regions(model, recordings.num_regions, recordings.source)
    window = window or model_window(model)
    if windows not in WINDOW_MODES:
        raise UserError(f"windows must be one of {WINDOW_MODES}, got {windows!r}")
    rows, embs, attns, skipped = [], [], [], []
    batch, batch_rows = [], []

    def flush():
        if not batch:
            return
        res = embed_windows(model, np.stack(batch), recordings.coords, pooling, average_regions, attention)
        e, a = res if attention else (res, None)
        embs.append(e)
        if a is not None:
            attns.append(a)
        rows.extend(batch_rows)
        batch.clear()
        batch_rows.clear()

    for meta, ts in tqdm(recordings, total=len(recordings), desc="embed", disable=not progress):
        starts = window_starts(len(ts), window, stride, windows)
        if len(starts) == 0:
            skipped.append(meta["recording_id"])
            continue
        for w, t0 in enumerate(starts):
            batch.append(ts[t0 : t0 + window].T)  # (R, T)
            batch_rows.append({**meta, "window": w, "window_start": int(t0)})
            if len(batch) >= batch_size:
                flush()
    flush()
    if not rows:
        raise UserError(f"no recording of {recordings.source} holds a window of {window} timepoints")
    X = np.concatenate(embs)
    A = np.concatenate(attns) if attention else None
    index = pd.DataFrame(rows)[INDEX_COLUMNS]
    if windows == "average":
        keys = index["recording_id"].to_numpy()
        order = list(dict.fromkeys(keys))
        pos = [np.flatnonzero(keys == k) for k in order]
        X = np.stack([X[p].mean(0) for p in pos])
        A = np.stack([A[p].mean(0) for p in pos]) if A is not None else None
        index = index.iloc[[p[0] for p in pos]].reset_index(drop=True)
        index["window"] = -1
        index["window_start"] = -1
    return Embeddings(X.astype(np.float32), index.reset_index(drop=True), A, pooling, skipped)


def embed(
    model_or_path,
    data,
    *,
    split: str | None = None,
    coords=None,
    **kwargs,
) -> Embeddings:
    """Load a model (if given a path) and embed a store or files; see :func:`embed_recordings`.

    Args:
        model_or_path: a model, or anything :func:`load_model` accepts.
        data: a store (path or ``Store``) or time-series files.
        split: store split, None for all.
        coords: coordinates for files.
        **kwargs: passed to :func:`embed_recordings`.
    """
    model = load_model(model_or_path) if isinstance(model_or_path, (str, os.PathLike)) else model_or_path
    return embed_recordings(model.eval(), open_recordings(data, split, coords), **kwargs)
