"""Per-modality preprocessing, fitted on training subjects only.

Every analysis builds one :class:`ModalityPreprocessor` per modality and per fold, fits
it on the training rows and applies it to the held-out rows. Steps, in order:

1. :class:`ModalityScaler` - z-score each feature (training mean/std) or LayerNorm each
   row (stateless: a row is centred and scaled by its own mean/std).
2. :class:`CovariateResidualizer` - subtract the least-squares fit of the features on the
   covariates (with intercept), coefficients learnt on the training rows.
3. PCA to ``n_components`` dimensions (scikit-learn), fitted on the training rows.

Shapes: X (N, D) features, C (N, K) covariates; outputs float32.

All three are scikit-learn estimators (``get_params`` / ``clone`` work; ``ModalityScaler`` also
goes into a ``Pipeline``). The covariates are passed as a second argument of ``fit`` and
``transform``, because they belong to the rows, not to the estimator.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.decomposition import PCA

from brainlm.errors import UserError


class ModalityScaler(TransformerMixin, BaseEstimator):
    """Z-score features or LayerNorm rows.

    Args:
        method: ``"zscore"`` (per feature, statistics from ``fit``), ``"layernorm"``
            (per row, no learnt state) or ``"none"``.
        eps: floor on standard deviations (constant features are left centred, not blown up).

    Fitted attributes:
        mean_, scale_: (D,) for ``"zscore"``. n_features_in_: D.
    """

    def __init__(self, method: str = "zscore", eps: float = 1e-8):
        self.method = method
        self.eps = eps

    def fit(self, X, y=None) -> "ModalityScaler":
        if self.method not in ("zscore", "layernorm", "none"):
            raise UserError(f"scaling method must be 'zscore', 'layernorm' or 'none', got {self.method!r}")
        X = np.asarray(X, dtype=np.float64)
        self.n_features_in_ = X.shape[1]
        if self.method == "zscore":
            self.mean_ = X.mean(axis=0)
            std = X.std(axis=0)
            self.scale_ = np.where(std > self.eps, std, 1.0)
        return self

    def transform(self, X) -> np.ndarray:
        """(N, D) -> (N, D) float32."""
        X = np.asarray(X, dtype=np.float64)
        if X.shape[1] != self.n_features_in_:
            raise UserError(f"expected {self.n_features_in_} features, got {X.shape[1]}")
        if self.method == "zscore":
            X = (X - self.mean_) / self.scale_
        elif self.method == "layernorm":
            std = X.std(axis=1, keepdims=True)
            X = (X - X.mean(axis=1, keepdims=True)) / np.maximum(std, self.eps)
        return X.astype(np.float32)


class CovariateResidualizer(BaseEstimator):
    """Remove the linear effect of covariates from every feature.

    Fitted attributes:
        coef_: (K, D) regression coefficients. intercept_: (D,). cov_mean_: (K,).
    """

    def fit(self, X, covariates) -> "CovariateResidualizer":
        X = np.asarray(X, dtype=np.float64)
        C = np.asarray(covariates, dtype=np.float64)
        if C.ndim != 2 or C.shape[0] != X.shape[0]:
            raise UserError(f"covariates must be (N, K) with N={X.shape[0]}, got {C.shape}")
        self.cov_mean_ = C.mean(axis=0)
        Cc = C - self.cov_mean_
        self.intercept_ = X.mean(axis=0)
        # lstsq gives the minimum-norm solution when covariates are collinear in a fold.
        self.coef_ = np.linalg.lstsq(Cc, X - self.intercept_, rcond=None)[0]
        return self

    def transform(self, X, covariates) -> np.ndarray:
        """(N, D), (N, K) -> (N, D) float32 residuals."""
        X = np.asarray(X, dtype=np.float64)
        C = np.asarray(covariates, dtype=np.float64) - self.cov_mean_
        # Feature means are kept; only the covariate-explained variation goes.
        return (X - C @ self.coef_).astype(np.float32)

    def fit_transform(self, X, covariates) -> np.ndarray:
        return self.fit(X, covariates).transform(X, covariates)


class ModalityPreprocessor(BaseEstimator):
    """Scale -> residualise against covariates -> optional PCA, for one modality.

    Args:
        scale: ``"zscore"``, ``"layernorm"`` or ``"none"`` (see :class:`ModalityScaler`).
        n_components: PCA dimensions, or None to keep all features.
        random_state: seed for the PCA solver.

    Fitted attributes:
        scaler_, residualizer_ (None without covariates), pca_ (None without PCA),
        n_features_in_, n_features_out_.
    """

    def __init__(self, scale: str = "zscore", n_components: int | None = None, random_state: int = 0):
        self.scale = scale
        self.n_components = n_components
        self.random_state = random_state

    def fit(self, X, covariates=None) -> "ModalityPreprocessor":
        X = np.asarray(X, dtype=np.float64)
        self.n_features_in_ = X.shape[1]
        self.scaler_ = ModalityScaler(self.scale).fit(X)
        Z = self.scaler_.transform(X)
        self.residualizer_ = None
        if covariates is not None:
            self.residualizer_ = CovariateResidualizer().fit(Z, covariates)
            Z = self.residualizer_.transform(Z, covariates)
        self.pca_ = None
        if self.n_components is not None:
            k = int(self.n_components)
            if not 1 <= k <= min(Z.shape):
                raise UserError(
                    f"PCA to {k} components needs at least {k} training subjects and features; "
                    f"got {Z.shape[0]} subjects x {Z.shape[1]} features"
                )
            # The full SVD is exact and, for the few-subjects x many-features folds here, fastest.
            self.pca_ = PCA(n_components=k, svd_solver="full", random_state=self.random_state).fit(Z)
        self.n_features_out_ = self.n_features_in_ if self.pca_ is None else self.pca_.n_components_
        return self

    def transform(self, X, covariates=None) -> np.ndarray:
        """(N, D) [, (N, K)] -> (N, n_features_out_) float32."""
        Z = self.scaler_.transform(X)
        if self.residualizer_ is not None:
            if covariates is None:
                raise UserError("this preprocessor was fitted with covariates; pass them to transform too")
            Z = self.residualizer_.transform(Z, covariates)
        if self.pca_ is not None:
            Z = self.pca_.transform(Z)
        return np.asarray(Z, dtype=np.float32)

    def fit_transform(self, X, covariates=None) -> np.ndarray:
        return self.fit(X, covariates).transform(X, covariates)

    def to_feature_space(self, W) -> np.ndarray:
        """Map weights on the output dimensions back to the scaled input features.

        Args:
            W: (n_features_out_, K) weights. Returns: (n_features_in_, K).
        """
        W = np.asarray(W, dtype=np.float64)
        return W if self.pca_ is None else self.pca_.components_.T @ W


def check_pair(X, Y, n_splits: int | None = None, names: tuple[str, str] = ("brain", "genetic")):
    """Validate two row-aligned modality matrices; return them as float64 arrays.

    Raises:
        ValueError: not 2-D, different numbers of rows, NaN/inf, or fewer subjects
        than folds.
    """
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    for name, M in zip(names, (X, Y)):
        if M.ndim != 2:
            raise UserError(f"{name} embeddings must be 2-D (N, D), got shape {M.shape}")
        if not np.isfinite(M).all():
            raise UserError(f"{name} embeddings contain NaN or inf in {int((~np.isfinite(M).all(1)).sum())} rows")
    if X.shape[0] != Y.shape[0]:
        raise UserError(
            f"{names[0]} and {names[1]} embeddings have different numbers of subjects "
            f"({X.shape[0]} vs {Y.shape[0]}); join them on subject IDs first"
        )
    if n_splits is not None and X.shape[0] < max(n_splits, 2):
        raise UserError(f"fewer subjects ({X.shape[0]}) than folds ({n_splits})")
    return X, Y
