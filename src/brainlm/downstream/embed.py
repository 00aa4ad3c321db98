"""Embeddings of recording windows from a trained encoder, with masking off.

Dimension letters: B windows in a batch, R regions, T timepoints per window, P = T / W
patches per region, L = R * P tokens, D hidden size, N windows in total.

Poolings (``pooling=``):

- ``"cls"``: the CLS token, ``(N, D)``.
- ``"mean"``: the mean of the L patch tokens (CLS excluded), ``(N, D)``.
- ``"region_time"``: the tokens reshaped to ``(R, P, D)`` (region-major order, which holds with
  masking off and no noise) and averaged over time, ``(N, R, D)``; with
  ``average_regions=True`` also over regions, ``(N, D)``. For the released ViT-MAE models,
  whose tokens are image patches, a region's vector is the mean of the tokens of the patches
  that hold it, weighted by its pixels in each (:mod:`brainlm.vitmae`).
- ``"tokens"``: every patch token, ``(N, L, D)`` (BrainLM: region-major; ViT-MAE: the image
  patches in row-major order): the input of the attentive and MLP probe heads
  (:mod:`brainlm.downstream.heads`).

Windows of a recording (``windows=``): ``"first"`` the window at timepoint 0; ``"sliding"``
every window at ``0, stride, 2 * stride, ...``; ``"average"`` the mean of the sliding windows'
embeddings, one row per recording (``window = -1``).

CLS attention (``attention=True``): the last encoder layer's attention of the CLS query over
the L patch tokens, averaged over heads and renormalised after dropping the CLS token's
attention to itself, summed over each region's patches: ``(N, R)``, each row sums to 1.
ViT-MAE models give each patch's attention to its regions in proportion to their pixels in it
(:mod:`brainlm.vitmae`).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import torch
from torch import nn

from brainlm.distributed import (
    autocast_context,
    gather_in_order,
    init_distributed,
    rank_share,
    resolve_device,
    resolve_precision,
)
from brainlm.errors import UserError
from brainlm.io import INDEX_COLUMNS, Embeddings
from brainlm.progress import progress as progress_bar

from .loading import Recordings, _as_tensor, check_finite, check_regions, load_model, open_recordings

__all__ = ["POOLINGS", "WINDOW_MODES", "embed_windows", "cls_attention", "window_starts", "embed_recordings", "embed"]

POOLINGS = ("cls", "mean", "region_time", "tokens")
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
    dtype: torch.dtype = torch.float32,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Embed a batch of windows with masking off (``model.embed``, either model kind).

    Args:
        model: a loaded model.
        signal_vectors: ``(B, R, T)`` windows (array or tensor).
        xyz_vectors: ``(B, R, 3)`` or ``(R, 3)`` coordinates.
        pooling: ``"cls"``, ``"mean"`` or ``"region_time"`` (module docstring).
        average_regions: with ``region_time``, also average over regions.
        attention: also return CLS attention per region, ``(B, R)``.
        dtype: compute precision (autocast); outputs are float32.

    Returns:
        ``(B, D)`` or ``(B, R, D)`` float32 embeddings; with ``attention``, ``(emb, attn)``.
    """
    if pooling not in POOLINGS:
        raise UserError(f"--pooling must be one of {POOLINGS}, got {pooling!r}")
    x, xyz = _as_batch(signal_vectors, xyz_vectors)
    device = next(model.parameters()).device
    with autocast_context(device, dtype):
        out = model.embed(x.to(device), xyz.to(device), pooling=pooling, average_regions=average_regions,
                          output_attentions=attention)
    check_finite(model, out.embeddings, "embeddings")
    emb = out.embeddings.float().cpu().numpy()
    return (emb, out.cls_attention.float().cpu().numpy()) if attention else emb


@torch.no_grad()
def cls_attention(model: nn.Module, signal_vectors, xyz_vectors, layer: int | None = -1) -> np.ndarray:
    """CLS attention per region and patch in one encoder layer (None: the mean over layers), averaged over heads.

    Returns:
        ``(B, R, P)``; each window's map sums to 1 (the CLS token's attention to itself is
        dropped and the rest renormalised; ViT-MAE: ``P`` are the window's patch columns).
    """
    x, xyz = _as_batch(signal_vectors, xyz_vectors)
    device = next(model.parameters()).device
    return model.cls_attention(x.to(device), xyz.to(device), layer).cpu().numpy()  # (B, R, P)


def recording_windows(timeseries: np.ndarray, window: int) -> np.ndarray:
    """Every whole window of a ``(T, R)`` recording, back to back: ``(n, R, window)`` (n may be 0)."""
    n = len(timeseries) // window
    return np.ascontiguousarray(timeseries[: n * window].reshape(n, window, -1).transpose(0, 2, 1))  # (n, R, W)


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
    precision: str = "fp32",
    progress: bool = True,
) -> Embeddings | None:
    """Embed every recording of ``recordings`` window by window (batched across recordings).

    Under ``torchrun`` each process embeds every world-size-th recording and rank 0 returns
    the whole table, in recording order, as one process would (other ranks return None).

    Args:
        model: a loaded model (on the device to use).
        recordings: from :func:`open_recordings`.
        pooling, average_regions: see :func:`embed_windows`.
        windows: ``"first"``, ``"sliding"`` or ``"average"``.
        window: timepoints per window (default: the model's training window).
        stride: step of sliding windows (default: ``window``).
        batch_size: windows per forward pass.
        attention: also compute CLS attention per region.
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"`` (:func:`brainlm.distributed.resolve_precision`).
        progress: show a progress bar.

    Returns:
        ``Embeddings``; recordings shorter than ``window`` are listed in ``skipped``.
    """
    check_regions(model, recordings.num_regions, recordings.source)
    window = window or model.window_length
    if windows not in WINDOW_MODES:
        raise UserError(f"--windows must be one of {WINDOW_MODES}, got {windows!r}")
    dtype = resolve_precision(precision, next(model.parameters()).device)
    mine = rank_share(len(recordings))
    embed_batch = lambda b: embed_windows(model, b, recordings.coords, pooling, average_regions, attention, dtype)
    starts_of, done = _embed_in_batches(recordings, mine, embed_batch, window, stride, windows, batch_size, attention,
                                        progress)
    local = [(i, _recording_rows(recordings.meta[i], starts_of[i], done[i], windows)) for i in mine]
    gathered = gather_in_order(local)
    if gathered is None:
        return None
    return _assemble(gathered, recordings, window, pooling, attention)


def _embed_in_batches(recordings: Recordings, mine: list[int], embed_batch, window: int, stride: int | None,
                      windows: str, batch_size: int, attention: bool, progress: bool) -> tuple[dict, dict]:
    """Every window of this process's recordings through ``embed_batch``, ``batch_size`` at a time
    across recordings: the window starts of each recording and its outputs ``(embedding, attention)``."""
    batch: list[np.ndarray] = []
    owners: list[int] = []  # the recording of each queued window
    done: dict[int, list] = {i: [] for i in mine}

    def flush() -> None:
        if batch:
            res = embed_batch(np.stack(batch))
            e, a = res if attention else (res, None)
            for j, i in enumerate(owners):
                done[i].append((e[j], None if a is None else a[j]))
            batch.clear()
            owners.clear()

    starts_of: dict[int, np.ndarray] = {}
    for i in progress_bar(mine, enabled=progress, desc="embed", unit="rec"):
        ts = recordings.load(i)
        starts_of[i] = window_starts(len(ts), window, stride, windows)
        for t0 in starts_of[i]:
            batch.append(ts[t0 : t0 + window].T)  # (R, T)
            owners.append(i)
            if len(batch) >= batch_size:
                flush()
    flush()
    return starts_of, done


def _recording_rows(meta: dict, starts: np.ndarray, outputs: list, windows: str):
    """Index rows and vectors of one recording (one averaged row with ``windows="average"``)."""
    if len(starts) == 0:
        return meta["recording_id"], [], None, None
    X = np.stack([e for e, _ in outputs])
    A = np.stack([a for _, a in outputs]) if outputs[0][1] is not None else None
    if windows == "average":
        return meta["recording_id"], [{**meta, "window": -1, "window_start": -1}], X.mean(0, keepdims=True), (
            None if A is None else A.mean(0, keepdims=True))
    rows = [{**meta, "window": w, "window_start": int(t0)} for w, t0 in enumerate(starts)]
    return meta["recording_id"], rows, X, A


def _assemble(per_recording: list, recordings: Recordings, window: int, pooling: str, attention: bool) -> Embeddings:
    rows = [row for _, r, _, _ in per_recording for row in r]
    if not rows:
        raise UserError(f"no recording of {recordings.source} holds a window of {window} timepoints (--window)")
    X = np.concatenate([x for _, r, x, _ in per_recording if r]).astype(np.float32)
    A = np.concatenate([a for _, r, _, a in per_recording if r]) if attention else None
    skipped = [rid for rid, r, _, _ in per_recording if not r]
    return Embeddings(X, pd.DataFrame(rows)[INDEX_COLUMNS], A, pooling, skipped)


def embed(
    model_or_path,
    data,
    *,
    split: str | None = None,
    coords=None,
    device: str = "cpu",
    trust_unverified: bool = False,
    **kwargs,
) -> Embeddings | None:
    """Load a model (if given a path) and embed a store or files; see :func:`embed_recordings`.

    Args:
        model_or_path: a model, or anything :func:`load_model` accepts.
        data: a store (path or ``Store``) or time-series files.
        split: store split, None for all.
        coords: coordinates for files.
        device: where a loaded model runs (``"auto"``: this process's GPU under torchrun, if any).
        trust_unverified: as :func:`load_model`.
        **kwargs: passed to :func:`embed_recordings`.
    """
    model = model_or_path
    if isinstance(model_or_path, (str, os.PathLike)):
        model = load_model(model_or_path, map_location=resolve_device(device, init_distributed().local_rank),
                           trust_unverified=trust_unverified)
    return embed_recordings(model.eval(), open_recordings(data, split, coords), **kwargs)
