"""Figures of the analyses: glass-brain maps drawn from region coordinates (nilearn's plotting;
nothing is downloaded), bars with intervals, and 2-D maps of embeddings.

Each function returns a matplotlib figure; :class:`brainlm.analysis.common.Report` saves it.
"""

from __future__ import annotations

import warnings

import numpy as np

from brainlm.figures import interval_errors, pyplot

__all__ = ["glass_brains", "network_brain", "interval_bars", "bar_figure", "network_colors"]


def network_colors(num: int) -> list:
    plt = pyplot()
    cmap = plt.get_cmap("tab10" if num <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(num)]


def glass_brains(maps: list[tuple[np.ndarray, str]], coords: np.ndarray, *, diverging: bool = False):
    """One row of glass-brain views (left, top, right) per map of region values.

    Args:
        maps: ``[(values (R,), title), ...]``.
        coords: ``(R, 3)`` region centres (MNI mm).
        diverging: a colour scale symmetric around 0 (differences).
    """
    from nilearn import plotting

    plt = pyplot()
    fig, axes = plt.subplots(len(maps), 1, figsize=(7, 2.3 * len(maps)), squeeze=False)
    for ax, (values, title) in zip(axes[:, 0], maps):
        values = np.nan_to_num(np.asarray(values, float))
        low, high = float(values.min()), float(values.max())
        if diverging:
            top = max(abs(low), abs(high), 1e-12)
            low, high, cmap = -top, top, "RdBu_r"
        else:
            cmap, high = "viridis", max(high, low + 1e-12)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plotting.plot_markers(values, coords, figure=fig, axes=ax, display_mode="lzr", title=title,
                                  node_size=22, node_cmap=cmap, node_vmin=low, node_vmax=high, colorbar=False,
                                  annotate=False)
        # Our own colour bar: nilearn's rounds its ticks to 2 digits and fails on a narrow range.
        bar = fig.colorbar(plt.cm.ScalarMappable(plt.Normalize(low, high), cmap), ax=ax, fraction=0.03, pad=0.01)
        bar.ax.tick_params(labelsize=7)
        bar.formatter.set_useOffset(True)
    return fig


def network_brain(codes_by_title: list[tuple[np.ndarray, str]], coords: np.ndarray, names: list[str]):
    """Regions coloured by network, one row per labelling (e.g. the given networks and a prediction)."""
    from nilearn import plotting

    plt = pyplot()
    colors = network_colors(len(names))
    fig, axes = plt.subplots(len(codes_by_title), 1, figsize=(7, 2.3 * len(codes_by_title) + 0.4), squeeze=False)
    for ax, (codes, title) in zip(axes[:, 0], codes_by_title):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plotting.plot_connectome(np.zeros((len(coords), len(coords))), coords, figure=fig, axes=ax,
                                     node_color=[colors[c] for c in codes], node_size=22, display_mode="lzr",
                                     title=title, colorbar=False, annotate=False)
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=n) for n, c in zip(names, colors)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(names), 5), fontsize=7, frameon=False)
    return fig


def interval_bars(ax, labels, series: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], *, ylabel: str = "",
                  reference: float | None = None, marks: dict[str, list[str]] | None = None) -> None:
    """Grouped bars with 95% intervals.

    Args:
        labels: one per group of bars (x axis).
        series: name -> (values, low, high), each ``(len(labels),)``.
        reference: a horizontal line (chance, no difference).
        marks: name -> a text per bar (e.g. ``*`` for q < 0.05), drawn above its interval.
    """
    x = np.arange(len(labels))
    width = 0.8 / max(len(series), 1)
    for i, (name, (v, lo, hi)) in enumerate(series.items()):
        v, lo, hi = (np.asarray(a, float) for a in (v, lo, hi))
        pos = x - 0.4 + width * (i + 0.5)
        ax.bar(pos, v, width, yerr=interval_errors(v, lo, hi), capsize=2, label=name, error_kw={"lw": 0.8})
        for j, text in enumerate((marks or {}).get(name, [])):
            if text:
                ax.text(pos[j], np.nanmax([hi[j], v[j]]), text, ha="center", va="bottom", fontsize=9)
    if reference is not None:
        ax.axhline(reference, color="0.4", lw=0.8, ls="--")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=9)
    if len(series) > 1:
        ax.legend(fontsize=7, frameon=False)


def bar_figure(labels, series: dict, *, ylabel: str, title: str, reference: float | None = None,
               marks: dict[str, list[str]] | None = None):
    """One panel of :func:`interval_bars`, sized to the number of bars."""
    fig, ax = pyplot().subplots(figsize=(min(9.0, max(4.0, 0.3 * len(labels) * max(len(series), 2) + 2)), 3))
    interval_bars(ax, labels, series, ylabel=ylabel, reference=reference, marks=marks)
    ax.set_title(title, fontsize=9)
    return fig
