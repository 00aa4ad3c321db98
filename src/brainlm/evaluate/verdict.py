"""One wording for "the model against the strongest simple baseline", used by every report.

Every command that scores a model beside the baseline ladder (the demo, ``brainlm benchmark``
and its cross-validation, training's validation report, ``reconstruct``, the analyses) ends with
one :class:`Verdict` line, so the same numbers are always said the same way:

- **wins**: the paired interval of the difference (model minus baseline, resampling subjects)
  lies above zero;
- **loses**: it lies below zero;
- **level (within noise)**: it spans zero (:attr:`Comparison.within_noise`): neither side is
  shown better, whatever the point estimates say. This is never worded as a win.
- Without an interval (no resamples, e.g. one subject), only the point estimates are compared,
  and the line says so: **ahead** / **behind** / **level** "(no interval)".

Higher is better for every metric the package reports (R^2, accuracy, F1, correlation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .protocol import Comparison, SubjectBootstrap

__all__ = ["Verdict", "OUTCOMES", "compare"]

OUTCOMES = ("wins", "loses", "level (within noise)", "ahead (no interval)", "behind (no interval)",
            "level (no interval)")


@dataclass(frozen=True)
class Verdict:
    """The model against its strongest baseline on one metric.

    Attributes:
        model, baseline: labels as the user reads them (``"BrainLM"``, ``"ridge VAR across regions"``).
        model_value, baseline_value: the metric of each on the same data.
        metric: the metric's name (``"R^2"``).
        comparison: the paired bootstrap comparison of model minus baseline, or None.
        num_subjects: how many units the interval resamples (named in the line).
        unit: what the interval resamples (``"subjects"``; ``"regions"`` where a region is the unit).
    """

    model: str
    model_value: float
    baseline: str
    baseline_value: float
    metric: str = "R^2"
    comparison: Comparison | None = None
    num_subjects: int | None = None
    unit: str = "subjects"

    @property
    def difference(self) -> float:
        return float(self.model_value - self.baseline_value)

    @property
    def has_interval(self) -> bool:
        c = self.comparison
        return c is not None and math.isfinite(c.diff_lo) and math.isfinite(c.diff_hi)

    @property
    def outcome(self) -> str:
        """One of :data:`OUTCOMES` (see the module docstring)."""
        if not self.has_interval:
            d = self.difference
            return "ahead (no interval)" if d > 0 else ("behind (no interval)" if d < 0 else "level (no interval)")
        c = self.comparison
        if c.within_noise:
            return "level (within noise)"
        return "wins" if c.diff_lo >= 0 else "loses"

    def interval_text(self) -> str:
        """``difference +0.013 [95% CI -0.009, +0.019], p_boot 0.210`` (or without the interval)."""
        text = f"difference {self.difference:+.3f}"
        if self.has_interval:
            c = self.comparison
            text += f" [95% CI {c.diff_lo:+.3f}, {c.diff_hi:+.3f}]"
            if c.p_boot == c.p_boot:
                text += f", p_boot {c.p_boot:.3f}"
            if self.num_subjects:
                text += f" over {self.num_subjects} {self.unit}"
        return text

    def line(self, where: str = "") -> str:
        """The verdict as one plain line, e.g. ``BrainLM vs the strongest baseline (connectivity-
        conditional fill) on the held-out subjects: level (within noise); R^2 0.433 vs 0.420, ...``.

        Args:
            where: what the numbers are on, appended after the baseline (``"on the held-out subjects"``).
        """
        place = f" {where}" if where else ""
        return (f"{self.model} vs the strongest baseline ({self.baseline}){place}: {self.outcome}; "
                f"{self.metric} {self.model_value:.3f} vs {self.baseline_value:.3f}, {self.interval_text()}")

    def to_dict(self) -> dict:
        c = self.comparison
        return {"model": self.model, "baseline": self.baseline, "metric": self.metric,
                "model_value": float(self.model_value), "baseline_value": float(self.baseline_value),
                "difference": self.difference, "outcome": self.outcome,
                "diff_ci_low": c.diff_lo if c else None, "diff_ci_high": c.diff_hi if c else None,
                "p_boot": c.p_boot if c else None, "num_subjects": self.num_subjects, "unit": self.unit}


def compare(model: str, baseline: str, model_stat, baseline_stat, boot: SubjectBootstrap, n: int, *,
            metric: str = "R^2", unit: str = "subjects") -> Verdict:
    """The verdict of two statistics of the same rows: values on all ``n`` rows, the paired
    interval from ``boot``'s subject resamples.

    Args:
        model_stat, baseline_stat: ``stat(row_index) -> float``.
        boot: the resamples (its subjects are counted in the line).
        n: the number of rows.
        unit: what ``boot`` resamples, as the line names it.
    """
    everything = np.arange(n)
    comparison = boot.compare(model_stat, baseline_stat) if len(boot) else None
    return Verdict(model, float(model_stat(everything)), baseline, float(baseline_stat(everything)), metric,
                   comparison, boot.num_subjects, unit)
