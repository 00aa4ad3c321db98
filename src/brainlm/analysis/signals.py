"""What the simple rivals of the analyses read from a recording: per-region signal statistics
and functional connectivity.

A region's **signal statistics** are its variance and its lag-1 autocorrelation over the
timepoints analysed (the amplitude and the slowness of its signal). **Connectivity** is the
Pearson correlation of two regions' time courses (:func:`brainlm.evaluate.baselines.connectivity_features`);
the **group connectivity** of several recordings is the mean of their correlations on Fisher's
z scale, turned back into a correlation, and a region's **FC profile** is its row of that
matrix, the region itself left out (0 on the diagonal).
"""

from __future__ import annotations

import numpy as np

from brainlm.evaluate.baselines import connectivity_features

__all__ = ["STATISTICS", "region_statistics", "correlation_matrix", "GroupConnectivity", "within_network_connectivity",
           "fc_profiles"]

STATISTICS = ("variance", "autocorrelation")
_MAX_R = 1 - 1e-7  # keeps Fisher's z finite on the diagonal and for identical regions


def region_statistics(timeseries: np.ndarray) -> np.ndarray:
    """``(T, R)`` -> ``(2, R)``: each region's variance and lag-1 autocorrelation (:data:`STATISTICS`)."""
    ts = np.asarray(timeseries, np.float64)
    return np.stack([ts.var(0), connectivity_features([ts], "autocorrelation")[0]])  # (2, R)


def correlation_matrix(timeseries: np.ndarray) -> np.ndarray:
    """``(T, R)`` -> ``(R, R)`` Pearson correlation (1 on the diagonal; 0 for a constant region)."""
    from nilearn.connectome import vec_to_sym_matrix

    ts = np.asarray(timeseries, np.float64)
    lower = connectivity_features([ts], "correlation")[0].astype(np.float64)  # (R (R - 1) / 2,)
    # vec_to_sym_matrix divides a given diagonal by sqrt(2) (its norm-keeping convention): set it after.
    corr = np.nan_to_num(vec_to_sym_matrix(lower, diagonal=np.zeros(ts.shape[1])))
    np.fill_diagonal(corr, 1.0)
    return corr


class GroupConnectivity:
    """The running group connectivity of recordings added one at a time (bounded memory)."""

    def __init__(self):
        self.total, self.count = None, 0

    def add(self, correlation: np.ndarray) -> None:
        z = np.arctanh(np.clip(correlation, -_MAX_R, _MAX_R))  # (R, R)
        self.total = z if self.total is None else self.total + z
        self.count += 1

    def matrix(self) -> np.ndarray:
        """``(R, R)`` mean correlation (Fisher z averaged), 1 on the diagonal."""
        if not self.count:
            raise ValueError("no recording was added to the group connectivity")
        corr = np.tanh(self.total / self.count)
        np.fill_diagonal(corr, 1.0)
        return corr


def within_network_connectivity(correlation: np.ndarray, codes: np.ndarray, num_networks: int) -> np.ndarray:
    """``(R, R)`` correlation -> ``(K,)``: the mean correlation between two regions of the same
    network (NaN for a network of one region)."""
    out = np.full(num_networks, np.nan)
    for k in range(num_networks):
        members = np.flatnonzero(codes == k)
        if len(members) > 1:
            block = correlation[np.ix_(members, members)]
            out[k] = (block.sum() - np.trace(block)) / (len(members) * (len(members) - 1))
    return out


def fc_profiles(group_correlation: np.ndarray) -> np.ndarray:
    """``(R, R)`` group correlation -> ``(R, R)`` FC profiles: Fisher z, 0 on the diagonal."""
    z = np.arctanh(np.clip(group_correlation, -_MAX_R, _MAX_R))
    np.fill_diagonal(z, 0.0)
    return z
