"""The pieces every evaluation shares: task inference, subject-grouped folds, the subject
bootstrap with paired comparisons, and early stopping.

``probe``, ``finetune``, ``fingerprint``, the brain-genetics analyses (CCA, fusion,
contrastive) and ``brainlm benchmark`` all use these, so a number from one command means
the same as a number from another:

- :func:`infer_task`: text, boolean or two-valued targets are classification, anything else
  numeric is regression.
- :func:`subject_folds`: ``GroupKFold`` (regression) or ``StratifiedGroupKFold``
  (classification), shuffled with a seed; every row of a subject is in the same fold
  (checked, because every claim rests on it). With one row per subject these are plain
  ``KFold`` / ``StratifiedKFold``.
- :class:`SubjectBootstrap`: resamples of subjects with replacement (all rows of a drawn
  subject come along); percentile intervals, and paired differences between two methods
  scored on the same resamples (``p_boot``: the fraction of resamples in which the first
  is not better).
- :class:`EarlyStopping`: patience on a validation loss, keeping the best state.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from brainlm.errors import UserError
from brainlm.options import Options, at_least, option

__all__ = ["EvaluationOptions", "TASKS", "TASK_CHOICES", "permutation_p", "infer_task", "subject_folds", "SubjectBootstrap", "Comparison", "EarlyStopping",
           "MIN_UNITS", "minimum_units", "few_distinct_share"]

TASKS = ("regression", "classification")
TASK_CHOICES = ("auto", *TASKS)  # --task: auto infers it from the target (infer_task)


@dataclass(kw_only=True)
class EvaluationOptions(Options):
    """Subject-grouped cross-validation and subject-bootstrap settings, shared by every evaluation."""

    folds: int = option(5, "cross-validation folds (grouped by subject)", check=at_least(2))
    bootstrap: int = option(1000, "subject resamples for the 95% intervals", check=at_least(0))
    seed: int = option(0, "seed of folds, resamples and probes")


def infer_task(y, task: str = "auto") -> str:
    """``"classification"`` for text, boolean or two-valued targets, else ``"regression"``.

    A task other than ``"auto"`` is checked and returned as is. Numbers with a few text values
    among them are refused (with ``"auto"`` and ``"regression"``): a typo in a numeric column
    would otherwise make every distinct number a class.
    """
    if task not in TASK_CHOICES:
        raise UserError(f"--task must be 'auto', 'regression' or 'classification', got {task!r}")
    s = pd.Series(np.asarray(y, dtype=object))
    if task == "classification":
        return task
    if s.map(lambda v: isinstance(v, (bool, np.bool_))).any() and task == "auto":
        return "classification"
    num = pd.to_numeric(s, errors="coerce")
    text = s[num.isna() & s.notna()]
    if len(text) and (task == "regression" or len(text) < len(s)):
        # numbers with a few words among them are a typo, not classes: "12, 15, n/a, 9" is not a 4-class target
        values = ", ".join(repr(v) for v in pd.unique(text)[:3])
        raise UserError(f"--target: {len(text)} of {len(s)} values are not numbers ({values}) while the others are; "
                        "fix them (empty means missing) or pass --task classification to treat every value as a class")
    if task == "regression":
        return task
    if len(text):
        return "classification"
    return "classification" if num.nunique() <= 2 else "regression"


def subject_folds(y, groups, task: str, n_splits: int, seed: int = 0, *,
                  flag: str = "--folds") -> list[tuple[np.ndarray, np.ndarray]]:
    """Shuffled folds that keep every row of a subject together (stratified for classification).

    Args:
        y: ``(N,)`` targets (used for stratification).
        groups: ``(N,)`` subject of each row.
        task: ``"regression"`` or ``"classification"``.
        n_splits: folds; at least 2 and at most the number of subjects.
        flag: the flag ``n_splits`` came from, for messages (``--cv`` for cross-validation).

    Returns:
        ``[(train_idx, test_idx), ...]``.
    """
    from sklearn.model_selection import (
        GroupKFold,
        KFold,
        StratifiedGroupKFold,
        StratifiedKFold,
    )

    groups = np.asarray(groups).astype(str)
    n_subjects = len(np.unique(groups))
    if n_splits < 2:
        raise UserError(f"{flag} must be at least 2, got {n_splits}")
    if n_subjects < n_splits:
        raise UserError(f"{n_subjects} subjects are fewer than the {n_splits} folds; use fewer {flag}")
    if n_subjects == len(groups):  # one row per subject: grouped K-fold is plain K-fold
        splitter = (StratifiedKFold if task == "classification" else KFold)(n_splits, shuffle=True, random_state=seed)
    else:
        splitter = (StratifiedGroupKFold if task == "classification" else GroupKFold)(
            n_splits, shuffle=True, random_state=seed)
    y_split = np.asarray(y).astype(str) if task == "classification" else np.zeros(len(groups))
    folds = list(splitter.split(np.zeros(len(groups)), y_split, groups if n_subjects < len(groups) else None))
    for f, (tr, te) in enumerate(folds):
        overlap = set(groups[tr]) & set(groups[te])
        if overlap:  # cannot happen with grouped splitters; checked because the claim rests on it
            raise RuntimeError(f"subjects {sorted(overlap)[:5]} in both train and test of fold {f}")
    return folds


def permutation_p(observed, null, *, two_sided: bool = False) -> np.ndarray:
    """Permutation p-values ``(1 + #{null >= observed}) / (1 + n)``, per column of ``null`` ``(n, ...)``.

    A null value within 1e-12 of the observed one counts as reaching it (floating-point ties of the
    same computation). ``two_sided`` compares magnitudes. NaN where ``observed`` is not finite.
    """
    observed, null = np.asarray(observed, float), np.asarray(null, float)
    if two_sided:
        observed, null = np.abs(observed), np.abs(null)
    reach = (null >= observed - 1e-12).sum(0)
    return np.where(np.isfinite(observed), (1 + reach) / (1 + len(null)), np.nan)


def few_distinct_share(n: int) -> float:
    """The share of bootstrap resamples of ``n`` units that hold at most two distinct units.

    A resample draws ``n`` of ``n`` units with replacement; it holds one distinct unit with
    probability ``n * n^-n`` and exactly two with ``C(n, 2) (2^n - 2) n^-n``.
    """
    if n < 1:
        return 1.0
    return min(1.0, (n + math.comb(n, 2) * (2 ** n - 2)) / n ** n)


def minimum_units(level: float = 0.95) -> int:
    """The fewest independent units (subjects, or regions) a verdict rests on.

    Below it, more than the ``(1 - level) / 2`` tail of the resamples hold only one or two of the
    units, so an end of the percentile interval is set by resamples that have seen one or two
    subjects: with 5 subjects 9.8% of resamples do, with 6 subjects 2.0%. For a 95% interval
    this gives 6.
    """
    tail = (1 - level) / 2
    n = 1
    while few_distinct_share(n) >= tail:
        n += 1
    return n


MIN_UNITS = minimum_units()


class SubjectBootstrap:
    """Bootstrap resamples of subjects (with replacement), each a row index array.

    Args:
        groups: ``(N,)`` subject of each row; all rows of a drawn subject enter the resample.
        n_boot: number of resamples (0: none, intervals are NaN).
        seed: seed of the draws.
        valid: optional ``valid(idx) -> bool``; resamples it rejects are redrawn (e.g. a
            resample with one class has no AUROC). At most ``20 * n_boot`` draws are tried.
    """

    def __init__(self, groups, n_boot: int = 1000, seed: int = 0, valid: Callable[[np.ndarray], bool] | None = None):
        groups = np.asarray(groups).astype(str)
        subjects, inverse = np.unique(groups, return_inverse=True)
        members = [np.flatnonzero(inverse == g) for g in range(len(subjects))]
        rng = np.random.default_rng(seed)
        self.resamples: list[np.ndarray] = []
        for _ in range(20 * n_boot):
            if len(self.resamples) >= n_boot:
                break
            idx = np.concatenate([members[g] for g in rng.integers(0, len(subjects), len(subjects))])
            if valid is None or valid(idx):
                self.resamples.append(idx)
        self.num_subjects = len(subjects)

    def __len__(self) -> int:
        return len(self.resamples)

    def distribution(self, statistic: Callable[[np.ndarray], float]) -> np.ndarray:
        """``statistic(idx)`` on every resample, ``(n_boot,)``."""
        return np.asarray([statistic(idx) for idx in self.resamples], dtype=float)

    @staticmethod
    def interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
        """Percentile interval of bootstrap samples (NaN when there are none)."""
        samples = np.asarray(samples, float)
        samples = samples[np.isfinite(samples)]
        if len(samples) == 0:
            return float("nan"), float("nan")
        lo, hi = np.percentile(samples, [50 * (1 - level), 50 * (1 + level)])
        return float(lo), float(hi)

    def ci(self, statistic: Callable[[np.ndarray], float], level: float = 0.95) -> tuple[float, float]:
        return self.interval(self.distribution(statistic), level)

    def compare(self, statistic_a: Callable[[np.ndarray], float], statistic_b: Callable[[np.ndarray], float],
                higher_is_better: bool = True) -> "Comparison":
        """A minus B on the same resamples: the difference, its interval and ``p_boot``."""
        a, b = self.distribution(statistic_a), self.distribution(statistic_b)
        diff = a - b if higher_is_better else b - a
        lo, hi = self.interval(diff)
        finite = diff[np.isfinite(diff)]
        p = float((finite <= 0).mean()) if len(finite) else float("nan")
        return Comparison(lo, hi, p)


@dataclass(frozen=True)
class Comparison:
    """A paired bootstrap comparison: interval of the improvement and the fraction of
    resamples without one (``p_boot``)."""

    diff_lo: float
    diff_hi: float
    p_boot: float

    @property
    def within_noise(self) -> bool:
        """True unless the interval of the difference lies strictly above or strictly below 0.

        An end exactly at 0 is not evidence: a rival wrong on one region of 48 gives resamples
        without that region, where the two tie, and an interval ``[0, +0.06]``; identical results
        (both ends 0) are within noise too.
        """
        return not (self.diff_lo > 0 or self.diff_hi < 0)


class EarlyStopping:
    """Stop when a validation loss has not improved for ``patience`` checks; keep the best state.

    Usage::

        stop = EarlyStopping(patience=5)
        for epoch in ...:
            ...
            if stop.update(val_loss, epoch, model.state_dict()):
                break
        model.load_state_dict(stop.best_state)
    """

    def __init__(self, patience: int, min_delta: float = 0.0):
        if patience < 1:
            raise UserError(f"--patience must be at least 1, got {patience}")
        self.patience, self.min_delta = patience, min_delta
        self.best, self.best_epoch, self.best_state, self.waited = float("inf"), None, None, 0

    def update(self, loss: float, epoch: int, state: dict | None = None) -> bool:
        """Record one check; returns True when training should stop."""
        if loss < self.best - self.min_delta:
            self.best, self.best_epoch, self.waited = float(loss), epoch, 0
            self.best_state = copy.deepcopy(state) if state is not None else None
            return False
        self.waited += 1
        return self.waited >= self.patience

