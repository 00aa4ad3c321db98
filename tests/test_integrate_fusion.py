"""Late fusion beats single modalities only when both carry signal."""

import numpy as np
import pytest

from brainlm.integrate import FusionAnalysis, encode_covariates, make_synthetic_cohort


def _run(target_genetic, target="binary", **kw):
    cohort = make_synthetic_cohort(
        n_subjects=300, brain_dim=16, genetic_dim=8, target=target, target_brain=1.5,
        target_genetic=target_genetic, seed=3,
    )
    cov = encode_covariates(cohort.covariates).to_numpy()
    return FusionAnalysis(models=("linear",), n_bootstrap=300, **kw).fit(cohort.brain, cohort.genetic, cohort.target, cov)


def test_fusion_helps_when_both_modalities_carry_signal():
    fusion = _run(target_genetic=1.5)
    gain = fusion.gains_.iloc[0]
    assert fusion.task_ == "classification"
    assert gain.gain > 0.03 and gain.gain_lo > 0 and gain.p_boot < 0.05
    res = fusion.results_.set_index("features")
    assert res.loc["brain", "auroc"] > 0.6 and res.loc["genetic", "auroc"] > 0.6
    assert (res.auroc_lo <= res.auroc).all() and (res.auroc <= res.auroc_hi).all()
    assert {"auprc", "auprc_lo", "auprc_hi"} <= set(res.columns)


def test_fusion_does_not_help_when_only_brain_carries_signal():
    fusion = _run(target_genetic=0.0)
    gain = fusion.gains_.iloc[0]
    res = fusion.results_.set_index("features")
    assert gain.best_single == "brain"
    assert res.loc["genetic", "auroc_lo"] < 0.5 < res.loc["genetic", "auroc_hi"]
    assert gain.gain_lo < 0 < gain.gain_hi and gain.p_boot > 0.05


def test_regression_and_gradient_boosting():
    cohort = make_synthetic_cohort(n_subjects=90, brain_dim=6, genetic_dim=4, target="continuous", seed=5)
    fusion = FusionAnalysis(models=("linear", "gbm"), n_splits=3, n_bootstrap=50).fit(
        cohort.brain, cohort.genetic, cohort.target
    )
    assert fusion.task_ == "regression"
    assert fusion.results_.shape[0] == 6 and "r2_lo" in fusion.results_
    assert fusion.gains_.metric.tolist() == ["r2", "r2"]
    assert fusion.oof_[("fusion", "gbm")].shape == (90,)


def test_grouped_folds_keep_subjects_together():
    cohort = make_synthetic_cohort(n_subjects=60, brain_dim=4, genetic_dim=3, seed=6)
    groups = np.repeat(np.arange(30), 2)
    fusion = FusionAnalysis(models=("linear",), n_splits=3, n_bootstrap=20).fit(
        cohort.brain, cohort.genetic, cohort.target, groups=groups
    )
    for tr, te in fusion.folds_:
        assert not set(groups[tr]) & set(groups[te])


def test_bad_inputs():
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((20, 3)), rng.standard_normal((20, 2))
    y = np.tile([0, 1], 10)
    with pytest.raises(ValueError, match="fewer subjects \\(4\\) than folds \\(5\\)"):
        FusionAnalysis().fit(X[:4], Y[:4], y[:4])
    with pytest.raises(ValueError, match="different numbers of subjects"):
        FusionAnalysis().fit(X, Y[:15], y)
    with pytest.raises(ValueError, match="target must have shape \\(20,\\)"):
        FusionAnalysis().fit(X, Y, y[:10])
    with pytest.raises(ValueError, match="exactly two classes"):
        FusionAnalysis(task="classification").fit(X, Y, np.arange(20) % 3)
    with pytest.raises(ValueError, match="unknown model 'svm'"):
        FusionAnalysis(models=("svm",)).fit(X, Y, y)
