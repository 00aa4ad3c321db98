"""Group contrasts with subject-level permutation tests, FDR over features, and subject intervals.

A **grouping** (:func:`resolve_groups`) splits recordings into two levels of a phenotype column:

- two values (text or numbers): those two; more text values: the two named by ``--levels``;
  numbers with more than two values: at the median of the subjects' values (``low``: at or
  below it, ``high``: above), as the paper splits depression scores into low and high;
- **between subjects** when every subject has recordings of one level only (clinical groups):
  each subject contributes the mean of its recordings, and the test permutes the level labels
  among subjects; **within subjects** when subjects have recordings of both levels (states such
  as task and rest): each such subject contributes the difference of its two means, and the
  test flips the sign of whole subjects' differences. Either way the unit that is permuted is
  a subject, never a recording or a window.

A **contrast** (:func:`group_contrast`) of per-recording values ``(N, F)`` gives, per feature,
the mean of each level, the difference (second level minus first), its 95% interval from
resampling subjects (:class:`brainlm.evaluate.protocol.SubjectBootstrap`), an effect size
(Cohen's d on subject means; d_z for within-subject differences; its interval is the
difference's in units of the same SD), the two-sided permutation
p-value ``(1 + #{|null| >= |observed|}) / (1 + permutations)``, and the Benjamini-Hochberg
q-value over the features tested together (``scipy.stats.false_discovery_control``).

A **distribution against an expected one** (:func:`distance_test`; an attention map against a
uniform map): each subject's distribution over ``F`` cells minus the expected one is that
subject's deviation; the statistic is the total variation distance of the subjects' mean
deviation, ``0.5 * sum_f |mean_s d_sf|``, and its null flips the sign of whole subjects'
deviations (what a distribution that is the expected one plus noise symmetric around it gives),
as the within-subject contrasts do. With ``S`` subjects there are ``2^(S-1)`` distinct null
values, so few subjects cannot give a small p. Deviations below ``resolution`` (the
arithmetic's: float32 maps carry rounding errors near 1e-7) count as 0, so that rounding,
which is the same in every subject, is never taken for a consistent difference.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from brainlm.errors import UserError
from brainlm.evaluate.protocol import SubjectBootstrap, permutation_p

__all__ = ["Groups", "SubjectValues", "resolve_groups", "group_contrast", "distance_test", "fdr", "subject_means",
           "median_split", "as_label"]


@dataclass(frozen=True)
class Groups:
    """Two levels of a phenotype column over the recordings analysed.

    Attributes:
        column: the phenotype column.
        levels: the two levels, ``(first, second)``; differences are second minus first.
        level: ``(N,)`` 0 or 1 per recording, -1 for recordings outside the contrast.
        subjects: ``(N,)`` subject of each recording.
        design: ``"between"`` or ``"within"`` subjects (module docstring).
        how: how the levels were made, for reports.
    """

    column: str
    levels: tuple[str, str]
    level: np.ndarray
    subjects: np.ndarray
    design: str
    how: str

    def counts(self) -> tuple[int, int]:
        """Subjects in each level (within: subjects with both, twice)."""
        used = self.level >= 0
        return tuple(len(set(self.subjects[used & (self.level == k)])) for k in (0, 1))

    def describe(self) -> str:
        a, b = self.levels
        na, nb = self.counts()
        if self.design == "within":
            return (f"{self.column}: {b} minus {a} within each of {na} subjects with recordings of both "
                    f"(subject-level sign-flip permutations){self.how}")
        return f"{self.column}: {b} ({nb} subjects) minus {a} ({na} subjects) (subject-label permutations){self.how}"


def resolve_groups(values, subjects, column: str, levels: tuple[str, ...] = (), *, where: str = "") -> Groups:
    """Two levels of ``column`` (module docstring), checked.

    Args:
        values: ``(N,)`` the column's value for each recording (NaN: left out).
        subjects: ``(N,)`` subject of each recording.
        levels: the two levels to contrast (``--levels``), when the column has more.
        where: the data, for messages.

    Raises:
        UserError: one level, more than two without ``--levels``, an unknown level, or fewer
            than two subjects in a level (two subjects with both levels, within subjects).
    """
    values = pd.Series(list(values), dtype=object)
    subjects = np.asarray(subjects).astype(str)
    present = values.map(lambda v: not (v is None or (isinstance(v, float) and np.isnan(v)) or str(v) == ""))
    numeric = pd.to_numeric(values[present], errors="coerce")
    is_number = bool(len(numeric)) and numeric.notna().all()
    distinct = sorted(set(values[present].map(_text)), key=lambda v: (float(v) if is_number else 0, v))
    how = ""
    if levels:
        if len(levels) != 2 or len(set(levels)) != 2:
            raise UserError(f"--levels must name two different levels of {column!r}, got {','.join(levels)}")
        unknown = [lv for lv in levels if lv not in distinct]
        if unknown:
            raise UserError(f"--levels {','.join(levels)}: {column!r} has no level {unknown[0]!r} in {where} "
                            f"(it has {', '.join(distinct[:10])})")
        text = values.map(_text)
        level = np.where(present & (text == levels[0]), 0, np.where(present & (text == levels[1]), 1, -1))
        chosen = (str(levels[0]), str(levels[1]))
    elif len(distinct) < 2:
        raise UserError(f"--group {column!r} has {'one level' if distinct else 'no values'} in {where} "
                        f"({', '.join(distinct)}): a contrast needs two")
    elif len(distinct) == 2:
        text = values.map(_text)
        level = np.where(present, (text == distinct[1]).astype(int), -1)
        chosen = (distinct[0], distinct[1])
    elif is_number:
        split, median = median_split(values, subjects)
        level = np.select([split == "low", split == "high"], [0, 1], -1)
        chosen, how = ("low", "high"), f"; split at the subjects' median {median:g} (low: at or below)"
    else:
        raise UserError(f"--group {column!r} has {len(distinct)} levels in {where} ({', '.join(distinct[:10])}): "
                        "choose two with --levels A,B")
    level = np.asarray(level, dtype=np.int64)
    both = {s for s in set(subjects[level == 0]) & set(subjects[level == 1])}
    design = "within" if both else "between"
    if design == "within":
        level = np.where(np.isin(subjects, list(both)), level, -1)
        if len(both) < 2:
            raise UserError(f"--group {column!r}: only {len(both)} subject has recordings of both levels in {where}; "
                            "a within-subject contrast needs at least two")
    else:
        counts = [len(set(subjects[level == k])) for k in (0, 1)]
        if min(counts) < 2:
            small = chosen[int(np.argmin(counts))]
            raise UserError(f"--group {column!r}: level {small!r} has {min(counts)} subject in {where}; "
                            "a contrast needs at least two subjects per group")
    return Groups(column, chosen, level, subjects, design, how)


def median_split(values, subjects) -> tuple[np.ndarray, float]:
    """Numbers -> ``"low"`` (at or below the median of the subjects' mean values) / ``"high"``; ``""`` where missing."""
    number = pd.to_numeric(pd.Series(list(values)), errors="coerce").to_numpy(float)
    median = float(pd.Series(number).groupby(np.asarray(subjects).astype(str)).mean().dropna().median())
    return np.where(np.isnan(number), "", np.where(number > median, "high", "low")), median


def as_label(v) -> str:
    """A phenotype value as a label: ``1.0`` -> ``"1"``, missing -> ``""``."""
    if v is None or (isinstance(v, (float, np.floating)) and np.isnan(v)):
        return ""
    return _text(v)


def _text(v) -> str:
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


@dataclass
class SubjectValues:
    """Per-recording values reduced to one row per subject (module docstring).

    Attributes:
        values: ``(S, F)``: between, each subject's mean over its recordings; within, the
            difference of its two level means.
        labels: ``(S,)`` the level of each subject (within: all 1).
        subjects: ``(S,)`` subject IDs.
        design: ``"between"`` or ``"within"``.
    """

    values: np.ndarray
    labels: np.ndarray
    subjects: np.ndarray
    design: str

    @classmethod
    def of(cls, values: np.ndarray, groups: Groups) -> "SubjectValues":
        values = np.asarray(values, np.float64).reshape(len(groups.level), -1)  # (N, F)
        frame = pd.DataFrame(values).assign(_subject=groups.subjects, _level=groups.level)
        means = frame[frame["_level"] >= 0].groupby(["_subject", "_level"]).mean()
        if groups.design == "within":
            diff = means.xs(1, level="_level") - means.xs(0, level="_level")
            return cls(diff.to_numpy(), np.ones(len(diff), dtype=np.int64), diff.index.to_numpy(), "within")
        subjects = means.index.get_level_values("_subject").to_numpy()
        labels = means.index.get_level_values("_level").to_numpy().astype(np.int64)
        return cls(means.to_numpy(), labels, subjects, "between")

    def difference(self, rows: np.ndarray | None = None) -> np.ndarray:
        """``(F,)`` second level minus first (within: the mean difference) on the subject rows ``rows``."""
        v, lab = (self.values, self.labels) if rows is None else (self.values[rows], self.labels[rows])
        if self.design == "within":
            return v.mean(0)
        return v[lab == 1].mean(0) - v[lab == 0].mean(0)

    @property
    def scale(self) -> np.ndarray:
        """``(F,)`` the standard deviation effect sizes are in: the pooled SD of the subjects' values
        (within: the SD of their differences), NaN where it is 0."""
        v, lab = self.values, self.labels
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # one subject in a level: NaN
            if self.design == "within":
                sd = v.std(0, ddof=1)
            else:
                a, b = v[lab == 0], v[lab == 1]
                sd = np.sqrt(((len(a) - 1) * a.var(0, ddof=1) + (len(b) - 1) * b.var(0, ddof=1))
                             / max(len(a) + len(b) - 2, 1))
        return np.where(sd > 0, sd, np.nan)

    def effect_size(self, rows: np.ndarray | None = None) -> np.ndarray:
        """``(F,)`` the difference on the subject rows ``rows`` in units of :attr:`scale`: Cohen's d
        (within: d_z) on all rows; on a resample, its difference in the same units (a resample's
        own SD, with few subjects per level, would make the interval explode)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.difference(rows) / self.scale

    def null(self, permutations: int, seed: int) -> np.ndarray:
        """``(n, F)`` differences under the null: subject labels permuted (between) or subjects'
        differences sign-flipped (within)."""
        rng = np.random.default_rng(seed)
        v = np.nan_to_num(self.values)
        if self.design == "within":
            signs = rng.choice([-1.0, 1.0], size=(permutations, len(v)))  # (n, S)
            return signs @ v / len(v)
        shuffled = np.stack([rng.permutation(self.labels) for _ in range(permutations)]).astype(float)  # (n, S)
        return shuffled @ v / self.labels.sum() - (1 - shuffled) @ v / (1 - self.labels).sum()

    def bootstrap(self, resamples: int, seed: int) -> SubjectBootstrap:
        """Subject resamples that keep at least one subject of each level (between; two within)."""
        if self.design == "within":
            return SubjectBootstrap(self.subjects, resamples, seed, valid=lambda idx: len(set(idx)) > 1)
        return SubjectBootstrap(self.subjects, resamples, seed,
                                valid=lambda idx: 0 < self.labels[idx].sum() < len(idx))


def subject_means(values: np.ndarray, subjects) -> tuple[np.ndarray, np.ndarray]:
    """``(N, ...)`` per-recording values -> (``(S,)`` subjects, ``(S, ...)`` each subject's mean)."""
    values = np.asarray(values, np.float64)
    frame = pd.DataFrame(values.reshape(len(values), -1)).groupby(np.asarray(subjects).astype(str)).mean()
    return frame.index.to_numpy(), frame.to_numpy().reshape(len(frame), *values.shape[1:])


def distance_test(values: np.ndarray, expected: np.ndarray, *, permutations: int = 1000, seed: int = 0,
                  resolution: float = 1e-6) -> tuple[float, float]:
    """How far the subjects' mean distribution is from ``expected``, and whether noise explains it (module docstring).

    Args:
        values: ``(S, F)`` one distribution per subject (rows sum to 1).
        expected: ``(F,)`` the distribution to test against (e.g. each cell's share of the regions).
        permutations: sign flips of the subjects' deviations (0: no p).
        resolution: deviations smaller than this count as 0.

    Returns:
        The total variation distance (0 to 1) and its sign-flip permutation p (NaN without permutations).
    """
    d = np.asarray(values, np.float64) - np.asarray(expected, np.float64)  # (S, F)
    d[np.abs(d) < resolution] = 0.0
    deviation = SubjectValues(d, np.ones(len(d), np.int64), np.arange(len(d)).astype(str), "within")
    observed = 0.5 * float(np.abs(deviation.difference()).sum())
    if not permutations:
        return observed, float("nan")
    null = 0.5 * np.abs(deviation.null(permutations, seed)).sum(1)  # (permutations,)
    return observed, float(permutation_p(observed, null))


def fdr(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values over the finite p-values (NaN stays NaN)."""
    from scipy.stats import false_discovery_control

    p = np.asarray(p, float)
    q = np.full_like(p, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        q[finite] = false_discovery_control(p[finite], method="bh")
    return q


def group_contrast(values: np.ndarray, groups: Groups, features, *, permutations: int = 1000,
                   bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    """The contrast of every feature (module docstring).

    Args:
        values: ``(N, F)`` one row per recording.
        groups: from :func:`resolve_groups`.
        features: ``F`` names.

    Returns:
        One row per feature: ``feature``, ``mean_<first>``, ``mean_<second>``, ``difference``,
        ``ci_low``, ``ci_high``, ``effect_size`` with ``effect_ci_low`` / ``effect_ci_high``, ``p``, ``q``.
    """
    sv = SubjectValues.of(values, groups)
    observed = sv.difference()
    boot = sv.bootstrap(bootstrap, seed)
    empty = np.zeros((0, len(observed)))
    draws = np.stack([sv.difference(idx) for idx in boot.resamples]) if len(boot) else empty
    effects = np.stack([sv.effect_size(idx) for idx in boot.resamples]) if len(boot) else empty
    intervals = np.array([SubjectBootstrap.interval(draws[:, f]) for f in range(len(observed))]).reshape(-1, 2)
    d_intervals = np.array([SubjectBootstrap.interval(effects[:, f]) for f in range(len(observed))]).reshape(-1, 2)
    p = permutation_p(observed, sv.null(permutations, seed), two_sided=True) if permutations else np.full(len(observed), np.nan)
    per_level = pd.DataFrame(np.asarray(values, float).reshape(len(groups.level), -1)).assign(
        _s=groups.subjects, _l=groups.level)
    per_level = per_level[per_level["_l"] >= 0].groupby(["_l", "_s"]).mean().groupby(level="_l").mean()
    a, b = groups.levels
    return pd.DataFrame({
        "feature": list(features), f"mean_{a}": per_level.loc[0].to_numpy(), f"mean_{b}": per_level.loc[1].to_numpy(),
        "difference": observed, "ci_low": intervals[:, 0], "ci_high": intervals[:, 1],
        "effect_size": sv.effect_size(), "effect_ci_low": d_intervals[:, 0], "effect_ci_high": d_intervals[:, 1],
        "p": p, "q": fdr(p)})
