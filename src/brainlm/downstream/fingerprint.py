"""Subject identification ("fingerprinting") from one half of a recording to the other.

For each subject (its first recording), the timepoints are split into a first and a second
half. Features of each half: the mean embedding of the sliding windows inside it, or the
functional connectivity of the half (upper triangle of the region correlation matrix).
Each second-half feature vector is assigned the subject of the most correlated (Pearson)
first-half vector; accuracy is the fraction assigned correctly, chance is 1 / S.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from brainlm.errors import UserError

from .embed import embed_windows, window_starts
from .loading import (
    Recordings,
    check_regions,
    load_model,
    model_window,
    open_recordings,
)
from .probe import functional_connectivity

__all__ = ["identify", "fingerprint"]


def identify(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """For each row of ``second``, the row of ``first`` it correlates with most.

    Args:
        first, second: ``(S, F)`` one feature vector per subject, in the same subject order.

    Returns:
        ``(S,)`` index into ``first`` (accuracy: ``(identify(a, b) == arange(S)).mean()``).
    """
    a = np.asarray(first, np.float64).reshape(len(first), -1)
    b = np.asarray(second, np.float64).reshape(len(second), -1)
    a = (a - a.mean(1, keepdims=True)) / (a.std(1, keepdims=True) + 1e-12)
    b = (b - b.mean(1, keepdims=True)) / (b.std(1, keepdims=True) + 1e-12)
    corr = b @ a.T / a.shape[1]  # (S, S) second x first
    return corr.argmax(1)


def fingerprint(
    model_or_path,
    data,
    *,
    split: str | None = None,
    coords=None,
    pooling: str = "cls",
    keep_regions: bool = False,
    window: int | None = None,
    stride: int | None = None,
    batch_size: int = 32,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Subject identification accuracy of embeddings and of functional connectivity.

    Args:
        model_or_path: a model or anything ``load_model`` accepts.
        data: a store or time-series files; one recording per subject is used (the first).
        split: store split (None: all).
        pooling: embedding pooling.
        keep_regions: with ``region_time``, compare the flattened ``(R, D)`` region embeddings
            instead of their average over regions.
        window: timepoints per window (default: the model's); each half must hold one.
        stride: step of the sliding windows inside each half (default ``window // 2``).

    Returns:
        ``summary`` (one row per feature kind: ``accuracy``, ``chance``, ``num_subjects``) and
        ``matches`` (one row per subject and feature kind: ``subject_id``, ``identified_as``).

    Raises:
        ValueError: fewer than two subjects, or a half shorter than one window.
    """
    model = load_model(model_or_path) if isinstance(model_or_path, (str, os.PathLike)) else model_or_path
    model.eval()
    recs: Recordings = open_recordings(data, split, coords)
    check_regions(model, recs.num_regions, recs.source)
    window = window or model_window(model)
    stride = stride or max(1, window // 2)
    subjects, emb, fc = [], {0: [], 1: []}, {0: [], 1: []}
    seen = set()
    for meta, ts in recs:
        if meta["subject_id"] in seen:
            continue
        half = len(ts) // 2
        if half < window:
            raise UserError(f"{meta['recording_id']}: half of its {len(ts)} timepoints is shorter than a window of {window}; pass a smaller window")
        seen.add(meta["subject_id"])
        subjects.append(meta["subject_id"])
        for h, part in enumerate((ts[:half], ts[half : 2 * half])):
            wins = np.stack([part[t0 : t0 + window].T for t0 in window_starts(len(part), window, stride)])  # (n, R, T)
            e = np.concatenate([embed_windows(model, wins[s : s + batch_size], recs.coords, pooling, not keep_regions)
                                for s in range(0, len(wins), batch_size)])
            emb[h].append(e.mean(0))
            fc[h].append(functional_connectivity(part))
    if len(subjects) < 2:
        raise UserError("fingerprinting needs at least two subjects")
    S = len(subjects)
    summary, matches = [], []
    for kind, feats in (("brainlm", emb), ("fc", fc)):
        ident = identify(np.stack(feats[0]), np.stack(feats[1]))
        summary.append({"features": kind, "accuracy": float((ident == np.arange(S)).mean()), "chance": 1.0 / S,
                        "num_subjects": S, "window": window, "pooling": (pooling + ("_regions" if keep_regions and pooling == "region_time" else ""))
                        if kind == "brainlm" else "fc"})
        matches += [{"features": kind, "subject_id": s, "identified_as": subjects[i]} for s, i in zip(subjects, ident)]
    return pd.DataFrame(summary), pd.DataFrame(matches)
