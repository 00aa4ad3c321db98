"""Figures for reconstruction, forecasting and fingerprinting (matplotlib, Agg backend)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from brainlm.figures import pyplot, save_figure

__all__ = ["plot_reconstruction", "plot_forecast", "plot_fingerprint"]


def _figure(*args, **kwargs):
    plt = pyplot()
    return plt, plt.subplots(*args, **kwargs)


def _save(fig, plt, path) -> Path:
    return save_figure(fig, path, dpi=90)


def plot_reconstruction(rec, path: str | os.PathLike, regions=None, region_names=None, tr: float | None = None,
                        title: str = "") -> Path:
    """True vs reconstructed time courses of a few regions (``rec``: a ``Reconstruction``), with
    the connectivity-conditional fill of the same hidden values when it was computed.

    Default regions: the best, median and worst R^2.
    """
    if regions is None:
        order = np.argsort(np.nan_to_num(rec.r2, nan=-np.inf))
        regions = [order[-1], order[len(order) // 2], order[0]]
    plt, (fig, axes) = _figure(len(regions), 1, figsize=(9, 1.9 * len(regions)), sharex=True, squeeze=False)
    t = np.arange(len(rec.true)) * (tr or 1.0)
    for ax, r in zip(axes[:, 0], regions):
        ax.plot(t, rec.true[:, r], color="0.3", lw=0.9, label="true")
        ax.plot(t, rec.pred[:, r], color="tab:red", lw=0.9, label="BrainLM (hidden)")
        if "conn" in rec.baselines:
            ax.plot(t, rec.baselines["conn"][:, r], color="tab:blue", lw=0.8, ls="--", label="connectivity fill")
        name = region_names[r] if region_names else f"region {r}"
        ax.set_title(f"{name}: R$^2$ = {rec.r2[r]:.2f}", fontsize=9, loc="left")
    axes[0, 0].legend(fontsize=8, loc="upper right")
    axes[-1, 0].set_xlabel("time (s)" if tr else "timepoint")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, plt, path)


def plot_forecast(result, path: str | os.PathLike, window_index: int = 0, regions=(0, 1, 2), region_names=None,
                  title: str = "") -> Path:
    """One window's context and the k forecast timepoints: truth, model, persistence, AR."""
    ctx, true = result.context[window_index], result.true[window_index]  # (R, V), (R, k)
    V, k = ctx.shape[1], true.shape[1]
    plt, (fig, axes) = _figure(len(regions), 1, figsize=(8, 1.9 * len(regions)), sharex=True, squeeze=False)
    styles = {"brainlm": ("tab:red", "-"), "persistence": ("tab:green", ":"), "mean": ("tab:orange", "-."),
              "ar": ("tab:blue", "--")}
    for ax, r in zip(axes[:, 0], regions):
        ax.plot(np.arange(V), ctx[r], color="0.3", lw=0.9, label="visible")
        ax.plot(np.arange(V, V + k), true[r], color="0.3", lw=0.9, alpha=0.5, label="hidden truth")
        for name, pred in result.preds.items():
            c, ls = styles.get(name, ("k", "-"))
            ax.plot(np.arange(V, V + k), pred[window_index, r], color=c, ls=ls, lw=1.2, label=name)
        ax.axvline(V - 0.5, color="0.6", lw=0.8)
        ax.set_title(region_names[r] if region_names else f"region {r}", fontsize=9, loc="left")
    axes[0, 0].legend(fontsize=7, ncol=6, loc="lower left", bbox_to_anchor=(0, 1.12), frameon=False)
    axes[-1, 0].set_xlabel("timepoint in window")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, plt, path)


def plot_fingerprint(summary: pd.DataFrame, path: str | os.PathLike, title: str = "Subject identification") -> Path:
    """Bar chart of identification accuracy per feature kind, with the chance level."""
    plt, (fig, ax) = _figure(figsize=(1.3 * len(summary) + 1.5, 3.4))
    colors = ["tab:blue" if f.lower() == "fc" else "tab:red" for f in summary["features"]]
    ax.bar([f.replace(" ", "\n", 1) for f in summary["features"]], summary["accuracy"], color=colors)
    ax.axhline(float(summary["chance"].iloc[0]), color="k", ls="--", lw=1, label=f"chance (1/{int(summary['num_subjects'].iloc[0])})")
    for i, a in enumerate(summary["accuracy"]):
        ax.text(i, a + 0.02, f"{a:.2f}", ha="center", fontsize=9)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, plt, path)
