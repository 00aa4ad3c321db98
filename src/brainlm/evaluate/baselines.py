"""The baseline ladder: the simple methods every model number is read against.

Connectivity often beats foundation models on fMRI, so every number the package reports
for a model stands next to the strongest of these, computed on the same windows, masks,
splits and formula (:mod:`brainlm.evaluate.metrics`). Whatever a baseline learns, it learns
from the **training split only**.

Masked reconstruction (:class:`ReconstructionBaselines`; windows ``(B, R, T)``, ``mask`` of the
same shape, True = hidden):

``zero``      predict 0 (the mean of normalised data).
``mean``      each region's mean over its visible timepoints in the window.
``interp``    per region, linear interpolation in time between the nearest visible timepoints
              before and after; flat where only one side exists; 0 where none does.
``conn``      the connectivity-conditional fill: at each timepoint, the masked regions from the
              visible ones through the training split's region covariance, shrunk 10% towards
              its diagonal: ``x_M = mu_M + S[M, V] S[V, V]^-1 (x_V - mu_V)``, the best linear
              predictor of a Gaussian with that covariance. (Ledoit-Wolf shrinkage towards the
              identity was measured too and is weaker on the demo data; a spatio-temporal
              version conditioning on +-1 neighbouring timepoints added less than 0.01 R^2.)

Forecasting the last k timepoints of a window (:class:`ForecastBaselines`; context ``(B, R, V)``):

``persistence``  the last visible value repeated.
``mean``         each region's mean over the context.
``ar``           per region, an AR(p) with intercept fitted by least squares on the training
                 split, iterated k steps.
``var``          a ridge VAR(p) across all regions fitted on the training split, iterated k steps.

Fingerprinting and probes use connectivity features (:func:`connectivity_features`): Pearson
correlation, partial correlation and tangent-space connectivity (nilearn's
``ConnectivityMeasure``), and beside them each region's lag-1 autocorrelation, the temporal
structure connectivity leaves out.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "RECONSTRUCTION_BASELINES",
    "FORECAST_BASELINES",
    "CONNECTIVITY_KINDS",
    "CONNECTIVITY_FEATURES",
    "ReconstructionBaselines",
    "ForecastBaselines",
    "RowSample",
    "connectivity_features",
    "BASELINE_LABELS",
]

RECONSTRUCTION_BASELINES = ("zero", "mean", "interp", "conn")
FORECAST_BASELINES = ("persistence", "mean", "ar", "var")
CONNECTIVITY_KINDS = ("correlation", "partial correlation", "tangent", "autocorrelation")
# Feature names in reports -> nilearn's kind (autocorrelation: ours, per region).
CONNECTIVITY_FEATURES = {"fc": "correlation", "fc_partial": "partial correlation", "fc_tangent": "tangent",
                         "autocorr": "autocorrelation"}
BASELINE_LABELS = {
    "zero": "zero", "mean": "region mean", "interp": "linear interpolation",
    "conn": "connectivity-conditional fill", "persistence": "persistence", "ar": "AR(p) per region",
    "var": "ridge VAR across regions", "fc": "Pearson FC", "fc_partial": "partial-correlation FC",
    "fc_tangent": "tangent-space FC", "autocorr": "lag-1 autocorrelation per region",
    # not a baseline but the comparator every credited model also faces: what initialisation alone gives
    "initial": "the same model at initialisation",
}


class RowSample:
    """A uniform sample of at most ``capacity`` timepoints (rows) from a stream of ``(T, R)`` recordings.

    Each row gets a random key and the rows with the smallest keys are kept (reservoir
    sampling), so fitting on a cohort of any size needs bounded memory; below the capacity
    every row is kept, in order.
    """

    def __init__(self, capacity: int = 200_000, seed: int = 0):
        self.capacity, self.rng = capacity, np.random.default_rng(seed)
        self.chunks: list[np.ndarray] = []
        self.keys: list[np.ndarray] = []
        self.count = 0

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64)
        self.chunks.append(x)
        self.keys.append(self.rng.random(len(x)))
        self.count += len(x)
        if self.count > 2 * self.capacity:
            self._shrink()

    def _shrink(self) -> None:
        keys, rows = np.concatenate(self.keys), np.concatenate(self.chunks)
        keep = np.sort(np.argpartition(keys, self.capacity - 1)[: self.capacity])
        self.chunks, self.keys, self.count = [rows[keep]], [keys[keep]], self.capacity

    def rows(self) -> np.ndarray:
        if self.count > self.capacity:
            self._shrink()
        return np.concatenate(self.chunks) if self.chunks else np.zeros((0, 0))


# ---------------------------------------------------------------------------------------------
# Masked reconstruction
# ---------------------------------------------------------------------------------------------


def _interpolate(x: Tensor, visible: Tensor) -> Tensor:
    """Linear interpolation in time between visible samples: (B, R, T) -> (B, R, T)."""
    B, R, T = x.shape
    t = torch.arange(T, device=x.device).expand(B, R, T)
    prev = torch.where(visible, t, torch.full_like(t, -1)).cummax(-1).values  # last visible <= t, or -1
    nxt = torch.where(visible, t, torch.full_like(t, T)).flip(-1).cummin(-1).values.flip(-1)  # first visible >= t
    has_prev, has_next = prev >= 0, nxt < T
    x_prev = x.gather(-1, prev.clamp(min=0))
    x_next = x.gather(-1, nxt.clamp(max=T - 1))
    frac = (t - prev).float() / (nxt - prev).clamp(min=1).float()
    both = x_prev + frac * (x_next - x_prev)
    return torch.where(has_prev & has_next, both,
                       torch.where(has_prev, x_prev, torch.where(has_next, x_next, torch.zeros_like(x))))


class ReconstructionBaselines:
    """The masked-reconstruction rungs of the ladder (module docstring).

    Args:
        shrinkage: weight of the diagonal in the covariance of ``conn``.
        max_rows: timepoints sampled from the training split to estimate it.

    Fitted attributes: ``mean_`` (R,), ``covariance_`` (R, R) (shrunk), ``num_rows_``.
    Without ``fit`` only zero, mean and interp are available.
    """

    def __init__(self, shrinkage: float = 0.1, max_rows: int = 200_000, seed: int = 0):
        self.shrinkage, self.max_rows, self.seed = shrinkage, max_rows, seed

    def fit(self, recordings: Iterable[np.ndarray]) -> "ReconstructionBaselines":
        """Estimate the region mean and covariance from training recordings, ``(T, R)`` each."""
        sample = RowSample(self.max_rows, self.seed)
        for x in recordings:
            sample.add(x)
        rows = sample.rows()
        if len(rows) < 2:
            raise ValueError("the connectivity baseline needs training recordings to fit")
        cov = np.cov(rows, rowvar=False)
        self.mean_ = rows.mean(0)
        self.covariance_ = (1 - self.shrinkage) * cov + self.shrinkage * np.diag(np.diag(cov))
        self.num_rows_ = len(rows)
        return self

    @property
    def names(self) -> tuple[str, ...]:
        return RECONSTRUCTION_BASELINES if hasattr(self, "covariance_") else RECONSTRUCTION_BASELINES[:3]

    def predict(self, x: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """Every rung's reconstruction from the visible values only.

        Args:
            x: (B, R, T) true windows (only the visible values are read).
            mask: (B, R, T) bool or 0/1, True = hidden (a patch mask expanded to its timepoints).

        Returns:
            name -> (B, R, T) float32; visible values are returned as they are.
        """
        x = x.float()
        hidden = mask.bool()
        visible = ~hidden
        vis_f = visible.float()
        count = vis_f.sum(-1, keepdim=True)  # (B, R, 1)
        mean = ((x * vis_f).sum(-1, keepdim=True) / count.clamp(min=1)).expand_as(x)
        out = {"zero": torch.zeros_like(x), "mean": mean, "interp": _interpolate(x, visible)}
        if hasattr(self, "covariance_"):
            out["conn"] = self._conditional(x, hidden)
        return {name: torch.where(hidden, pred, x) for name, pred in out.items()}

    def _conditional(self, x: Tensor, hidden: Tensor) -> Tensor:
        """Gaussian conditional mean of the hidden regions given the visible ones, timepoint by timepoint.

        Timepoints with the same set of hidden regions share one linear system (a patch mask
        gives one per patch): ``S_VV a = x_V - mu_V``, then ``x_M = mu_M + S_MV a``.
        """
        B, R, T = x.shape
        S = torch.as_tensor(self.covariance_, dtype=torch.float64, device=x.device)  # (R, R)
        mu = torch.as_tensor(self.mean_, dtype=torch.float64, device=x.device)  # (R,)
        cols = hidden.permute(0, 2, 1).reshape(B * T, R)  # (BT, R) True = hidden
        dev = x.double().permute(0, 2, 1).reshape(B * T, R) - mu  # (BT, R)
        pred = dev.clone()
        patterns, which = torch.unique(cols, dim=0, return_inverse=True)
        for u, pattern in enumerate(patterns):
            m, v = pattern, ~pattern
            if not m.any() or not v.any():
                if not v.any():
                    pred[which == u] = 0.0  # nothing visible at these timepoints: the mean
                continue
            rows = which == u
            a = torch.linalg.solve(S[v][:, v], dev[rows][:, v].T)  # (|V|, n)
            pred[rows.nonzero()[:, 0][:, None], m.nonzero()[:, 0][None, :]] = (S[m][:, v] @ a).T
        pred = pred + mu
        return pred.reshape(B, T, R).permute(0, 2, 1).float()  # (B, R, T)


# ---------------------------------------------------------------------------------------------
# Forecasting
# ---------------------------------------------------------------------------------------------


def _lagged(x: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Design ``[x_{t-1}, ..., x_{t-p}]`` and target ``x_t`` of one ``(T, R)`` recording."""
    T = len(x)
    lags = np.concatenate([x[order - i - 1:T - i - 1] for i in range(order)], axis=1)  # (T-p, p R)
    return lags, x[order:]


class ForecastBaselines:
    """The forecasting rungs of the ladder (module docstring), fitted on training recordings.

    Args:
        order: p of AR(p) and VAR(p).
        alpha: ridge penalty of the VAR (on standardised lags).
        max_rows: timepoints sampled from the training split.

    Fitted attributes: ``ar_coef_`` (R, p + 1) per-region AR weights with intercept last;
    ``var_coef_`` (p R + 1, R) VAR weights with intercept last.
    """

    def __init__(self, order: int = 3, alpha: float = 10.0, max_rows: int = 100_000, seed: int = 0):
        self.order, self.alpha, self.max_rows, self.seed = order, alpha, max_rows, seed

    def fit(self, recordings: Iterable[np.ndarray]) -> "ForecastBaselines":
        p = self.order
        designs = RowSample(self.max_rows, self.seed)
        for x in recordings:
            x = np.asarray(x, np.float64)
            if len(x) <= p:
                continue
            lags, y = _lagged(x, p)
            designs.add(np.concatenate([lags, y], axis=1))  # sampled together, split after
        rows = designs.rows()
        if len(rows) < 2:
            raise ValueError(f"the forecasting baselines need training recordings longer than {p} timepoints")
        R = rows.shape[1] // (p + 1)
        X, Y = rows[:, : p * R], rows[:, p * R:]
        ones = np.ones((len(X), 1))
        # AR(p) per region: that region's own lags only.
        self.ar_coef_ = np.stack([np.linalg.lstsq(np.concatenate([X[:, r::R], ones], 1), Y[:, r], rcond=None)[0]
                                  for r in range(R)])  # (R, p + 1)
        # VAR(p): every region's lags, ridge on standardised lags (intercept unpenalised).
        mu, sd = X.mean(0), X.std(0) + 1e-8
        Z = (X - mu) / sd
        gram = Z.T @ Z + self.alpha * np.eye(Z.shape[1])
        W = np.linalg.solve(gram, Z.T @ (Y - Y.mean(0)))  # (p R, R)
        self.var_coef_ = np.concatenate([W / sd[:, None], (Y.mean(0) - (mu / sd) @ W)[None]], axis=0)
        return self

    def predict(self, context: np.ndarray, k: int) -> dict[str, np.ndarray]:
        """Every rung's forecast of the next ``k`` timepoints.

        Args:
            context: ``(B, R, V)`` visible timepoints (V > p).

        Returns:
            name -> ``(B, R, k)`` float32.
        """
        ctx = np.asarray(context, np.float64)
        B, R, V = ctx.shape
        p = self.order
        out = {"persistence": np.repeat(ctx[..., -1:], k, axis=-1),
               "mean": np.repeat(ctx.mean(-1, keepdims=True), k, axis=-1)}
        if hasattr(self, "ar_coef_"):
            if V <= p:
                raise ValueError(f"forecasting baselines need more than {p} visible timepoints, got {V}")
            hist_ar, hist_var = [ctx[..., -i] for i in range(1, p + 1)], [ctx[..., -i] for i in range(1, p + 1)]
            ar, var = [], []
            for _ in range(k):
                nxt = sum(self.ar_coef_[:, i] * hist_ar[i] for i in range(p)) + self.ar_coef_[:, p]  # (B, R)
                lags = np.concatenate(hist_var[:p], axis=1)  # (B, p R): lag 1 first
                nv = lags @ self.var_coef_[:-1] + self.var_coef_[-1]  # (B, R)
                ar.append(nxt)
                var.append(nv)
                hist_ar, hist_var = [nxt, *hist_ar[:-1]], [nv, *hist_var[:-1]]
            out["ar"], out["var"] = np.stack(ar, -1), np.stack(var, -1)
        return {name: v.astype(np.float32) for name, v in out.items()}


# ---------------------------------------------------------------------------------------------
# Connectivity features
# ---------------------------------------------------------------------------------------------


def connectivity_features(timeseries: list[np.ndarray], kind: str = "correlation") -> np.ndarray:
    """The feature ladder of probes and fingerprinting: each ``(T, R)`` series as one vector.

    ``kind``: ``"correlation"`` / ``"fc"`` (Pearson), ``"partial correlation"`` / ``"fc_partial"``
    or ``"tangent"`` / ``"fc_tangent"`` (tangent
    space around the group mean of the given series; it uses no targets): the upper triangle of
    the connectivity matrix, diagonal left out, ``(N, R (R - 1) / 2)``. Pearson FC is the plain
    sample correlation; partial correlation and the tangent space use Ledoit-Wolf shrinkage
    (nilearn's default). ``"autocorrelation"`` / ``"autocorr"``: each region's lag-1
    autocorrelation, ``(N, R)``, the temporal structure that connectivity discards (it tells
    apart recordings of different repetition times or filtering, which a model that sees time
    courses can pick up and connectivity cannot).

    Returns:
        ``(N, F)`` float32.
    """
    from nilearn.connectome import ConnectivityMeasure

    kind = CONNECTIVITY_FEATURES.get(kind, kind)
    if kind not in CONNECTIVITY_KINDS:
        raise ValueError(f"connectivity kind must be one of {CONNECTIVITY_KINDS}, got {kind!r}")
    if kind == "autocorrelation":
        return np.stack([_lag1_autocorrelation(np.asarray(t, np.float64)) for t in timeseries]).astype(np.float32)
    from sklearn.covariance import EmpiricalCovariance, LedoitWolf

    # Pearson FC is the plain sample correlation; the inverse (partial) and the tangent space
    # need the shrunk covariance, nilearn's default. No estimator needs its own precision matrix
    # (a pseudo-inverse per recording: seconds for 424 regions).
    estimator = (EmpiricalCovariance if kind == "correlation" else LedoitWolf)(store_precision=False)
    measure = ConnectivityMeasure(cov_estimator=estimator, kind=kind, vectorize=True, discard_diagonal=True)
    with warnings.catch_warnings():
        # The tangent reference (a geometric mean) may stop short of nilearn's 1e-7 tolerance;
        # the features are still well defined.
        warnings.filterwarnings("ignore", message="Maximum number of iterations")
        return np.asarray(measure.fit_transform([np.asarray(t, np.float64) for t in timeseries]), np.float32)


def _lag1_autocorrelation(ts: np.ndarray) -> np.ndarray:
    """(T, R) -> (R,) lag-1 autocorrelation of each region (0 for a constant region)."""
    x = ts - ts.mean(0)
    var = (x**2).sum(0)
    return np.divide((x[1:] * x[:-1]).sum(0), var, out=np.zeros(x.shape[1]), where=var > 0)
