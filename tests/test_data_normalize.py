"""Normaliser schemes against direct formulas and scikit-learn; temporal resampling."""

import numpy as np
import pytest
from sklearn.preprocessing import RobustScaler

from brainlm.data import NORMALIZATIONS, Normalizer, StoreOptions, TemporalResampler, resample_tr
from brainlm.errors import UserError


def _cohort(seed=0, n=5, R=4):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(50 + 10 * i, R)) * (i + 1) + 1000 * rng.random(R)) for i in range(n)]


def test_robust_is_median_over_iqr_of_centred_training_data():
    train = _cohort()
    norm = Normalizer("robust").fit(train)
    centred = np.concatenate([x - x.mean(0) for x in train])
    ref = RobustScaler().fit(centred)
    np.testing.assert_allclose(norm.center_, ref.center_)
    np.testing.assert_allclose(norm.scale_, ref.scale_)
    new = _cohort(seed=1, n=1)[0]
    np.testing.assert_allclose(norm.transform(new), ref.transform(new - new.mean(0)), rtol=1e-5, atol=1e-5)


def test_original_robust_expression_kept_for_compatibility():
    train = _cohort()
    norm = Normalizer("original_robust").fit(train)
    x = train[0]
    # The original computes x - median / IQR (precedence), not (x - median) / IQR.
    np.testing.assert_allclose(norm.transform(x), (x - x.mean(0)) - norm.center_ / norm.scale_, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("method", sorted(NORMALIZATIONS))
def test_every_method_shape_finite_and_state_round_trip(method):
    train = _cohort()
    norm = Normalizer(method).fit(train)
    x = _cohort(seed=2, n=1)[0]
    y = norm.transform(x, tr=0.72)
    assert y.shape == x.shape and y.dtype == np.float32 and np.isfinite(y).all()
    np.testing.assert_array_equal(Normalizer.from_state(norm.state_dict()).transform(x, tr=0.72), y)


def test_recording_level_schemes():
    x = _cohort(n=1)[0]
    np.testing.assert_allclose(Normalizer("zscore").fit([x]).transform(x), (x - x.mean(0)) / x.std(0), rtol=1e-4, atol=1e-5)
    q25, q50, q75 = np.percentile(x, [25, 50, 75], axis=0)
    np.testing.assert_allclose(Normalizer("robust_recording").fit([x]).transform(x), (x - q50) / (q75 - q25), rtol=1e-4, atol=1e-5)
    y = Normalizer("per_patient_per_voxel").fit([x]).transform(x)
    np.testing.assert_allclose(y.min(0), 0, atol=1e-6)
    np.testing.assert_allclose(y.max(0), 1, atol=1e-6)
    train = _cohort()
    y = Normalizer("all_patient_all_voxel").fit(train).transform(train[1])
    assert 0 <= y.min() and y.max() <= 1


def test_cohort_method_needs_fit_and_bounded_sample():
    with pytest.raises(RuntimeError, match="fit"):
        Normalizer("robust").transform(np.ones((3, 2)))
    with pytest.raises(ValueError, match="unknown normalisation"):
        Normalizer("minmax")
    norm = Normalizer("robust", max_fit_rows=40).fit(_cohort())
    assert norm.num_fit_recordings_ == 5 and norm.scale_.shape == (4,)


def test_resample_tr_length_and_signal():
    tr, target = 0.72, 0.735
    t = np.arange(490) * tr
    x = np.stack([np.sin(2 * np.pi * 0.05 * t), np.cos(2 * np.pi * 0.02 * t)], axis=1)
    y = resample_tr(x, tr, target)
    assert y.shape == (480, 2)
    t_new = np.arange(len(y)) * target
    ref = np.stack([np.sin(2 * np.pi * 0.05 * t_new), np.cos(2 * np.pi * 0.02 * t_new)], axis=1)
    np.testing.assert_allclose(y[20:-20], ref[20:-20], atol=0.02)
    assert TemporalResampler(target).fit().transform(x, tr).shape == y.shape
    with pytest.raises(ValueError, match="known positive TR"):
        resample_tr(x, float("nan"), target)


def test_brainmarks_brainlm_pools_every_timepoint_and_resamples_like_torch():
    import torch
    import torch.nn.functional as F

    from brainlm.data.normalize import resample_linear

    train = _cohort()
    norm = Normalizer("brainmarks-brainlm", max_fit_rows=10).fit(train)  # no reservoir: every row counts
    pooled = np.concatenate(train)
    q25, q50, q75 = np.percentile(pooled, [25, 50, 75], axis=0)
    np.testing.assert_allclose(norm.center_, q50, rtol=1e-6)
    np.testing.assert_allclose(norm.scale_, q75 - q25 + 1e-6, rtol=1e-6)
    x = train[0]
    # 0.72 s is within 0.1 s of 0.735 s: values scaled, length kept, no per-recording mean removed
    np.testing.assert_allclose(norm.transform(x, tr=0.72), (x - q50) / (q75 - q25 + 1e-6), rtol=1e-4, atol=1e-5)
    assert norm.output_tr(0.72) == 0.72 and norm.output_tr(2.0) == 0.735
    y = norm.transform(x, tr=2.0)
    assert len(y) == round(2.0 * len(x) / 0.735)
    for tr, target in ((2.0, 0.735), (0.5, 0.735), (3.0, 0.735)):
        z = x.astype(np.float32)
        expected = F.interpolate(torch.from_numpy(z).T[None], size=round(tr * len(z) / target), mode="linear")[0].T
        np.testing.assert_allclose(resample_linear(z, tr, target), expected.numpy(), rtol=1e-6, atol=1e-5)
    with pytest.raises(UserError, match="needs each recording's TR"):
        norm.transform(x)
    with pytest.raises(UserError, match="drop --target-tr"):
        StoreOptions(normalization="brainmarks-brainlm", target_tr=0.735)
