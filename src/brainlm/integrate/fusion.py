"""Late fusion: genetics-only vs brain-only vs concatenated features.

Per fold, each modality gets its own :class:`ModalityPreprocessor` fitted on the
training subjects; the fused features are the two preprocessed blocks side by side,
each divided by sqrt(its width) so that both modalities enter with the same total
variance whatever their dimensions. Every feature set then goes through the same
model - ``"linear"``: L2 logistic regression (C = 1) or ridge regression with the
penalty chosen by leave-one-out inside the training fold; ``"gbm"``: gradient boosting
with 100 depth-2 trees - and the out-of-fold predictions of all subjects are scored once.

Folds are subject-grouped (``StratifiedGroupKFold`` for classification, ``GroupKFold``
for regression): every row of a subject is in the same fold. Confidence intervals are
percentile intervals over bootstrap resamples of subjects; the fusion gain is
``metric(fusion) - metric(best single modality)`` on the same resamples (paired), with
``p_boot`` the fraction of resamples in which it is <= 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import average_precision_score, r2_score, roc_auc_score

from brainlm.errors import UserError
from brainlm.evaluate.protocol import SubjectBootstrap, infer_task, subject_folds
from brainlm.integrate.preprocess import ModalityPreprocessor, check_pair

FEATURE_SETS = ("genetic", "brain", "fusion")


def _make_model(name: str, task: str, seed: int):
    if name == "linear":
        if task == "classification":
            # Features are already standardised per modality; a fixed L2 penalty keeps the
            # model identical across scikit-learn versions (LogisticRegressionCV's API moves).
            return LogisticRegression(C=1.0, max_iter=2000)
        return RidgeCV(alphas=np.logspace(-2, 4, 13))
    if name == "gbm":
        # Exact (not histogram) boosting: single-threaded, and cohorts here are small.
        cls = GradientBoostingClassifier if task == "classification" else GradientBoostingRegressor
        return cls(n_estimators=100, learning_rate=0.05, max_depth=2, subsample=0.8, random_state=seed)
    raise UserError(f"unknown model {name!r} (use 'linear' or 'gbm')")


def _metrics(task: str):
    if task == "classification":
        return {"auroc": roc_auc_score, "auprc": average_precision_score}
    return {"r2": r2_score}


class FusionAnalysis:
    """Cross-validated comparison of single-modality and fused prediction.

    Args:
        task: ``"classification"``, ``"regression"`` or ``"auto"``
            (:func:`brainlm.evaluate.protocol.infer_task`).
        models: any of ``"linear"`` and ``"gbm"``.
        n_splits: subject-grouped folds.
        n_bootstrap: bootstrap resamples for the intervals.
        scale, pca_components: per-modality preprocessing (see :class:`ModalityPreprocessor`);
            ``pca_components`` is an int for both modalities or a ``(brain, genetic)`` pair.
        random_state: seed of folds, models and bootstrap.

    Fitted attributes:
        task_: the task used. folds_: list of (train_idx, test_idx).
        oof_: dict (feature_set, model) -> (N,) out-of-fold predictions (probabilities or values).
        results_: frame, one row per (feature_set, model): metric, CI low/high per metric.
        gains_: frame, one row per model: best single modality, fusion gain on the main
            metric (AUROC or R^2) with bootstrap CI and p_boot.
    """

    def __init__(
        self,
        task: str = "auto",
        models: tuple[str, ...] = ("linear", "gbm"),
        n_splits: int = 5,
        n_bootstrap: int = 1000,
        scale: str = "zscore",
        pca_components: int | tuple[int | None, int | None] | None = None,
        random_state: int = 0,
    ):
        self.task = task
        self.models = models
        self.n_splits = n_splits
        self.n_bootstrap = n_bootstrap
        self.scale = scale
        self.pca_components = pca_components
        self.random_state = random_state

    def _features(self, X, Y, cov, tr, te):
        p = self.pca_components
        pca_x, pca_y = tuple(p) if isinstance(p, (tuple, list)) else (p, p)
        cx = (None, None) if cov is None else (cov[tr], cov[te])
        out = {}
        for name, M, k in (("brain", X, pca_x), ("genetic", Y, pca_y)):
            pre = ModalityPreprocessor(self.scale, k, self.random_state)
            a = pre.fit_transform(M[tr], cx[0])
            b = pre.transform(M[te], cx[1])
            out[name] = (a, b)
        out["fusion"] = tuple(
            np.hstack([out["brain"][i] / np.sqrt(out["brain"][i].shape[1]),
                       out["genetic"][i] / np.sqrt(out["genetic"][i].shape[1])])
            for i in (0, 1)
        )
        return out

    def fit(self, X, Y, y, covariates=None, groups=None) -> "FusionAnalysis":
        """Run the analysis.

        Args:
            X: (N, Dx) brain embeddings. Y: (N, Dy) genetic embeddings, row-aligned.
            y: (N,) target (two classes, or continuous).
            covariates: optional (N, C) covariates, regressed out of both modalities per fold.
            groups: optional (N,) subject IDs when subjects have several rows (default:
                one row per subject).

        Returns:
            self.
        """
        X, Y = check_pair(X, Y, self.n_splits)
        y = np.asarray(y)
        n = X.shape[0]
        if y.shape != (n,):
            raise UserError(f"target must have shape ({n},), got {y.shape}")
        if y.dtype.kind in "fc" and not np.isfinite(y).all():
            raise UserError("target contains NaN or inf")
        task = infer_task(y, self.task)
        if task == "classification":
            classes = np.unique(y)
            if len(classes) != 2:
                raise UserError(f"classification needs exactly two classes, got {len(classes)}")
            if np.bincount(np.searchsorted(classes, y)).min() < self.n_splits:
                raise UserError(f"fewer subjects in the smallest class than folds ({self.n_splits})")
            y = (y == classes[1]).astype(int)
        else:
            y = y.astype(np.float64)
        groups = np.arange(n) if groups is None else np.asarray(groups)
        cov = None if covariates is None else np.asarray(covariates, dtype=np.float64)
        self.task_ = task
        self.folds_ = subject_folds(y, groups, task, self.n_splits, self.random_state)

        self.oof_ = {(fs, m): np.zeros(n) for fs in FEATURE_SETS for m in self.models}
        for tr, te in self.folds_:
            feats = self._features(X, Y, cov, tr, te)
            for fs in FEATURE_SETS:
                for m in self.models:
                    model = _make_model(m, task, self.random_state).fit(feats[fs][0], y[tr])
                    x_test = feats[fs][1]
                    pred = model.predict_proba(x_test)[:, 1] if task == "classification" else model.predict(x_test)
                    self.oof_[(fs, m)][te] = pred
        self._score(y, groups)
        return self

    def _score(self, y, groups) -> None:
        metrics = _metrics(self.task_)
        main = next(iter(metrics))
        valid = (lambda idx: len(np.unique(y[idx])) > 1) if self.task_ == "classification" else None
        boot = SubjectBootstrap(groups, self.n_bootstrap, self.random_state, valid)

        def stat(fn, pred):
            return lambda idx: fn(y[idx], pred[idx])

        rows = []
        for (fs, m), pred in self.oof_.items():
            row = {"features": fs, "model": m}
            for name, fn in metrics.items():
                row[name] = fn(y, pred)
                row[f"{name}_lo"], row[f"{name}_hi"] = boot.ci(stat(fn, pred))
            rows.append(row)
        self.results_ = pd.DataFrame(rows)

        gains = []
        for m in self.models:
            res = self.results_[self.results_.model == m].set_index("features")[main]
            best = "brain" if res["brain"] >= res["genetic"] else "genetic"
            cmp = boot.compare(stat(metrics[main], self.oof_[("fusion", m)]), stat(metrics[main], self.oof_[(best, m)]))
            gains.append({
                "model": m, "metric": main, "best_single": best,
                "fusion": res["fusion"], "single": res[best],
                "gain": res["fusion"] - res[best], "gain_lo": cmp.diff_lo, "gain_hi": cmp.diff_hi,
                "p_boot": cmp.p_boot,
            })
        self.gains_ = pd.DataFrame(gains)
