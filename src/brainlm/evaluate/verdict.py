"""One wording for "the model against the strongest simple baseline", used by every report.

Every command that scores a model beside the baseline ladder (the demo, ``brainlm benchmark``
and its cross-validation, training's validation report, ``reconstruct``, the analyses) ends with
one :class:`Verdict` line, so the same numbers are always said the same way:

- **wins**: the paired interval of the difference (model minus baseline, resampling subjects)
  lies strictly above zero (its lower end > 0);
- **loses**: it lies strictly below zero (its upper end < 0);
- **level (within noise)**: otherwise, an end exactly at zero included
  (:attr:`Comparison.within_noise`): neither side is shown better, whatever the point estimates
  say. This is never worded as a win.
- **too few subjects to tell (n = N)**: the numbers rest on fewer independent units than
  :data:`~brainlm.evaluate.protocol.MIN_UNITS` (6; below it an end of the 95% interval is set by
  resamples that hold one or two units). No verdict is drawn, whatever the interval; the line
  names where one can be had (``remedy``: cross-validation over every subject, say).
- Without an interval (no resamples), only the point estimates are compared, and the line says
  so: **ahead** / **behind** / **level** "(no interval)".

Higher is better for every metric the package reports (R^2, accuracy, F1, correlation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from brainlm.report import verdict_html

from .protocol import MIN_UNITS, Comparison, SubjectBootstrap

__all__ = ["Verdict", "OUTCOMES", "DECISIVE", "compare"]

OUTCOMES = ("wins", "loses", "level (within noise)", "too few to tell", "ahead (no interval)",
            "behind (no interval)", "level (no interval)")
DECISIVE = ("wins", "loses")  # the only outcomes that claim a difference


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
        recorded_difference: the difference as it was recorded, for figures quoted with rounded
            values (their difference would be rounded twice).
        remedy: where a verdict can be had when the units are too few (``"run brainlm benchmark
            STORE --cv 5 for one over every subject"``), said in the line then.
    """

    model: str
    model_value: float
    baseline: str
    baseline_value: float
    metric: str = "R^2"
    comparison: Comparison | None = None
    num_subjects: int | None = None
    unit: str = "subjects"
    remedy: str = ""
    recorded_difference: float | None = None  # the difference as recorded, where the values are rounded

    @property
    def difference(self) -> float:
        if self.recorded_difference is not None:
            return float(self.recorded_difference)
        return float(self.model_value - self.baseline_value)

    @property
    def has_interval(self) -> bool:
        c = self.comparison
        return c is not None and math.isfinite(c.diff_lo) and math.isfinite(c.diff_hi)

    @property
    def too_few(self) -> bool:
        """Fewer independent units than :data:`~brainlm.evaluate.protocol.MIN_UNITS`: no verdict."""
        return self.num_subjects is not None and self.num_subjects < MIN_UNITS

    @property
    def kind(self) -> str:
        """The outcome without its qualifier: one of :data:`OUTCOMES` (``"too few to tell"`` for any n)."""
        return "too few to tell" if self.too_few else self.outcome

    @property
    def outcome(self) -> str:
        """The outcome as the line words it (see the module docstring)."""
        if self.too_few:
            return f"too few {self.unit} to tell (n = {self.num_subjects})"
        if not self.has_interval:
            d = self.difference
            return "ahead (no interval)" if d > 0 else ("behind (no interval)" if d < 0 else "level (no interval)")
        c = self.comparison
        if c.within_noise:
            return "level (within noise)"
        return "wins" if c.diff_lo > 0 else "loses"

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

    def _parts(self, where: str) -> tuple[str, str, str]:
        """The line around its outcome: ``(before, outcome, after)``."""
        place = f" {where}" if where else ""
        remedy = f" ({self.remedy})" if self.too_few and self.remedy else ""
        return (f"{self.model} vs the strongest baseline ({self.baseline}){place}: ", self.outcome,
                f"{remedy}; {self.metric} {self.model_value:.3f} vs {self.baseline_value:.3f}, {self.interval_text()}")

    def line(self, where: str = "") -> str:
        """The verdict as one plain line, e.g. ``BrainLM vs the strongest baseline (connectivity-
        conditional fill) on the held-out subjects: level (within noise); R^2 0.433 vs 0.420, ...``.

        Args:
            where: what the numbers are on, appended after the baseline (``"on the held-out subjects"``).
        """
        return "".join(self._parts(where))

    def markdown(self, where: str = "") -> str:
        """:meth:`line` with its outcome in bold (Markdown)."""
        before, outcome, after = self._parts(where)
        return f"{before}**{outcome}**{after}"

    def html(self, where: str = "") -> str:
        """:meth:`line` as an HTML paragraph marked by its outcome (a coloured badge: wins, loses,
        level, too few; :func:`brainlm.report.verdict_html`)."""
        return verdict_html(*self._parts(where))

    def to_dict(self) -> dict:
        c = self.comparison
        return {"model": self.model, "baseline": self.baseline, "metric": self.metric,
                "model_value": float(self.model_value), "baseline_value": float(self.baseline_value),
                "difference": self.difference, "outcome": self.outcome,
                "diff_ci_low": c.diff_lo if c else None, "diff_ci_high": c.diff_hi if c else None,
                "p_boot": c.p_boot if c else None, "num_subjects": self.num_subjects, "unit": self.unit,
                "kind": self.kind, "minimum_units": MIN_UNITS}


def compare(model: str, baseline: str, model_stat, baseline_stat, boot: SubjectBootstrap, n: int, *,
            metric: str = "R^2", unit: str = "subjects", remedy: str = "") -> Verdict:
    """The verdict of two statistics of the same rows: values on all ``n`` rows, the paired
    interval from ``boot``'s subject resamples.

    Args:
        model_stat, baseline_stat: ``stat(row_index) -> float``.
        boot: the resamples (its subjects are counted in the line).
        n: the number of rows.
        unit: what ``boot`` resamples, as the line names it.
        remedy: where a verdict can be had when ``boot`` has too few units.
    """
    everything = np.arange(n)
    comparison = boot.compare(model_stat, baseline_stat) if len(boot) else None
    return Verdict(model, float(model_stat(everything)), baseline, float(baseline_stat(everything)), metric,
                   comparison, boot.num_subjects, unit, remedy)
