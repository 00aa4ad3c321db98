"""Figures: one way to get a headless pyplot, to draw an interval, and to save a figure atomically."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["pyplot", "save_figure", "interval_errors"]


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def interval_errors(value, low, high):
    """``yerr`` for bars with intervals: ``(2, N)`` distances below and above each value.

    A percentile bootstrap interval need not contain its point estimate (skewed resamples, few
    subjects) and may be NaN (no resamples): such a whisker is drawn with length 0 on that side
    instead of making matplotlib refuse the figure.
    """
    import numpy as np

    value, low, high = (np.asarray(v, dtype=float) for v in (value, low, high))
    return np.nan_to_num(np.vstack([value - low, high - value]).clip(min=0))


def save_figure(fig, path: str | os.PathLike, dpi: int = 100, tight: bool = True) -> Path:
    """Save ``fig`` as PNG under a temporary name, rename it into place, and close it."""
    from brainlm.io import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    finally:
        pyplot().close(fig)
    return path
