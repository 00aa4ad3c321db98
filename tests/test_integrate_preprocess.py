"""Per-modality preprocessing, and that every analysis fits it on training folds only."""

import numpy as np
import pytest

from brainlm.integrate import (
    CCAAnalysis,
    ContrastiveAnalysis,
    CovariateResidualizer,
    FusionAnalysis,
    ModalityPreprocessor,
    ModalityScaler,
    encode_covariates,
    make_synthetic_cohort,
    preprocess,
)


def test_zscore_uses_fit_statistics():
    rng = np.random.default_rng(0)
    train, test = rng.normal(3, 2, (50, 4)), rng.normal(3, 2, (10, 4))
    sc = ModalityScaler("zscore").fit(train)
    np.testing.assert_allclose(sc.mean_, train.mean(0))
    np.testing.assert_allclose(sc.transform(test), (test - train.mean(0)) / train.std(0), rtol=1e-5)
    assert sc.transform(test).dtype == np.float32


def test_layernorm_normalises_rows():
    X = np.random.default_rng(1).normal(5, 3, (6, 20))
    Z = ModalityScaler("layernorm").fit(X[:3]).transform(X)
    np.testing.assert_allclose(Z.mean(1), 0, atol=1e-5)
    np.testing.assert_allclose(Z.std(1), 1, atol=1e-4)


def test_residualizer_removes_covariate_signal():
    rng = np.random.default_rng(2)
    C = rng.standard_normal((200, 2))
    X = C @ rng.standard_normal((2, 5)) + 0.1 * rng.standard_normal((200, 5))
    R = CovariateResidualizer().fit(X[:150], C[:150]).transform(X[150:], C[150:])
    assert np.abs(np.corrcoef(np.hstack([R, C[150:]]).T)[:5, 5:]).max() < 0.35
    assert R.std() < 0.2 * X.std()


def test_preprocessor_shapes_and_errors():
    X = np.random.default_rng(3).standard_normal((20, 8))
    pre = ModalityPreprocessor(n_components=3).fit(X)
    assert pre.transform(X).shape == (20, 3) and pre.to_feature_space(np.ones((3, 2))).shape == (8, 2)
    with pytest.raises(ValueError, match="PCA to 30 components needs at least 30"):
        ModalityPreprocessor(n_components=30).fit(X)
    with pytest.raises(ValueError, match="scaling method"):
        ModalityPreprocessor(scale="minmax").fit(X)
    with pytest.raises(ValueError, match="expected 8 features, got 5"):
        pre.transform(X[:, :5])


@pytest.fixture
def spy(monkeypatch):
    """Record the rows every ModalityPreprocessor is fitted on."""
    fitted = []
    original = preprocess.ModalityPreprocessor.fit

    def fit(self, X, covariates=None):
        fitted.append(np.asarray(X, dtype=np.float64).copy())
        return original(self, X, covariates)

    monkeypatch.setattr(preprocess.ModalityPreprocessor, "fit", fit)
    return fitted


def _assert_fitted_on_training_rows(fitted, folds, X, Y):
    for f, (tr, te) in enumerate(folds):
        fx, fy = fitted[2 * f], fitted[2 * f + 1]
        np.testing.assert_array_equal(fx, X[tr].astype(np.float64))
        np.testing.assert_array_equal(fy, Y[tr].astype(np.float64))
        held_out = {tuple(r) for r in X[te].astype(np.float64)}
        assert not held_out & {tuple(r) for r in fx}


@pytest.fixture
def cohort():
    return make_synthetic_cohort(n_subjects=60, brain_dim=6, genetic_dim=5, seed=4)


def test_cca_fits_preprocessing_on_training_folds_only(spy, cohort):
    cov = encode_covariates(cohort.covariates).to_numpy()
    cca = CCAAnalysis(n_components=1, n_splits=3, n_permutations=0, pca_components=3).fit(
        cohort.brain, cohort.genetic, cov
    )
    _assert_fitted_on_training_rows(spy, cca.folds_, cohort.brain, cohort.genetic)


def test_fusion_fits_preprocessing_on_training_folds_only(spy, cohort):
    fusion = FusionAnalysis(models=("linear",), n_splits=3, n_bootstrap=10).fit(
        cohort.brain, cohort.genetic, cohort.target
    )
    _assert_fitted_on_training_rows(spy, fusion.folds_, cohort.brain, cohort.genetic)


def test_contrastive_fits_preprocessing_on_training_folds_only(spy, cohort):
    con = ContrastiveAnalysis(n_splits=3, n_null=10, shuffled_fit=False, hidden_dim=16, out_dim=8, max_epochs=2).fit(
        cohort.brain, cohort.genetic
    )
    _assert_fitted_on_training_rows(spy, con.folds_, cohort.brain, cohort.genetic)
