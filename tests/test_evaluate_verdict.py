"""One wording of "model vs strongest baseline": wins, loses, or level within noise - never a win inside noise."""

import numpy as np
import pytest

from brainlm.evaluate.protocol import Comparison, SubjectBootstrap
from brainlm.evaluate.verdict import Verdict, compare


@pytest.mark.parametrize("lo, hi, outcome", [(0.01, 0.03, "wins"), (0.0, 0.03, "wins"), (-0.03, -0.01, "loses"),
                                             (-0.03, 0.0, "loses"), (-0.01, 0.02, "level (within noise)"),
                                             (0.0, 0.0, "level (within noise)")])
def test_outcome_follows_the_paired_interval_not_the_point_estimate(lo, hi, outcome):
    v = Verdict("BrainLM", 0.43, "connectivity fill", 0.42, comparison=Comparison(lo, hi, 0.3), num_subjects=12)
    assert v.outcome == outcome
    line = v.line("on the held-out subjects")
    assert line.startswith(f"BrainLM vs the strongest baseline (connectivity fill) on the held-out subjects: {outcome};")
    assert f"R^2 0.430 vs 0.420, difference +0.010 [95% CI {lo:+.3f}, {hi:+.3f}], p_boot 0.300 over 12 subjects" in line


def test_without_an_interval_only_the_point_estimates_are_named():
    assert Verdict("BrainLM", 0.5, "VAR", 0.4).outcome == "ahead (no interval)"
    assert Verdict("BrainLM", 0.3, "VAR", 0.4, comparison=Comparison(float("nan"), float("nan"), float("nan"))).outcome \
        == "behind (no interval)"
    assert "[95% CI" not in Verdict("BrainLM", 0.5, "VAR", 0.5).line()


def test_compare_resamples_subjects_of_the_same_rows():
    rng = np.random.default_rng(0)
    subjects = np.repeat(np.arange(8), 5).astype(str)
    better = rng.normal(1.0, 0.1, 40)
    worse = better - 0.5
    v = compare("model", "baseline", lambda i: better[i].mean(), lambda i: worse[i].mean(),
                SubjectBootstrap(subjects, 200, 0), 40, metric="score")
    assert v.outcome == "wins" and v.num_subjects == 8 and v.difference == pytest.approx(0.5)
    # half the subjects far ahead, half as far behind: the interval spans zero whatever the point estimate
    swing = np.repeat(np.where(np.arange(8) % 2, 0.5, -0.5), 5) + rng.normal(0, 0.01, 40)
    level = compare("model", "baseline", lambda i: (better + swing)[i].mean(), lambda i: better[i].mean(),
                    SubjectBootstrap(subjects, 200, 0), 40)
    assert level.outcome == "level (within noise)" and level.comparison.diff_lo < 0 < level.comparison.diff_hi
    assert "wins" not in level.line()
