"""Figures written into the run folder (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from brainlm.figures import pyplot, save_figure

__all__ = ["plot_curves", "plot_reconstructions"]

_COLORS = {"model": "C0", "zero": "0.6", "mean": "C2", "interp": "C3", "conn": "C1"}


def plot_curves(records: list[dict[str, Any]], path: str | Path) -> Path:
    """Training loss, validation loss, and validation R^2 of the model next to the baselines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    train = [r for r in records if r.get("split") == "train"]
    val = [r for r in records if r.get("split") == "validation"]
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train", color="C0", lw=1)
    if val:
        ax.plot([r["step"] for r in val], [r["loss"] for r in val], "o-", label="validation", color="C1")
    ax.set(xlabel="step", ylabel="masked-patch loss", title="loss")
    ax.legend()
    for ax, metric, title in ((axes[1], "mse", "validation MSE (masked patches)"),
                              (axes[2], "r2", "validation R$^2$ (masked patches)")):
        for name in _COLORS:
            key = f"{name}_{metric}"
            pts = [(r["step"], r[key]) for r in val if key in r]
            if pts:
                style = "o-" if name == "model" else "--"
                ax.plot(*zip(*pts), style, label=name, color=_COLORS[name])
        ax.set(xlabel="step", title=title)
        ax.legend()
    return save_figure(fig, path, dpi=100)


def plot_reconstructions(examples: list[dict], path: str | Path, num_regions: int = 4) -> Path:
    """True vs reconstructed time courses of a few regions of a few windows; hidden spans shaded.

    Each example holds ``signal``, ``pred``, ``fill`` (the strongest baseline's) and ``mask``
    (True = hidden), each (R, T), as :func:`brainlm.evaluate.evaluate_reconstruction` returns them.
    """
    plt = pyplot()
    rows = max(1, len(examples))
    fig, axes = plt.subplots(rows, num_regions, figsize=(4 * num_regions, 2.4 * rows), squeeze=False)
    for i, ex in enumerate(examples):
        signal, mask = ex["signal"], ex["mask"].bool()
        R, T = signal.shape
        regions = torch.linspace(0, R - 1, num_regions).round().long().tolist()
        for j, r in enumerate(regions):
            ax = axes[i, j]
            for t in torch.nonzero(mask[r]).flatten().tolist():
                ax.axvspan(t - 0.5, t + 0.5, color="0.9", lw=0)
            ax.plot(signal[r].numpy(), color="k", lw=1, label="true")
            for key, color, style, label in (("pred", "C0", "-", "model"), ("fill", "C3", "--", ex.get("fill_name", "baseline"))):
                shown = ex[key][r].clone().float()
                shown[~mask[r]] = float("nan")
                ax.plot(shown.numpy(), color=color, lw=1.1, ls=style, label=label)
            ax.set_title(f"window {ex.get('index', i)}, region {r}", fontsize=8)
            ax.tick_params(labelsize=7)
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    fig.suptitle("validation windows: hidden spans shaded")
    return save_figure(fig, path, dpi=90)
