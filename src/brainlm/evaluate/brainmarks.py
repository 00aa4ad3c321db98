"""Brainmarks' evaluation protocol, reproduced exactly, and the target bins of its datasets.

Brainmarks (``github.com/clane9/Brainmarks``, PyPI ``brainmarks``) scores frozen features with
``python -m brainmarks.main_logistic`` (brainmarks 0.1.1). :func:`logistic_protocol` is that
protocol on a feature matrix, step for step:

1. the train and validation splits are merged; a ``StandardScaler`` then
   ``LogisticRegressionCV`` (``Cs=10``: 10 values of C log-spaced from 1e-4 to 1e4,
   ``max_iter=1000``, scored by balanced accuracy) is fitted on them, its folds five
   ``StratifiedShuffleSplit`` splits holding out the validation split's share, seeded by
   ``RandomState(4466).randint(1000, 10000)``;
2. the train and test splits are scored by accuracy, macro-F1 and balanced accuracy, each with
   the standard deviation over 500 stratified bootstrap resamples of that split
   (``sklearn.utils.resample(..., stratify=targets)`` from ``RandomState(4466)``);
3. the same is repeated on 100 random stratified re-splits of all samples (train size kept,
   ``train_test_split(..., random_state=4466 + trial)``), and their test scores are
   summarised by mean and standard deviation.

Classes are the distinct target values (class ids or text), encoded in sorted order.
Brainmarks encodes each split on its own (``np.unique`` per split), which gives the same codes
whenever every split holds every class; here the codes are shared, so a split that lacks a class
is still scored against the right labels.

Rows are put in Brainmarks' order before anything is drawn (``order``: the split, then each
sample's position in its split; for data that did not come from Brainmarks, the recording ID):
the random draws depend on row order, so a shuffled store gives the same numbers.

When ``brainmarks`` is installed, ``engine="auto"`` runs its own ``main_logistic.evaluate``
for the tables (``engine="brainlm"`` never does); the predictions used for the paired
comparison of two feature sets come from the implementation here, which the test suite checks
against a reference recorded with brainmarks 0.1.1 (``tests/data/brainmarks_logistic/``).

Bins (:data:`BINNINGS`, :data:`BRAINMARKS_TASKS`): Brainmarks classifies every target. Its
curation scripts bin continuous targets per dataset before the data are published: HCP-YA age
into fixed ranges (22-25, 26-30, 31+) and its cognitive scores into ``pandas.qcut`` terciles;
AABC and ADNI into quantile bins whose edges are rounded to 3 decimals (4 bins for most AABC
targets, 3 where a bin would hold under 20%); ADNI MMSE and CDR-SB at clinical cut-offs. A
store prepared from a Brainmarks dataset holds these labels already (``age_q``, the target
maps); :func:`brainmarks_bins` applies the same rules to raw values.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from brainlm.errors import UserError

from .protocol import Comparison

__all__ = [
    "quantile_edges",
    "quantile_bins",
    "BRAINMARKS_SEED",
    "METRICS",
    "BINNINGS",
    "BRAINMARKS_TASKS",
    "LogisticProtocol",
    "ProtocolResult",
    "brainmarks_bins",
    "brainmarks_connectome",
    "classification_scores",
    "bootstrap_indices",
    "logistic_protocol",
    "paired_comparison",
    "summary_table",
]

BRAINMARKS_SEED = 4466
METRICS = ("acc", "f1", "bacc")  # accuracy, macro-F1, balanced accuracy: Brainmarks' names
_SPLIT_RANK = {"train": 0, "validation": 1, "test": 2}

# rule -> (what it does, function of the raw values); every rule returns float labels, NaN missing.
_HCPYA_AGE = {"22-25": 0, "26-30": 1, "31-35": 2, "36+": 2}


def _hcpya_age(values: np.ndarray) -> np.ndarray:
    out = np.full(len(values), np.nan)
    for i, v in enumerate(values):
        if isinstance(v, str):
            out[i] = _HCPYA_AGE.get(v.strip(), np.nan)
        elif v is not None and np.isfinite(float(v)):  # an age in years
            out[i] = 0 if v <= 25 else (1 if v <= 30 else 2)
    return out


def _quantiles(n_bins: int, decimals: int | None):
    def rule(values: np.ndarray) -> np.ndarray:
        y = np.asarray(values, np.float64)
        labels = quantile_bins(y, y, n_bins, decimals=decimals).astype(np.float64)
        labels[~np.isfinite(y)] = np.nan
        return labels

    return rule


def _balanced_quantiles(values: np.ndarray) -> np.ndarray:
    """AABC's rule: 4 rounded quantile bins, 3 when the smallest of the 4 holds under 20%."""
    four = _quantiles(4, 3)(values)
    counts = np.bincount(four[np.isfinite(four)].astype(int), minlength=4)
    return four if counts.sum() and (counts / counts.sum()).min() >= 0.20 else _quantiles(3, 3)(values)


def _cutoffs(edges: tuple[float, ...]):
    def rule(values: np.ndarray) -> np.ndarray:
        y = np.asarray(values, np.float64)
        labels = np.digitize(y, edges, right=True).astype(np.float64)  # right-closed, as pandas.cut
        labels[~np.isfinite(y)] = np.nan
        return labels

    return rule


BINNINGS = {
    "hcpya_age": ("HCP-YA age ranges 22-25, 26-30, 31-35, 36+ -> 0, 1, 2, 2 (range text or years)", _hcpya_age),
    "qcut3": ("pandas.qcut terciles over the cohort (HCP-YA cognitive and personality scores)", _quantiles(3, None)),
    "quantile3": ("3 quantile bins, edges rounded to 3 decimals (ADNI age; AABC neo_o, neo_a, neo_c)",
                  _quantiles(3, 3)),
    "quantile4": ("4 quantile bins, edges rounded to 3 decimals (AABC age and cognitive composites)",
                  _quantiles(4, 3)),
    "quantile4_balanced": ("4 rounded quantile bins, 3 if a bin would hold under 20% (AABC neo_n, neo_e)",
                           _balanced_quantiles),
    "adni_mmse": ("MMSE clinical cut-offs: 0-23 dementia, 24-27 MCI, 28-30 normal", _cutoffs((23.0, 27.0))),
    "adni_cdrsb": ("CDR-SB clinical cut-offs: 0-0.5 normal, 1-4.5 mild, 5+ moderate/severe", _cutoffs((0.5, 4.5))),
}

# Brainmarks dataset name -> (the phenotype holding its labels in a store prepared from the
# dataset: a column or a target map's name, the rule its curation binned raw values with).
BRAINMARKS_TASKS: dict[str, tuple[str, str | None]] = {
    "hcpya_rest1lr_age": ("age_q", "hcpya_age"),
    "hcpya_rest1lr_gender": ("gender", None),
    "hcpya_rest1lr_flanker": ("flanker_unadj_q", "qcut3"),
    "hcpya_rest1lr_neofacn": ("neofac_n_q", "qcut3"),
    "hcpya_rest1lr_pmat24": ("pmat24_a_cr_q", "qcut3"),
    "hcpya_task21": ("cond_id", None),
    "aabc_sex": ("sex", None),
    "aabc_age": ("age_open", "quantile4"),
    "aabc_neo_n": ("neo_n", "quantile4_balanced"),
    "aabc_neo_e": ("neo_e", "quantile4_balanced"),
    "aabc_neo_o": ("neo_o", "quantile3"),
    "aabc_neo_a": ("neo_a", "quantile3"),
    "aabc_neo_c": ("neo_c", "quantile3"),
    "aabc_fluid_iq": ("FluidIQ_Tr35_60y", "quantile4"),
    "aabc_cryst_iq": ("CrystIQ_Tr35_60y", "quantile4"),
    "aabc_memory": ("Memory_Tr35_60y", "quantile4"),
    "adni_sex": ("sex", None),
    "adni_age": ("age", "quantile3"),
    "adni_mmse": ("mmse", "adni_mmse"),
    "adni_cdrsb": ("cdrsb", "adni_cdrsb"),
    "adni_diagnosis": ("diagnosis", None),
    "adni_ad_vs_cn": ("ad_vs_cn", None),
    "adni_pmci_vs_smci": ("pmci_vs_smci", None),
    "abide_dx": ("dx", None),
    "abide_age": ("age_bin", None),
    "abide_sex": ("sex", None),
    "adhd200_dx": ("dx", None),
    "adhd200_sex": ("gender", None),
    "ppmi_dx": ("dx", None),
    "ppmi_age": ("age_bin", None),
    "ppmi_sex": ("sex", None),
    "nsd_cococlip": ("category_id", None),
}


def brainmarks_bins(values, rule: str) -> np.ndarray:
    """Class labels of raw target values by one of Brainmarks' binning rules.

    Args:
        values: one raw value per sample (numbers; HCP-YA age may be its range text).
        rule: a key of :data:`BINNINGS`, or a Brainmarks dataset name of :data:`BRAINMARKS_TASKS`
            (its curation's rule). Quantile edges come from all the given values, as
            Brainmarks computes them over the whole curated cohort.

    Returns:
        float labels ``0 .. K-1``, NaN where a value is missing.
    """
    name = BRAINMARKS_TASKS[rule][1] if rule in BRAINMARKS_TASKS else rule
    if name not in BINNINGS:
        raise UserError(f"--bins: {rule!r} is neither a binning rule ({', '.join(BINNINGS)}) nor a Brainmarks "
                        f"dataset with one")
    values = np.asarray(values, dtype=object)
    if name != "hcpya_age":
        values = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(np.float64)
    return BINNINGS[name][1](values)


def brainmarks_connectome(series) -> np.ndarray:
    """Brainmarks' Pearson-FC baseline (its ``connectome`` model) of ``(T, R)`` recordings.

    Each region centred and scaled to unit norm over time (a norm under 1e-6 counts as 1e-6, so
    a flat region correlates 0 with every other), the ``R x R`` correlation, its upper triangle
    above the diagonal in row-major order: ``(N, R (R - 1) / 2)`` float32.
    """
    out = []
    for x in series:
        x = np.asarray(x, np.float32)
        x = x - x.mean(0, keepdims=True)
        x = x / np.maximum(np.linalg.norm(x, axis=0, keepdims=True), 1e-6)
        rows, cols = np.triu_indices(x.shape[1], k=1)
        out.append((x.T @ x)[rows, cols])
    return np.stack(out).astype(np.float32)


# --------------------------------------------------------------------------- quantile bins


def quantile_edges(y_ref, n_bins: int = 3, *, decimals: int | None = None) -> np.ndarray:
    """The ``n_bins - 1`` inner edges of equal-count bins of ``y_ref``.

    Edges are the ``k / n_bins`` quantiles (``k = 1 .. n_bins - 1``) of the finite values of
    ``y_ref``, linearly interpolated (numpy's default, as in ``pandas.qcut``). NaN values are
    ignored. ``decimals`` rounds the edges (Brainmarks' AABC and ADNI targets use 3).
    """
    if int(n_bins) != n_bins or n_bins < 2:
        raise ValueError(f"n_bins must be an integer >= 2, got {n_bins!r}")
    y_ref = np.asarray(y_ref, dtype=np.float64).ravel()
    y_ref = y_ref[np.isfinite(y_ref)]
    if y_ref.size == 0:
        raise ValueError("no finite values to compute quantile edges from")
    edges = np.quantile(y_ref, np.arange(1, int(n_bins)) / n_bins)
    return np.round(edges, decimals) if decimals is not None else edges


def quantile_bins(y_train, y, n_bins: int = 3, *, decimals: int | None = None) -> np.ndarray:
    """Class labels ``0 .. n_bins - 1`` of ``y`` in quantile bins whose edges come from ``y_train``.

    Bins are right-closed: label ``k`` means ``edge[k-1] < y <= edge[k]`` (see
    ``quantile_edges``), so a value equal to an edge goes to the lower bin, as in
    ``pandas.qcut`` and Brainmarks' ``np.digitize(..., right=True)``. Values below the first
    or above the last edge fall in the first or last bin (no value is dropped, whatever its
    range). With ``y = y_train`` and distinct edges the labels equal
    ``pandas.qcut(y_train, n_bins, labels=False)``. Tied edges (many equal values) leave
    some bins empty rather than failing. NaN in ``y`` gets label ``-1``.

    Brainmarks computes the edges once over the whole curated cohort, before its
    train/validation/test split; pass that cohort as ``y_train`` to reproduce its labels,
    or only the training values to keep test values out of the edges.

    Returns:
        int64 array shaped like ``y``.
    """
    edges = quantile_edges(y_train, n_bins, decimals=decimals)
    y = np.asarray(y, dtype=np.float64)
    labels = np.digitize(y, edges, right=True).astype(np.int64)
    labels[np.isnan(y)] = -1
    return labels


# --------------------------------------------------------------------------- scores


def classification_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Accuracy, macro-F1 and balanced accuracy of integer class ids, with scikit-learn's formulas
    operation for operation (so the numbers are the same to the last bit), without its checks.

    Classes are those found in ``y_true`` or ``y_pred``; macro-F1 counts a class never predicted
    as 0, balanced accuracy averages recall over the classes of ``y_true``.
    """
    labels, codes = np.unique(np.concatenate([y_true, y_pred]), return_inverse=True)
    K, n = len(labels), len(y_true)
    t, p = codes[:n], codes[n:]
    C = np.bincount(t * K + p, minlength=K * K).reshape(K, K)
    tp, true_sum, pred_sum = np.diagonal(C), C.sum(1), C.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = tp / true_sum
    recall = recall[~np.isnan(recall)]
    denom = 1.0 * true_sum.astype(np.float64) + pred_sum.astype(np.float64)
    f = np.divide(2.0 * tp.astype(np.float64), denom, out=np.zeros(K), where=denom != 0)
    return {"acc": float(np.average(y_true == y_pred)), "f1": float(np.nanmean(f)), "bacc": float(np.mean(recall))}


def bootstrap_indices(targets: np.ndarray, seed: int = BRAINMARKS_SEED, n_boot: int = 500) -> np.ndarray:
    """The ``(n_boot, N)`` row indices of Brainmarks' stratified bootstrap of one split.

    The draws of ``sklearn.utils.resample(..., stratify=targets)`` repeated ``n_boot`` times
    from one ``RandomState(seed)``, made without its per-call input checks (a thousand times
    faster; the test suite checks the indices are the same). They depend on the targets and the
    seed only, so two feature sets scored on the same split get the same resamples: their
    differences are paired.
    """
    from sklearn.utils import check_random_state
    from sklearn.utils.extmath import _approximate_mode

    rng = check_random_state(seed)
    _, codes = np.unique(np.asarray(targets), return_inverse=True)
    counts = np.bincount(codes)
    members = np.split(np.argsort(codes, kind="mergesort"), np.cumsum(counts)[:-1])
    out = np.empty((n_boot, len(codes)), np.int64)
    for b in range(n_boot):
        drawn = _approximate_mode(counts, len(codes), rng)
        picks = [rng.choice(members[k], drawn[k], replace=True) for k in range(len(counts))]
        out[b] = rng.permutation(np.concatenate(picks))
    return out


# --------------------------------------------------------------------------- the protocol


@dataclass(kw_only=True)
class LogisticProtocol:
    """The settings of ``brainmarks.main_logistic`` (its ``default_logistic.yaml``)."""

    seed: int = BRAINMARKS_SEED  # seed of the folds, the bootstrap and (plus the trial) the re-splits
    n_trials: int = 100  # random stratified re-splits after the fixed splits (0: none)
    Cs: int = 10  # values of C, log-spaced over 1e-4 .. 1e4
    cv_folds: int = 5  # StratifiedShuffleSplit splits choosing C
    max_iter: int = 1000
    cv_metric: str = "bacc"  # acc, f1 or bacc: what chooses C
    balanced: bool = False  # class_weight="balanced"
    n_boot: int = 500  # bootstrap resamples (fixed in Brainmarks)
    engine: str = "auto"  # auto: brainmarks' own code for the tables when installed; brainlm: ours

    def __post_init__(self) -> None:
        if self.cv_metric not in METRICS:
            raise UserError(f"cv_metric must be one of {METRICS}, got {self.cv_metric!r}")
        if self.engine not in ("auto", "brainlm", "brainmarks"):
            raise UserError(f"engine must be auto, brainlm or brainmarks, got {self.engine!r}")
        if self.n_trials < 0 or self.Cs < 1 or self.cv_folds < 2:
            raise UserError("n_trials must be >= 0, Cs >= 1 and cv_folds >= 2")


@dataclass
class ProtocolResult:
    """What :func:`logistic_protocol` returns.

    Attributes:
        table: Brainmarks' ``eval_table.csv``: one row per (trial, split) with ``trial`` (NaN for
            the fixed splits), ``C``, ``split`` (train, test) and each metric with ``<metric>_std``.
        test_targets, test_predictions: the fixed test split's class ids, for paired comparisons.
        labels: the class of each id.
        engine: ``"brainlm"`` or ``"brainmarks"`` (which code computed the table).
    """

    table: pd.DataFrame
    test_targets: np.ndarray
    test_predictions: np.ndarray
    labels: np.ndarray
    engine: str
    counts: dict[str, int] = field(default_factory=dict)


def _ordered(X: np.ndarray, y, split, order) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    split = np.asarray(split).astype(str)
    unknown = sorted(set(split) - set(_SPLIT_RANK))
    keep = np.isin(split, list(_SPLIT_RANK))  # extra splits (NSD's testid) are dropped, as Brainmarks does
    if unknown:
        warnings.warn(f"rows of splits {unknown} are left out (the protocol uses train, validation and test)",
                      stacklevel=3)
    y = np.asarray(y, dtype=object)
    keep &= ~pd.isna(y)
    order = np.arange(len(split)) if order is None else np.asarray(order)
    rank = np.array([_SPLIT_RANK.get(s, 3) for s in split])
    index = np.lexsort((order, rank))
    index = index[keep[index]]
    return index, split[index], y[index]


def _encode(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    numeric = pd.to_numeric(pd.Series(y), errors="coerce")
    values = numeric.to_numpy(np.float64) if not numeric.isna().any() else y.astype(str)
    labels, ids = np.unique(values, return_inverse=True)
    return ids.astype(np.int64), labels


def _fit(protocol: LogisticProtocol, X: np.ndarray, y: np.ndarray, validation_size: float):
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedShuffleSplit
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.utils import check_random_state
    from threadpoolctl import threadpool_limits

    rng = check_random_state(protocol.seed)
    cv = StratifiedShuffleSplit(n_splits=protocol.cv_folds, test_size=validation_size,
                                random_state=rng.randint(1000, 10000))
    scoring = {"acc": "accuracy", "f1": "f1_macro", "bacc": "balanced_accuracy"}[protocol.cv_metric]
    clf = Pipeline([("scaler", StandardScaler()), ("clf", LogisticRegressionCV(
        Cs=protocol.Cs, cv=cv, scoring=scoring, max_iter=protocol.max_iter,
        class_weight="balanced" if protocol.balanced else None, random_state=rng))])
    with warnings.catch_warnings(), threadpool_limits(1, user_api="blas"):
        # One BLAS thread: these are small problems, and threads only wait on each other (several
        # times slower on a busy machine); the numbers are the same.
        warnings.simplefilter("ignore")  # convergence and deprecation chatter, as Brainmarks prints it
        return clf.fit(X, y)


def _evaluate(protocol: LogisticProtocol, X: dict, y: dict, validation_size: float, trial) -> tuple[pd.DataFrame, np.ndarray]:
    """One fit and its rows (Brainmarks' ``evaluate``); also the test predictions."""
    clf = _fit(protocol, X["train"], y["train"], validation_size)
    rows, test_pred = [], None
    for split in ("train", "test"):
        pred = clf.predict(X[split])
        test_pred = pred if split == "test" else test_pred
        boot = bootstrap_indices(y[split], protocol.seed, protocol.n_boot)
        samples = [classification_scores(y[split][idx], pred[idx]) for idx in boot]
        record = {"trial": trial, "C": float(clf[-1].C_[0]), "split": split}
        for metric, value in classification_scores(y[split], pred).items():
            record[metric] = value
            record[f"{metric}_std"] = float(np.std([s[metric] for s in samples]))
        rows.append(record)
    return pd.DataFrame(rows), test_pred


def _brainmarks_evaluate(protocol: LogisticProtocol, X: dict, y: dict, validation_size: float, trial) -> pd.DataFrame:
    """The same rows from brainmarks' own ``main_logistic.evaluate``."""
    from types import SimpleNamespace

    from brainmarks.main_logistic import evaluate

    args = SimpleNamespace(seed=protocol.seed, cv_folds=protocol.cv_folds, cv_metric=protocol.cv_metric,
                           balanced_sampling=protocol.balanced, Cs=protocol.Cs, max_iter=protocol.max_iter,
                           num_workers=None, model="", representation="", dataset="", metrics=list(METRICS))
    from threadpoolctl import threadpool_limits

    with warnings.catch_warnings(), threadpool_limits(1, user_api="blas"):
        warnings.simplefilter("ignore")
        table = evaluate(args, X, y, validation_size=validation_size, trial_id=trial)
    return table[["trial", "C", "split", *[f"{m}{s}" for m in METRICS for s in ("", "_std")]]]


def _engine(name: str) -> str:
    if name == "brainlm":
        return "brainlm"
    import logging

    # Brainmarks imports every model wrapper it has and logs one warning per wrapper whose own
    # package is missing (pycortex, brain-jepa, ...): none is used here, so they are not shown.
    plugins = logging.getLogger("brainmarks.models")
    level = plugins.level
    plugins.setLevel(logging.ERROR)
    try:
        import brainmarks.main_logistic  # noqa: F401
    except ImportError:
        if name == "brainmarks":
            raise UserError("--engine brainmarks: brainmarks is not installed (pip install --no-deps "
                            "brainmarks==0.1.1, see docs/brainmarks.md)") from None
        return "brainlm"
    finally:
        plugins.setLevel(level)
    return "brainmarks"


def logistic_protocol(X, y, split, *, order=None, protocol: LogisticProtocol | None = None) -> ProtocolResult:
    """Brainmarks' logistic protocol on one feature matrix (module docstring).

    Args:
        X: ``(N, F)`` features, one row per sample.
        y: ``(N,)`` targets (class ids or text); rows with a missing target are left out.
        split: ``(N,)`` ``train`` / ``validation`` / ``test`` per row (other names are left out).
        order: ``(N,)`` position of each row within its split (Brainmarks' sample order); None:
            the given order.
        protocol: the settings (Brainmarks' defaults).

    Returns:
        :class:`ProtocolResult`.

    Raises:
        UserError: a split without samples, fewer than two classes, NaN features.
    """
    protocol = protocol or LogisticProtocol()
    X = np.asarray(X, np.float64).reshape(len(X), -1)
    if not np.isfinite(X).all():
        raise UserError("features contain NaN or Inf")
    index, split, y = _ordered(X, y, split, order)
    X = X[index]
    ids, labels = _encode(y)
    if len(labels) < 2:
        raise UserError(f"the target has {len(labels)} class(es) among the labelled samples; the protocol needs two")
    parts = {s: split == s for s in _SPLIT_RANK}
    counts = {s: int(m.sum()) for s, m in parts.items()}
    empty = [s for s, n in counts.items() if n == 0]
    if empty:
        raise UserError(f"the Brainmarks protocol needs labelled samples in train, validation and test; none in {empty}")
    train = parts["train"] | parts["validation"]
    # Brainmarks concatenates train then validation: the rows are already in that order.
    Xs, ys = {"train": X[train], "test": X[parts["test"]]}, {"train": ids[train], "test": ids[parts["test"]]}
    validation_size = counts["validation"] / int(train.sum())
    engine = _engine(protocol.engine)
    tables, test_pred = [], None
    for trial in [None, *range(1, protocol.n_trials + 1)]:
        if trial is not None:
            from sklearn.model_selection import train_test_split

            all_X, all_y = np.concatenate([Xs["train"], Xs["test"]]), np.concatenate([ys["train"], ys["test"]])
            xtr, xte, ytr, yte = train_test_split(all_X, all_y, train_size=len(ys["train"]), stratify=all_y,
                                                  random_state=protocol.seed + trial)
            Xt, yt = {"train": xtr, "test": xte}, {"train": ytr, "test": yte}
        else:
            Xt, yt = Xs, ys
        if engine == "brainmarks":
            tables.append(_brainmarks_evaluate(protocol, Xt, yt, validation_size, trial))
            if trial is None:
                test_pred = _fit(protocol, Xt["train"], yt["train"], validation_size).predict(Xt["test"])
        else:
            table, pred = _evaluate(protocol, Xt, yt, validation_size, trial)
            tables.append(table)
            test_pred = pred if trial is None else test_pred
    table = pd.concat(tables, ignore_index=True)
    return ProtocolResult(table, ys["test"], np.asarray(test_pred), labels, engine, counts)


def summary_table(results: dict[str, ProtocolResult], *, dataset: str = "", clf: str = "logistic") -> pd.DataFrame:
    """Brainmarks' result tables side by side: per feature set, the fixed test split and the mean
    and standard deviation over the random re-splits (its printed summary)."""
    rows = []
    for name, res in results.items():
        model, _, repr_ = name.partition(":")
        t = res.table
        fixed = t[t["trial"].isna() & (t["split"] == "test")].iloc[0]
        rows.append({"model": model, "repr": repr_ or "cls", "clf": clf, "dataset": dataset, "splits": "fixed",
                     "n_trials": 1, "C": fixed["C"], **{k: fixed[k] for m in METRICS for k in (m, f"{m}_std")}})
        trials = t[t["trial"].notna() & (t["split"] == "test")]
        if len(trials):
            row = {"model": model, "repr": repr_ or "cls", "clf": clf, "dataset": dataset, "splits": "random",
                   "n_trials": len(trials), "C": trials["C"].mean()}
            for m in METRICS:
                row[m], row[f"{m}_std"] = trials[m].mean(), trials[m].std()
            rows.append(row)
    return pd.DataFrame(rows)


def paired_comparison(model: ProtocolResult, baseline: ProtocolResult, metric: str = "bacc",
                      seed: int = BRAINMARKS_SEED, n_boot: int = 500) -> Comparison:
    """Model minus baseline on the fixed test split, over Brainmarks' stratified bootstrap resamples
    (the same resamples for both): the 95% percentile interval and ``p_boot``."""
    from .protocol import SubjectBootstrap

    if not np.array_equal(model.test_targets, baseline.test_targets):
        raise UserError("the two feature sets were not scored on the same test samples")
    diffs = np.array([classification_scores(model.test_targets[i], model.test_predictions[i])[metric]
                      - classification_scores(baseline.test_targets[i], baseline.test_predictions[i])[metric]
                      for i in bootstrap_indices(model.test_targets, seed, n_boot)])
    lo, hi = SubjectBootstrap.interval(diffs)
    return Comparison(lo, hi, float((diffs <= 0).mean()))
