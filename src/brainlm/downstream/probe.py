"""Probes on frozen features, with a functional-connectivity baseline and subject-grouped CV.

Features are one row per window or per recording (the rows of an ``Embeddings``); targets are
one value per subject. Every row of a subject shares its target and its fold.

Protocol (``run_probes``):

- Outer cross-validation grouped by subject (:func:`brainlm.evaluate.protocol.subject_folds`):
  no subject is in both the training and the test part of a fold (checked).
- Nested hyper-parameter choice: inside each outer training part, ``GridSearchCV`` with the
  same kind of subject-grouped folds (``inner_splits``, fewer when there are few subjects).
  Features are standardised inside the pipeline.
- Probes: ``dummy`` (mean / majority class: the chance level), ``ridge`` (Ridge or
  LogisticRegression), ``knn``, ``svm`` (RBF SVR / SVC), ``mlp`` (one hidden layer of 64).
- Metrics on the pooled out-of-fold predictions: R^2, MAE, Pearson r (regression); accuracy,
  balanced accuracy, AUROC (classification; one-vs-rest macro for more than two classes),
  with percentile bootstrap confidence intervals over subjects (resampled with replacement).

Targets: from a store's phenotype column (one value per subject; recordings of a subject
must agree) or a TSV/CSV keyed by subject (``subject_id`` or ``participant_id`` column, a
``sub-`` prefix is ignored). A subject with no target or a NaN target is **excluded and
reported**: listed in ``ProbeResult.missing_subjects`` and in a warning. ``task="auto"``
chooses classification for text, boolean or two-valued targets, regression otherwise.

Connectivity baselines (``fc_features``, the ladder of :mod:`brainlm.evaluate.baselines`): the
upper triangle (diagonal excluded) of the Pearson correlation (``fc``), partial correlation
(``fc_partial``) or tangent-space (``fc_tangent``) connectivity of the regions, ``R (R - 1) / 2``
values, over the same timepoints as the embeddings: a window for per-window rows, the whole span
of the recording's windows for per-recording rows (estimated once, not averaged over windows,
so the baseline is not held back by the model's window length); and each region's lag-1
autocorrelation over the same timepoints (``autocorr``), the temporal structure FC leaves out.
The same probes run on each, beside the embeddings.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from brainlm.errors import UserError
from brainlm.evaluate.baselines import CONNECTIVITY_FEATURES, connectivity_features
from brainlm.evaluate.metrics import PREDICTION_METRICS, prediction_metric
from brainlm.evaluate.protocol import TASK_CHOICES, SubjectBootstrap, infer_task, subject_folds
from brainlm.io import Embeddings, normalize_subject_id, read_subject_table
from brainlm.options import Options, option
from brainlm.progress import progress as progress_bar

from .embed import embed_recordings, window_starts
from .loading import Recordings, load_model, open_recordings

__all__ = [
    "TargetOptions",
    "PROBES",
    "fc_features",
    "load_targets",
    "align_targets",
    "ProbeResult",
    "run_probes",
    "probe",
]

PROBES = ("dummy", "ridge", "knn", "svm", "mlp")


@dataclass(kw_only=True)
class TargetOptions(Options):
    """The target of a probe or fine-tune: the same four flags for every command that predicts one."""

    target: str | None = option(None, "phenotype column (of the store, or of --targets)")
    targets: str | None = option(None, "table of targets keyed by subject (CSV/TSV/Parquet)")
    subject_column: str | None = option(None, "subject column of --targets (default: subject_id, else participant_id)")
    task: str = option("auto", "auto: classification for text, boolean or two-valued targets, else regression",
                       choices=TASK_CHOICES)


def fc_features(
    recordings: Recordings,
    *,
    window: int,
    windows: str = "average",
    stride: int | None = None,
    kind: str = "correlation",
    progress: bool = False,
) -> Embeddings:
    """Connectivity (``kind``: correlation, partial correlation, tangent) of the timepoints that
    ``embed_recordings`` would embed.

    A per-window row (``windows="first"`` or ``"sliding"``) is the connectivity of that window.
    A per-recording row (``windows="average"``, where the model's vectors are averaged over its
    windows) is the connectivity of the whole span those windows cover, estimated once: the
    strongest use of the same timepoints. Averaging per-window matrices instead would handicap
    the baseline with the model's window length (20 timepoints give a poor 94-region
    correlation matrix; a whole recording a good one).

    Returns:
        ``Embeddings`` with ``X`` of shape ``(N, R (R - 1) / 2)`` and the same index.
    """
    rows, series = [], []
    for meta, ts in progress_bar(recordings, enabled=progress, total=len(recordings), desc=f"{kind}", unit="rec"):
        starts = window_starts(len(ts), window, stride, windows)
        if len(starts) == 0:
            continue
        if windows == "average":
            series.append(ts[int(starts[0]) : int(starts[-1]) + window])
            rows.append({**meta, "window": -1, "window_start": -1})
        else:
            series += [ts[t0 : t0 + window] for t0 in starts]
            rows += [{**meta, "window": w, "window_start": int(t0)} for w, t0 in enumerate(starts)]
    if not rows:
        raise UserError(f"no recording of {recordings.source} holds a window of {window} timepoints (--window)")
    X = connectivity_features(series, kind)  # (rows, F)
    index = pd.DataFrame(rows)[["recording_id", "subject_id", "session_id", "run_id", "window", "window_start"]]
    return Embeddings(X.astype(np.float32), index, pooling=kind)


def load_targets(source, column: str, subject_column: str | None = None) -> pd.Series:
    """One target value per subject, from a store's phenotypes or a table file.

    Args:
        source: a ``Store``, a store folder, or a CSV / TSV / Parquet file.
        column: the target column.
        subject_column: the subject column of a file (default ``subject_id``, else ``participant_id``).

    Returns:
        ``pd.Series`` indexed by subject ID (text, ``sub-`` prefix removed), named ``column``;
        NaN where a subject has no value.

    Raises:
        UserError: unknown column, or rows of one subject with different values.
    """
    from brainlm.data import Store, open_store

    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        source = open_store(source)
    if isinstance(source, Store):
        if column not in source.recordings.columns:
            raise UserError(f"{source.path}: no phenotype column {column!r} (--target); has {source.phenotype_columns}")
        table = source.recordings[["subject_id", column]].assign(subject_id=lambda d: d["subject_id"].map(normalize_subject_id))
        table = table.set_index("subject_id")
        where = str(source.path)
    else:
        table = read_subject_table(source, id_col=subject_column, columns=[column], flag="--targets", unique=False)
        where = f"--targets {source}"
    per = table[column].dropna().groupby(level=0).nunique()
    if (per > 1).any():
        raise UserError(f"{where}: target {column!r} differs between rows of subjects {sorted(per[per > 1].index)[:10]}")
    out = table[column].groupby(level=0, sort=False).first()
    out.index.name = "subject_id"
    return out.rename(column)


def align_targets(index: pd.DataFrame, targets: pd.Series) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Targets of the rows of ``index`` and the subjects without one.

    Returns:
        ``y`` (object array, one per row), ``keep`` (bool per row), and the sorted subject IDs
        with no target or a NaN target (their rows have ``keep = False``).
    """
    subjects = index["subject_id"].map(normalize_subject_id)
    y = subjects.map(targets).to_numpy(dtype=object)
    keep = ~pd.isna(y)
    missing = sorted(set(subjects[~keep]))
    return y, keep, missing


@dataclass
class ProbeResult:
    """What ``run_probes`` / ``probe`` return.

    Attributes:
        metrics: one row per (features, probe, metric): ``value``, ``ci_low``, ``ci_high``.
        predictions: out-of-fold predictions per row: ``features``, ``probe``, ``subject_id``,
            ``fold``, ``y_true``, ``y_pred``.
        folds: per (features, outer fold): the training and test subjects.
        task: ``"regression"`` or ``"classification"``.
        missing_subjects: subjects excluded for lack of a target (no value or NaN).
        chance: the chance level (classification: majority-class accuracy).
    """

    metrics: pd.DataFrame
    predictions: pd.DataFrame
    folds: list[dict]
    task: str
    missing_subjects: list[str] = field(default_factory=list)
    chance: float | None = None

    def table(self) -> pd.DataFrame:
        """Metrics side by side: rows (features, probe), columns metric, cells ``value [lo, hi]``."""
        m = self.metrics.assign(cell=lambda d: d.apply(lambda r: f"{r.value:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]", axis=1))
        return m.pivot_table(index=["features", "probe"], columns="metric", values="cell", aggfunc="first")


def _estimators(task: str, seed: int, min_train: int) -> dict:
    from sklearn.dummy import DummyClassifier, DummyRegressor
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.svm import SVC, SVR

    ks = [k for k in (1, 3, 5, 10, 20) if k <= max(1, min_train)] or [1]
    mlp = dict(hidden_layer_sizes=(64,), max_iter=500, random_state=seed)
    if task == "regression":
        return {
            "dummy": (DummyRegressor(), {}),
            "ridge": (Ridge(), {"est__alpha": list(np.logspace(-2, 4, 7))}),
            "knn": (KNeighborsRegressor(), {"est__n_neighbors": ks}),
            "svm": (SVR(), {"est__C": [0.1, 1.0, 10.0]}),
            "mlp": (MLPRegressor(**mlp), {"est__alpha": [1e-3, 1e-1, 10.0]}),
        }
    return {
        "dummy": (DummyClassifier(strategy="prior"), {}),
        "ridge": (LogisticRegression(max_iter=2000), {"est__C": list(np.logspace(-3, 2, 6))}),
        "knn": (KNeighborsClassifier(), {"est__n_neighbors": ks}),
        "svm": (SVC(), {"est__C": [0.1, 1.0, 10.0]}),
        "mlp": (MLPClassifier(**mlp), {"est__alpha": [1e-3, 1e-1, 10.0]}),
    }


def _scores(est, X: np.ndarray, n_classes: int) -> np.ndarray:
    """Class scores for AUROC: probabilities, or a softmax of decision values."""
    if hasattr(est, "predict_proba"):
        try:
            s = est.predict_proba(X)
        except AttributeError:
            s = None
        if s is not None:
            return s[:, 1] if n_classes == 2 else s
    d = est.decision_function(X)
    if n_classes == 2:
        return d
    e = np.exp(d - d.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def run_probes(
    X: np.ndarray,
    y,
    groups,
    *,
    task: str = "auto",
    probes=PROBES,
    n_splits: int = 5,
    inner_splits: int = 3,
    n_boot: int = 1000,
    seed: int = 0,
    features: str = "features",
) -> ProbeResult:
    """Cross-validated probes on one feature matrix (module docstring for the protocol).

    Args:
        X: ``(N, F)`` features (more dimensions are flattened).
        y: ``(N,)`` targets, no missing values (use :func:`align_targets` first).
        groups: ``(N,)`` subject of each row.
        task: ``"auto"``, ``"regression"`` or ``"classification"``.
        probes: names from ``PROBES``.
        n_splits: outer folds; at most the number of subjects.
        inner_splits: inner folds for the hyper-parameter grid.
        n_boot: bootstrap resamples of subjects for the confidence intervals (0: none).
        seed: folds, MLP initialisation and bootstrap.
        features: a name for these features in the output.

    Raises:
        UserError: missing targets, a single class, fewer subjects than folds, unknown probe.
    """
    X, y, groups, task, classes = _check_probe_inputs(X, y, groups, task, probes)
    split = subject_folds(y, groups, task, n_splits, seed)
    folds = [{"features": features, "fold": f, "train_subjects": sorted(set(groups[tr])),
              "test_subjects": sorted(set(groups[te]))} for f, (tr, te) in enumerate(split)]
    rows = []
    for name in probes:
        for f, (tr, te) in enumerate(split):
            pred, score = _fit_predict(name, task, X, y, groups, tr, te, inner_splits, seed, classes)
            for j, i in enumerate(te):
                row = {"features": features, "probe": name, "row": int(i), "subject_id": groups[i], "fold": f,
                       "y_true": y[i], "y_pred": pred[j]}
                if score is not None:
                    row["score"] = score[j] if score.ndim == 1 else list(score[j])
                rows.append(row)
    preds = pd.DataFrame(rows)
    metrics = _probe_metrics(preds, task, classes, n_boot, seed, features)
    chance = float(pd.Series(y).value_counts(normalize=True).max()) if task == "classification" else None
    return ProbeResult(metrics, preds, folds, task, chance=chance)


def _check_probe_inputs(X, y, groups, task: str, probes):
    """Validated arrays, the task, and the classes (None for regression)."""
    X = np.asarray(X, np.float64).reshape(len(X), -1)
    y = np.asarray(y, dtype=object)
    groups = np.asarray(groups).astype(str)
    if len(X) != len(y) or len(y) != len(groups):
        raise UserError(f"X, y and groups differ in length ({len(X)}, {len(y)}, {len(groups)})")
    if pd.isna(y).any():
        raise UserError(f"{int(pd.isna(y).sum())} targets are missing or NaN; drop those rows first (align_targets)")
    if not np.isfinite(X).all():
        raise UserError("features contain NaN or Inf")
    bad = [p for p in probes if p not in PROBES]
    if bad:
        raise UserError(f"--probes: unknown probes {bad}; choose from {PROBES}")
    task = infer_task(y, task)
    if task == "regression":
        y = pd.to_numeric(pd.Series(y), errors="raise").to_numpy(np.float64)
        if np.unique(y).size < 2:
            raise UserError("the target is constant: nothing to predict")
        return X, y, groups, task, None
    y = y.astype(str)
    classes = np.unique(y)
    if len(classes) < 2:
        raise UserError(f"single-class target (every subject is {classes[0]!r}): classification needs two classes")
    return X, y, groups, task, classes


def _fit_predict(name, task, X, y, groups, tr, te, inner_splits, seed, classes):
    """One probe on one outer fold: nested grid search on the training subjects, then predict."""
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    inner_k = max(2, min(inner_splits, len(set(groups[tr]))))
    est, grid = _estimators(task, seed, len(tr) * (inner_k - 1) // inner_k)[name]
    pipe = Pipeline([("scale", StandardScaler()), ("est", est)])
    if grid:
        inner = subject_folds(y[tr], groups[tr], task, inner_k, seed)
        model = GridSearchCV(clone(pipe), grid, cv=inner, error_score=np.nan,
                             scoring="neg_mean_squared_error" if task == "regression" else "balanced_accuracy")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(X[tr], y[tr])
    else:
        model = clone(pipe).fit(X[tr], y[tr])
    score = _scores(model, X[te], len(classes)) if task == "classification" else None
    return model.predict(X[te]), score


def _probe_metrics(preds: pd.DataFrame, task: str, classes, n_boot: int, seed: int, features: str) -> pd.DataFrame:
    """Each metric on the pooled out-of-fold predictions, with a subject-bootstrap interval."""
    out = []
    for name, p in preds.groupby("probe", sort=False):
        yt, yp = p["y_true"].to_numpy(), p["y_pred"].to_numpy()
        sc = np.asarray(p["score"].tolist()) if "score" in p else None
        boot = SubjectBootstrap(p["subject_id"].to_numpy(), n_boot, seed)
        for m in PREDICTION_METRICS[task]:
            def stat(idx, m=m):
                return prediction_metric(task, m, yt[idx], yp[idx], None if sc is None else sc[idx], classes)

            lo, hi = boot.ci(stat)
            out.append({"features": features, "probe": name, "metric": m, "value": stat(np.arange(len(p))),
                        "ci_low": lo, "ci_high": hi, "n_rows": len(p), "n_subjects": boot.num_subjects})
    return pd.DataFrame(out)


def probe(model_or_path, data, target: str | pd.Series, *, targets_file: str | os.PathLike | None = None,
          subject_column: str | None = None, split: str | None = None, coords=None, pooling: str = "cls",
          windows: str = "average", window: int | None = None, stride: int | None = None, fc_baseline: bool = True,
          connectivity: tuple[str, ...] = tuple(CONNECTIVITY_FEATURES), batch_size: int = 32, progress: bool = True,
          precision: str = "fp32", trust_unverified: bool = False, **probe_kwargs) -> ProbeResult:
    """Frozen-embedding probes and the same probes on the connectivity ladder, side by side.

    Args:
        model_or_path: a model or anything ``load_model`` accepts.
        data: a store or time-series files.
        target: the target column (store phenotype, or in ``targets_file``), or the targets
            themselves: a ``pd.Series`` indexed by subject ID, named after the target.
        targets_file: a TSV/CSV keyed by subject; default: the store's phenotypes.
        subject_column: the subject column of ``targets_file``.
        split: store split (None: all recordings; the probe's own CV splits by subject).
        coords: coordinates for time-series files.
        pooling, windows, window, stride, batch_size: as :func:`embed_recordings`
            (``region_time`` embeddings are averaged over regions).
        fc_baseline: also probe the connectivity baselines.
        connectivity: which (``fc`` Pearson, ``fc_partial``, ``fc_tangent``, ``autocorr``; see
            :func:`brainlm.evaluate.baselines.connectivity_features`; the tangent reference
            is the mean over all windows and uses no targets).
        trust_unverified: as :func:`load_model`.
        **probe_kwargs: passed to :func:`run_probes` (task, probes, n_splits, ...).

    Returns:
        ``ProbeResult`` with ``features`` = ``"brainlm"``, ``"fc"``, ``"fc_partial"``, ``"fc_tangent"``, ``"autocorr"`` rows.
    """
    model = (load_model(model_or_path, trust_unverified=trust_unverified)
             if isinstance(model_or_path, (str, os.PathLike)) else model_or_path)
    recs = open_recordings(data, split, coords)
    target, targets = _probe_targets(target, data, targets_file, subject_column)
    window = window or model.window_length
    emb = embed_recordings(model.eval(), recs, pooling=pooling, average_regions=True, windows=windows,
                           window=window, stride=stride, batch_size=batch_size, progress=progress, precision=precision)
    feats = {"brainlm": emb}
    for kind in connectivity if fc_baseline else ():
        feats[kind] = fc_features(recs, window=window, windows=windows, stride=stride, kind=kind)
    y, keep, missing = align_targets(emb.index, targets)
    if missing:
        warnings.warn(f"{len(missing)} subjects have no {target!r} target and are left out: {missing}", stacklevel=2)
    if not keep.any():
        raise UserError(f"no subject of {recs.source} has a {target!r} target")
    results = [run_probes(e.X[keep], y[keep], e.index["subject_id"].to_numpy()[keep], features=name, **probe_kwargs)
               for name, e in feats.items()]
    return ProbeResult(pd.concat([r.metrics for r in results], ignore_index=True),
                       pd.concat([r.predictions for r in results], ignore_index=True),
                       sum((r.folds for r in results), []), results[0].task, missing, results[0].chance)


def _probe_targets(target: str | pd.Series, data, targets_file, subject_column) -> tuple[str, pd.Series]:
    """The target's name and its values per subject: given in memory, or a column of the store or of ``targets_file``."""
    if isinstance(target, pd.Series):
        return str(target.name), target.set_axis(target.index.map(normalize_subject_id))
    if targets_file is None:
        if isinstance(data, (list, tuple, Recordings)):
            raise UserError("time-series files carry no phenotypes: pass --targets")
        return target, load_targets(data, target)
    return target, load_targets(targets_file, target, subject_column)
