"""The shared evaluation pieces: task inference, subject folds, subject bootstrap, early stopping,
and the scikit-learn compatibility of the preprocessors."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline

from brainlm.evaluate.protocol import (
    EarlyStopping,
    SubjectBootstrap,
    infer_task,
    subject_folds,
)
from brainlm.integrate.preprocess import ModalityPreprocessor, ModalityScaler


def test_infer_task_one_rule():
    assert infer_task(["a", "b", "c"]) == "classification"
    assert infer_task([True, False, True]) == "classification"
    assert infer_task([0, 1, 1, 0]) == "classification"
    assert infer_task([1.5, 2.0, 3.1, 0.2]) == "regression"
    assert infer_task(np.array(["1", "2", "3"], dtype=object)) == "regression"  # numbers written as text
    assert infer_task([1, 2, 3], "classification") == "classification"
    with pytest.raises(ValueError, match="--task must be"):
        infer_task([1, 2], "ordinal")


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_subject_folds_keep_subjects_together(task):
    rng = np.random.default_rng(0)
    groups = np.repeat([f"s{i}" for i in range(20)], 3)
    y = np.repeat(rng.integers(0, 2, 20), 3) if task == "classification" else rng.normal(size=60)
    folds = subject_folds(y, groups, task, 4, seed=1)
    assert len(folds) == 4
    assert sorted(np.concatenate([te for _, te in folds]).tolist()) == list(range(60))
    for tr, te in folds:
        assert not set(groups[tr]) & set(groups[te])
    assert [te.tolist() for _, te in folds] == [te.tolist() for _, te in subject_folds(y, groups, task, 4, seed=1)]
    with pytest.raises(ValueError, match="20 subjects are fewer than the 30 folds"):
        subject_folds(y, groups, task, 30)
    with pytest.raises(ValueError, match="at least 2"):
        subject_folds(y, groups, task, 1)


def test_subject_bootstrap_resamples_whole_subjects_and_compares_paired():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 2)
    y = rng.normal(size=80)
    good = y + 0.1 * rng.normal(size=80)
    bad = y + 1.0 * rng.normal(size=80)
    boot = SubjectBootstrap(groups, n_boot=200, seed=0)
    assert len(boot) == 200 and boot.num_subjects == 40
    for idx in boot.resamples[:5]:
        counts = np.bincount(groups[idx], minlength=40)
        assert (counts % 2 == 0).all()  # both rows of a drawn subject, every time it is drawn

    def mse(pred):
        return lambda idx: float(((y[idx] - pred[idx]) ** 2).mean())

    lo, hi = boot.ci(mse(good))
    assert lo < mse(good)(np.arange(80)) < hi
    cmp = boot.compare(mse(good), mse(bad), higher_is_better=False)
    assert cmp.diff_lo > 0 and cmp.p_boot == 0.0 and not cmp.within_noise
    same = boot.compare(mse(good), mse(good), higher_is_better=False)
    assert same.p_boot == 1.0 and same.within_noise  # never better than itself
    skewed = SubjectBootstrap(groups, n_boot=50, seed=0, valid=lambda idx: groups[idx].min() == 0)
    assert all(groups[idx].min() == 0 for idx in skewed.resamples)


def test_early_stopping_keeps_the_best_state():
    stop = EarlyStopping(patience=2)
    losses = [1.0, 0.5, 0.6, 0.4, 0.7, 0.8, 0.1]
    stopped_at = None
    for epoch, loss in enumerate(losses):
        if stop.update(loss, epoch, {"w": loss}):
            stopped_at = epoch
            break
    assert stopped_at == 5 and stop.best == 0.4 and stop.best_epoch == 3 and stop.best_state == {"w": 0.4}
    with pytest.raises(ValueError, match="--patience"):
        EarlyStopping(0)


def test_preprocessors_are_sklearn_estimators():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 5)) * 10, rng.normal(size=30)
    pre = ModalityPreprocessor("zscore", 3, random_state=1)
    copy = clone(pre)
    assert copy.get_params() == {"scale": "zscore", "n_components": 3, "random_state": 1}
    np.testing.assert_allclose(copy.fit_transform(X), pre.fit_transform(X))
    pipe = Pipeline([("scale", ModalityScaler("zscore")), ("ridge", Ridge())]).fit(X, y)
    assert pipe.predict(X).shape == (30,)
    assert clone(pipe).get_params()["scale__method"] == "zscore"


def test_permutation_p_counts_the_null_that_reaches_the_observed_value():
    from brainlm.evaluate.protocol import permutation_p

    null = np.array([[0.1, -0.9], [0.5, 0.2], [0.9, 0.3]])
    np.testing.assert_allclose(permutation_p([0.5, 0.4], null), [3 / 4, 1 / 4])
    np.testing.assert_allclose(permutation_p([0.5, 0.4], null, two_sided=True), [3 / 4, 2 / 4])
    assert np.isnan(permutation_p(np.nan, null[:, 0]))
