"""CCA: planted association found, null p-values roughly uniform, bad inputs rejected."""

import numpy as np
import pytest
from scipy.stats import kstest
from sklearn.cross_decomposition import CCA

from brainlm.integrate import (
    CCAAnalysis,
    RegularizedCCA,
    encode_covariates,
    make_null_cohort,
    make_synthetic_cohort,
)


def _cov(cohort):
    return encode_covariates(cohort.covariates).to_numpy()


def test_regularized_cca_matches_sklearn():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((300, 1))
    X = z @ rng.standard_normal((1, 5)) + rng.standard_normal((300, 5))
    Y = z @ rng.standard_normal((1, 4)) + rng.standard_normal((300, 4))
    ours = RegularizedCCA(n_components=1, reg=0.0).fit(X, Y)
    u, v = ours.transform(X, Y)
    np.testing.assert_allclose(np.corrcoef(u[:, 0], v[:, 0])[0, 1], ours.canonical_correlations_[0], atol=1e-8)
    xs, ys = CCA(n_components=1, max_iter=2000, tol=1e-10).fit(X, Y).transform(X, Y)
    np.testing.assert_allclose(ours.canonical_correlations_[0], abs(np.corrcoef(xs[:, 0], ys[:, 0])[0, 1]), atol=1e-4)


def test_planted_association_is_found():
    cohort = make_synthetic_cohort(n_subjects=120, brain_dim=12, genetic_dim=8, shared_strength=0.5, seed=1)
    cca = CCAAnalysis(n_components=2, n_splits=3, n_permutations=1000).fit(cohort.brain, cohort.genetic, _cov(cohort))
    assert cca.p_value_ < 0.001
    assert cca.test_corr_[0] > 0.4
    # The planted direction recurs across folds; the second (noise) component does not.
    assert cca.x_stability_[0] > 0.6 and cca.y_stability_[0] > 0.6
    assert cca.x_stability_[0] > cca.x_stability_[1] and cca.y_stability_[0] > cca.y_stability_[1]
    assert cca.null_corr_.shape == (1000, 2) and cca.x_weights_.shape == (12, 2)
    assert list(cca.summary().columns)[:4] == ["component", "heldout_r", "heldout_r_sd", "p_perm"]


def test_null_p_values_are_roughly_uniform():
    p = []
    for s in range(20):
        cohort = make_null_cohort(n_subjects=90, brain_dim=10, genetic_dim=6, seed=100 + s)
        cca = CCAAnalysis(n_components=1, n_splits=3, n_permutations=100, random_state=s)
        p.append(cca.fit(cohort.brain, cohort.genetic, _cov(cohort)).p_value_)
    p = np.array(p)
    assert kstest(p, "uniform").pvalue > 0.01
    assert (p < 0.05).sum() <= 4 and p.min() > 0.001


def test_pca_before_cca():
    cohort = make_synthetic_cohort(n_subjects=90, brain_dim=40, genetic_dim=20, shared_strength=0.4, seed=2)
    cca = CCAAnalysis(n_components=1, n_splits=3, n_permutations=200, pca_components=(5, 4)).fit(
        cohort.brain, cohort.genetic
    )
    assert cca.p_value_ <= 1 / 201 + 1e-12
    assert cca.x_weights_.shape == (40, 1)


def test_bad_inputs():
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((30, 5)), rng.standard_normal((30, 4))
    with pytest.raises(ValueError, match="fewer subjects \\(4\\) than folds \\(5\\)"):
        CCAAnalysis(n_splits=5).fit(X[:4], Y[:4])
    with pytest.raises(ValueError, match="fewer subjects \\(3\\) than CCA components"):
        CCAAnalysis(n_components=3, n_splits=2).fit(X[:3], Y[:3])
    with pytest.raises(ValueError, match="6 CCA components need .* at least 6 features"):
        CCAAnalysis(n_components=6, n_splits=3, n_permutations=0).fit(X, Y)
    with pytest.raises(ValueError, match="different numbers of subjects \\(30 vs 25\\)"):
        CCAAnalysis().fit(X, Y[:25])
    Xn = X.copy()
    Xn[3, 1] = np.nan
    with pytest.raises(ValueError, match="brain embeddings contain NaN"):
        CCAAnalysis().fit(Xn, Y)
    with pytest.raises(ValueError, match="fewer than 3 held-out subjects"):
        CCAAnalysis(n_splits=5, n_components=1).fit(X[:12], Y[:12])
