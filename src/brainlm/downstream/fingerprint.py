"""Subject identification ("fingerprinting") from one half of a recording to the other.

For each subject (its first recording), the timepoints are split into a first and a second
half. Features of each half: the mean BrainLM embedding of the sliding windows inside it, and
the connectivity ladder of :mod:`brainlm.evaluate.baselines` computed on the same half:
Pearson FC, partial-correlation FC and tangent-space FC (nilearn's ``ConnectivityMeasure``;
the tangent reference is the mean over all halves and uses no identities), and each region's
lag-1 autocorrelation. Model-derived connectivity on the same terms as FC
(``pooling="connectivity"``): the Pearson correlation between regions of their region-time
embeddings over every sliding window of the half and every embedding dimension, an ``R x R``
matrix per half like FC's (its upper triangle is the feature vector). Each
second-half vector is assigned the subject of the most correlated (Pearson) first-half
vector; accuracy is the fraction assigned correctly, chance is 1 / S.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd

from brainlm.distributed import resolve_precision
from brainlm.errors import UserError
from brainlm.evaluate.baselines import (
    BASELINE_LABELS,
    CONNECTIVITY_FEATURES,
    connectivity_features,
)

from .embed import embed_windows, window_starts
from .loading import Recordings, check_regions, load_model, open_recordings

log = logging.getLogger(__name__)

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


def _halves(recs: Recordings, window: int, on_error: str = "raise") -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """Subjects (first usable recording each) and the two halves of their recordings; a recording
    too short for a window in each half is skipped (``on_error="skip"``) or the end of the command."""
    subjects, first, second = [], [], []
    for meta, ts in recs:
        if meta["subject_id"] in subjects:
            continue
        half = len(ts) // 2
        if half < window:
            reason = (f"{meta['recording_id']}: half of its {len(ts)} timepoints is shorter than a window of "
                      f"{window}; pass a smaller --window")
            if on_error != "skip":
                raise UserError(reason)
            log.warning("skipped: %s", reason)
            continue
        subjects.append(meta["subject_id"])
        first.append(ts[:half])
        second.append(ts[half : 2 * half])
    if len(subjects) < 2:
        raise UserError(f"fingerprinting needs at least two subjects with two windows of {window} timepoints "
                        f"(one in each half of a recording); {len(subjects)} in {recs.source}")
    return subjects, first, second


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
    connectivity: tuple[str, ...] = tuple(CONNECTIVITY_FEATURES),
    precision: str = "fp32",
    on_error: str = "raise",
    trust_unverified: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Subject identification accuracy of embeddings and of the connectivity ladder.

    Args:
        model_or_path: a model or anything ``load_model`` accepts.
        data: a store or time-series files; one recording per subject is used (the first).
        split: store split (None: all).
        pooling: embedding pooling (``cls``, ``mean``, ``region_time``), or ``connectivity``
            for the correlation between regions of their region-time embeddings.
        keep_regions: with ``region_time``, compare the flattened ``(R, D)`` region embeddings
            instead of their average over regions.
        window: timepoints per window (default: the model's); each half must hold one.
        stride: step of the sliding windows inside each half (default ``window // 2``).
        connectivity: feature baselines to compare with (``fc``, ``fc_partial``, ``fc_tangent``, ``autocorr``).
        precision: compute precision of the embeddings (``auto``, ``fp32``, ``bf16``, ``fp16``).
        on_error: ``"skip"`` a recording too short for a window in each half (logged), or ``"raise"``.
        trust_unverified: as :func:`load_model`.

    Returns:
        ``summary`` (one row per feature kind: ``features``, ``label``, ``accuracy``,
        ``chance``, ``num_subjects``) and ``matches`` (one row per subject and feature kind).
    """
    model = (load_model(model_or_path, trust_unverified=trust_unverified)
             if isinstance(model_or_path, (str, os.PathLike)) else model_or_path)
    model.eval()
    recs = open_recordings(data, split, coords)
    check_regions(model, recs.num_regions, recs.source)
    window = window or model.window_length
    stride = stride or max(1, window // 2)
    subjects, first, second = _halves(recs, window, on_error)
    dtype = resolve_precision(precision, next(model.parameters()).device)
    if pooling not in ("cls", "mean", "region_time", "connectivity"):
        raise UserError(f"--pooling must be cls, mean, region_time or connectivity, got {pooling!r}")
    name = pooling + ("_regions" if keep_regions and pooling == "region_time" else "")
    feats = {"brainlm": tuple(np.stack([_embed_half(model, part, recs.coords, pooling, keep_regions, window, stride,
                                                    batch_size, dtype) for part in parts]) for parts in (first, second))}
    for kind in connectivity:
        both = connectivity_features(first + second, kind)  # one reference (tangent) for all halves
        feats[kind] = (both[: len(first)], both[len(first):])
    S = len(subjects)
    summary, matches = [], []
    for kind, (a, b) in feats.items():
        ident = identify(a, b)
        summary.append({"features": kind, "label": f"BrainLM ({name})" if kind == "brainlm" else BASELINE_LABELS[kind],
                        "accuracy": float((ident == np.arange(S)).mean()), "chance": 1.0 / S, "num_subjects": S,
                        "window": window, "pooling": name if kind == "brainlm" else kind})
        matches += [{"features": kind, "subject_id": s, "identified_as": subjects[i]} for s, i in zip(subjects, ident)]
    return pd.DataFrame(summary), pd.DataFrame(matches)


def _embed_half(model, part: np.ndarray, coords, pooling, keep_regions, window, stride, batch_size, dtype) -> np.ndarray:
    wins = np.stack([part[t0 : t0 + window].T for t0 in window_starts(len(part), window, stride)])  # (n, R, T)
    connectivity = pooling == "connectivity"
    if connectivity:
        pooling, keep_regions = "region_time", True
    e = np.concatenate([embed_windows(model, wins[s : s + batch_size], coords, pooling, not keep_regions, dtype=dtype)
                        for s in range(0, len(wins), batch_size)])
    if not connectivity:
        return e.mean(0)
    regions = e.transpose(1, 0, 2).reshape(e.shape[1], -1)  # (R, windows * D)
    corr = np.corrcoef(regions)
    return corr[np.triu_indices(len(corr), 1)]
