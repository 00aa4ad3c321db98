"""Canonical correlation analysis with held-out folds and subject-label permutations.

:class:`RegularizedCCA` solves CCA by whitening each block and taking the SVD of the
whitened cross-covariance (closed form, deterministic, fast enough for 1,000
permutations x k folds); ``reg`` shrinks each covariance towards a multiple of the
identity, ``C <- (1 - reg) C + reg * mean(eig(C)) I``.

:class:`CCAAnalysis` fits preprocessing + CCA on the training folds, projects the
held-out subjects and correlates their canonical variates (signed: an overfitted
direction gives ~0 or negative held-out correlations). The p-value of component k is
``(1 + #{permutations with held-out r_k >= observed r_k}) / (1 + n_permutations)``,
where each permutation shuffles which brain row goes with which genetic row (the
genetic covariates travel with their genetic row) and reruns the whole cross-validation,
preprocessing included.
"""

from __future__ import annotations

import numpy as np

from brainlm.errors import UserError
from brainlm.evaluate.protocol import permutation_p, subject_folds
from brainlm.integrate.preprocess import ModalityPreprocessor, check_pair


def _inv_sqrt(C: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh(C)
    vals = np.maximum(vals, vals.max() * 1e-10)
    return (vecs / np.sqrt(vals)) @ vecs.T


def _shrink(C: np.ndarray, reg: float) -> np.ndarray:
    return (1 - reg) * C + reg * (np.trace(C) / len(C)) * np.eye(len(C))


class RegularizedCCA:
    """CCA by SVD of the whitened cross-covariance.

    Args:
        n_components: K canonical pairs.
        reg: covariance shrinkage in [0, 1).

    Fitted attributes:
        x_mean_ (Dx,), y_mean_ (Dy,), x_weights_ (Dx, K), y_weights_ (Dy, K),
        canonical_correlations_ (K,) on the fitted rows.
    """

    def __init__(self, n_components: int = 2, reg: float = 0.01):
        self.n_components = n_components
        self.reg = reg

    def fit(self, X, Y) -> "RegularizedCCA":
        X = np.asarray(X, dtype=np.float64)
        Y = np.asarray(Y, dtype=np.float64)
        n, k = X.shape[0], self.n_components
        if k > min(n - 1, X.shape[1], Y.shape[1]):
            raise UserError(
                f"{k} CCA components need more than {k} subjects and at least {k} features per modality; "
                f"got {n} subjects, {X.shape[1]} and {Y.shape[1]} features"
            )
        if not 0 <= self.reg < 1:
            raise UserError(f"reg must be in [0, 1), got {self.reg}")
        self.x_mean_, self.y_mean_ = X.mean(0), Y.mean(0)
        Xc, Yc = X - self.x_mean_, Y - self.y_mean_
        Wx = _inv_sqrt(_shrink(Xc.T @ Xc / (n - 1), self.reg))
        Wy = _inv_sqrt(_shrink(Yc.T @ Yc / (n - 1), self.reg))
        U, S, Vt = np.linalg.svd(Wx @ (Xc.T @ Yc / (n - 1)) @ Wy)
        self.x_weights_ = Wx @ U[:, :k]
        self.y_weights_ = Wy @ Vt.T[:, :k]
        self.canonical_correlations_ = S[:k]
        return self

    def transform(self, X, Y) -> tuple[np.ndarray, np.ndarray]:
        """(N, Dx), (N, Dy) -> canonical variates (N, K), (N, K)."""
        U = (np.asarray(X, dtype=np.float64) - self.x_mean_) @ self.x_weights_
        V = (np.asarray(Y, dtype=np.float64) - self.y_mean_) @ self.y_weights_
        return U, V


def _columnwise_corr(U: np.ndarray, V: np.ndarray) -> np.ndarray:
    U = U - U.mean(0)
    V = V - V.mean(0)
    denom = np.sqrt((U**2).sum(0) * (V**2).sum(0))
    return np.where(denom > 0, (U * V).sum(0) / np.where(denom > 0, denom, 1), 0.0)


def _mean_abs_cosine(W: list[np.ndarray]) -> np.ndarray:
    """Mean |cosine| between every pair of folds' weight vectors, per component."""
    W = np.stack(W)  # (F, D, K)
    W = W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-12)
    F = W.shape[0]
    sims = [np.abs((W[a] * W[b]).sum(0)) for a in range(F) for b in range(a + 1, F)]
    return np.mean(sims, axis=0) if sims else np.ones(W.shape[2])


class CCAAnalysis:
    """Cross-validated CCA between two modalities with a permutation test.

    Args:
        n_components: canonical pairs K.
        n_splits: folds of the (shuffled, seeded) K-fold split; each held-out fold needs
            at least 3 subjects for a correlation.
        n_permutations: subject-label permutations for the p-values (0 to skip).
        scale: per-modality scaling, ``"zscore"``/``"layernorm"``/``"none"``.
        pca_components: PCA dimensions per modality before CCA: an int for both, a pair
            ``(brain, genetic)``, or None for no PCA.
        reg: covariance shrinkage of :class:`RegularizedCCA`.
        random_state: seed for folds and permutations.

    Fitted attributes:
        folds_: list of (train_idx, test_idx).
        fold_corr_: (n_splits, K) held-out canonical correlations.
        test_corr_: (K,) their mean over folds.
        null_corr_: (n_permutations, K) the same statistic under permutation.
        p_values_: (K,) permutation p-values; p_value_: that of the first component.
        x_stability_, y_stability_: (K,) mean |cosine| of the canonical weights (in
            scaled-feature space) between pairs of folds, 1 = identical directions.
        x_weights_, y_weights_: (Dx, K), (Dy, K) weights from a fit on all subjects.
        train_corr_: (K,) in-sample canonical correlations of that fit.
    """

    def __init__(
        self,
        n_components: int = 2,
        n_splits: int = 5,
        n_permutations: int = 1000,
        scale: str = "zscore",
        pca_components: int | tuple[int | None, int | None] | None = None,
        reg: float = 0.01,
        random_state: int = 0,
    ):
        self.n_components = n_components
        self.n_splits = n_splits
        self.n_permutations = n_permutations
        self.scale = scale
        self.pca_components = pca_components
        self.reg = reg
        self.random_state = random_state

    def _pca(self) -> tuple[int | None, int | None]:
        p = self.pca_components
        return tuple(p) if isinstance(p, (tuple, list)) else (p, p)

    def _cv(self, X, Y, cov_x, cov_y, x_parts=None):
        """Held-out correlations (F, K) and per-fold weights; ``x_parts`` caches X preprocessing."""
        pca_x, pca_y = self._pca()
        corr, wx, wy, parts = [], [], [], []
        for f, (tr, te) in enumerate(self.folds_):
            if x_parts is None:
                px = ModalityPreprocessor(self.scale, pca_x, self.random_state)
                xtr = px.fit_transform(X[tr], None if cov_x is None else cov_x[tr])
                xte = px.transform(X[te], None if cov_x is None else cov_x[te])
                parts.append((px, xtr, xte))
            else:
                px, xtr, xte = x_parts[f]
            py = ModalityPreprocessor(self.scale, pca_y, self.random_state)
            ytr = py.fit_transform(Y[tr], None if cov_y is None else cov_y[tr])
            yte = py.transform(Y[te], None if cov_y is None else cov_y[te])
            cca = RegularizedCCA(self.n_components, self.reg).fit(xtr, ytr)
            corr.append(_columnwise_corr(*cca.transform(xte, yte)))
            wx.append(px.to_feature_space(cca.x_weights_))
            wy.append(py.to_feature_space(cca.y_weights_))
        return np.array(corr), wx, wy, (x_parts if x_parts is not None else parts)

    def fit(self, X, Y, covariates=None) -> "CCAAnalysis":
        """Run the analysis.

        Args:
            X: (N, Dx) brain embeddings. Y: (N, Dy) genetic embeddings, row-aligned.
            covariates: optional (N, C) numeric covariates, regressed out of both
                modalities inside each training fold.

        Returns:
            self.
        """
        X, Y = check_pair(X, Y, self.n_splits)
        n = X.shape[0]
        if n < self.n_components + 1:
            raise UserError(f"fewer subjects ({n}) than CCA components + 1 ({self.n_components + 1})")
        if n // self.n_splits < 3:
            raise UserError(
                f"{n} subjects in {self.n_splits} folds leave fewer than 3 held-out subjects per fold; "
                "use fewer folds"
            )
        cov = None if covariates is None else np.asarray(covariates, dtype=np.float64)
        if cov is not None and cov.shape[0] != n:
            raise UserError(f"covariates have {cov.shape[0]} rows for {n} subjects")
        self.folds_ = subject_folds(np.zeros(n), np.arange(n), "regression", self.n_splits, self.random_state)
        self.fold_corr_, wx, wy, x_parts = self._cv(X, Y, cov, cov)
        self.test_corr_ = self.fold_corr_.mean(0)
        self.x_stability_ = _mean_abs_cosine(wx)
        self.y_stability_ = _mean_abs_cosine(wy)

        rng = np.random.default_rng(self.random_state)
        null = []
        for _ in range(self.n_permutations):
            perm = rng.permutation(n)
            fold_corr, *_ = self._cv(X, Y[perm], cov, None if cov is None else cov[perm], x_parts)
            null.append(fold_corr.mean(0))
        self.null_corr_ = np.array(null).reshape(self.n_permutations, self.n_components)
        self.p_values_ = permutation_p(self.test_corr_, self.null_corr_)
        self.p_value_ = float(self.p_values_[0])

        pca_x, pca_y = self._pca()
        px = ModalityPreprocessor(self.scale, pca_x, self.random_state)
        py = ModalityPreprocessor(self.scale, pca_y, self.random_state)
        full = RegularizedCCA(self.n_components, self.reg).fit(px.fit_transform(X, cov), py.fit_transform(Y, cov))
        self.x_weights_ = px.to_feature_space(full.x_weights_)
        self.y_weights_ = py.to_feature_space(full.y_weights_)
        self.train_corr_ = full.canonical_correlations_
        return self

    def summary(self):
        """One row per component: held-out r, p-value, weight stability, in-sample r."""
        import pandas as pd

        return pd.DataFrame(
            {
                "component": np.arange(1, self.n_components + 1),
                "heldout_r": self.test_corr_,
                "heldout_r_sd": self.fold_corr_.std(0),
                "p_perm": self.p_values_,
                "stability_brain": self.x_stability_,
                "stability_genetic": self.y_stability_,
                "insample_r": self.train_corr_,
            }
        )
