"""One wording of "model vs strongest baseline": wins, loses, or level within noise - never a win inside noise,
never a verdict from too few units."""

import itertools

import numpy as np
import pytest

from brainlm.evaluate.protocol import MIN_UNITS, Comparison, SubjectBootstrap, few_distinct_share, minimum_units
from brainlm.evaluate.verdict import DECISIVE, Verdict, compare


# An end exactly at 0 is not evidence: wins needs lo > 0, loses needs hi < 0.
@pytest.mark.parametrize("lo, hi, outcome", [(0.01, 0.03, "wins"), (0.0, 0.03, "level (within noise)"),
                                             (-0.03, -0.01, "loses"), (-0.03, 0.0, "level (within noise)"),
                                             (-0.01, 0.02, "level (within noise)"), (0.0, 0.0, "level (within noise)"),
                                             (0.02, 0.02, "wins"), (-0.02, -0.02, "loses"),
                                             (1e-12, 0.03, "wins"), (-0.03, -1e-12, "loses")])
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


def test_a_rival_wrong_on_one_region_of_48_is_not_beaten():
    """The case that was called a win: the interval's lower end exactly 0."""
    right = np.ones(48)
    rival = right.copy()
    rival[7] = 0.0
    v = compare("model", "rival", lambda i: right[i].mean(), lambda i: rival[i].mean(),
                SubjectBootstrap(np.arange(48), 1000, 0), 48, metric="accuracy", unit="regions")
    assert v.comparison.diff_lo == 0.0 and v.comparison.diff_hi > 0
    assert v.outcome == "level (within noise)" and "wins" not in v.line()


def test_all_resamples_equal_is_level():
    same = np.linspace(0, 1, 20)
    v = compare("model", "baseline", lambda i: same[i].mean(), lambda i: same[i].mean(),
                SubjectBootstrap(np.arange(20), 200, 0), 20)
    assert (v.comparison.diff_lo, v.comparison.diff_hi) == (0.0, 0.0) and v.outcome == "level (within noise)"


def test_the_minimum_number_of_units_comes_from_the_resamples_it_allows():
    # exact share of resamples (n draws of n units) that hold at most two distinct units
    for n in range(1, 7):
        draws = list(itertools.product(range(n), repeat=n))
        assert few_distinct_share(n) == pytest.approx(sum(len(set(d)) <= 2 for d in draws) / len(draws))
    assert few_distinct_share(5) > 0.025 > few_distinct_share(6)
    assert MIN_UNITS == minimum_units(0.95) == 6


@pytest.mark.parametrize("n", [1, 2, 5])
def test_too_few_subjects_gives_no_verdict_whatever_the_interval(n):
    for lo, hi in ((0.01, 0.03), (-0.03, -0.01), (-0.01, 0.01)):
        v = Verdict("BrainLM", 0.43, "VAR", 0.42, comparison=Comparison(lo, hi, 0.0), num_subjects=n,
                    remedy="run brainlm benchmark demo STORE --cv 6 for one over every subject")
        assert v.outcome == f"too few subjects to tell (n = {n})" and v.kind == "too few to tell"
        line = v.line("on the held-out subjects")
        assert not any(f": {w}" in line for w in DECISIVE)
        assert "(run brainlm benchmark demo STORE --cv 6 for one over every subject)" in line
        assert f"over {n} subjects" in line and v.to_dict()["kind"] == "too few to tell"
    regions = Verdict("model", 0.9, "coordinates", 0.7, "accuracy", Comparison(0.1, 0.3, 0.0), 4, unit="regions")
    assert regions.outcome == "too few regions to tell (n = 4)"


def test_two_subjects_resampled_are_not_evidence():
    """The demo's case: 2 subjects give four resamples and an interval that excludes 0 by chance."""
    subjects = np.repeat(["a", "b"], 10)
    model = np.where(subjects == "a", 0.5, 0.4)
    base = model + 0.002
    v = compare("BrainLM", "VAR", lambda i: model[i].mean(), lambda i: base[i].mean(),
                SubjectBootstrap(subjects, 1000, 0), 20)
    assert v.comparison.diff_hi < 0  # the interval alone would say "loses"
    assert v.outcome == "too few subjects to tell (n = 2)"
    six = np.repeat(list("abcdef"), 5)
    m6 = np.where(np.isin(six, list("abc")), 0.5, 0.4)
    assert compare("BrainLM", "VAR", lambda i: m6[i].mean(), lambda i: (m6 - 0.002)[i].mean(),
                   SubjectBootstrap(six, 500, 0), 30).outcome == "wins"
