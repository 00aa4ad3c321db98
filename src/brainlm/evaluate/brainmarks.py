"""Brainmarks' evaluation conventions: quantile target bins and the scores it reports.

Brainmarks datasets themselves are read by :mod:`brainlm.data.brainmarks`.
"""

from __future__ import annotations

import numpy as np

from .metrics import prediction_metric

__all__ = ["quantile_edges", "quantile_bins", "brainmarks_classification_metrics"]


def quantile_edges(y_ref, n_bins: int = 3, *, decimals: int | None = None) -> np.ndarray:
    """The ``n_bins - 1`` inner edges of equal-count bins of ``y_ref``.

    Edges are the ``k / n_bins`` quantiles (``k = 1 .. n_bins - 1``) of the finite values of
    ``y_ref``, linearly interpolated (numpy's default, as in ``pandas.qcut``). NaN values are
    ignored. ``decimals`` rounds the edges (Brainmarks' AABC and ADNI targets use 3).
    """
    if int(n_bins) != n_bins or n_bins < 2:
        raise ValueError(f"n_bins must be an integer >= 2, got {n_bins!r}")
    y_ref = np.asarray(y_ref, dtype=np.float64).ravel()
    y_ref = y_ref[np.isfinite(y_ref)]
    if y_ref.size == 0:
        raise ValueError("no finite values to compute quantile edges from")
    edges = np.quantile(y_ref, np.arange(1, int(n_bins)) / n_bins)
    return np.round(edges, decimals) if decimals is not None else edges


def quantile_bins(y_train, y, n_bins: int = 3, *, decimals: int | None = None) -> np.ndarray:
    """Class labels ``0 .. n_bins - 1`` of ``y`` in quantile bins whose edges come from ``y_train``.

    Bins are right-closed: label ``k`` means ``edge[k-1] < y <= edge[k]`` (see
    ``quantile_edges``), so a value equal to an edge goes to the lower bin, as in
    ``pandas.qcut`` and Brainmarks' ``np.digitize(..., right=True)``. Values below the first
    or above the last edge fall in the first or last bin (no value is dropped, whatever its
    range). With ``y = y_train`` and distinct edges the labels equal
    ``pandas.qcut(y_train, n_bins, labels=False)``. Tied edges (many equal values) leave
    some bins empty rather than failing. NaN in ``y`` gets label ``-1``.

    Brainmarks computes the edges once over the whole curated cohort, before its
    train/validation/test split; pass that cohort as ``y_train`` to reproduce its labels,
    or only the training values to keep test values out of the edges.

    Returns:
        int64 array shaped like ``y``.
    """
    edges = quantile_edges(y_train, n_bins, decimals=decimals)
    y = np.asarray(y, dtype=np.float64)
    labels = np.digitize(y, edges, right=True).astype(np.int64)
    labels[np.isnan(y)] = -1
    return labels


def brainmarks_classification_metrics(y_true, y_pred) -> dict[str, float]:
    """Brainmarks' scores of class predictions.

    Returns:
        ``{"accuracy", "macro_f1", "balanced_accuracy"}``: scikit-learn's
        ``accuracy_score``, ``f1_score(average="macro")`` (mean over the classes found in
        ``y_true`` or ``y_pred``, a class never predicted counting 0) and
        ``balanced_accuracy_score`` (Brainmarks' logistic probe reports it too and selects its
        regularisation with it).
    """
    y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels, y_pred {y_pred.size}")
    if y_true.size == 0:
        raise ValueError("no labels to score")
    return {name: prediction_metric("classification", name, y_true, y_pred)
            for name in ("accuracy", "macro_f1", "balanced_accuracy")}
