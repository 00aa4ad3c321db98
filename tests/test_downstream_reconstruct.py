import numpy as np
import pytest
import torch
from conftest import make_batch
from downstream_synth import PATCH, WINDOW, R, synthetic_store, tiny_model
from sklearn.metrics import r2_score

from brainlm.downstream import (
    ar_forecast,
    forecast_noise,
    forecast_recordings,
    forecast_windows,
    masking_noise,
    open_recordings,
    persistence_forecast,
    r2_per_region,
    reconstruct_recording,
    reconstruct_recordings,
)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def test_r2_per_region_matches_sklearn():
    rng = np.random.default_rng(0)
    true = rng.normal(size=(50, 4))
    pred = true + rng.normal(scale=0.5, size=(50, 4))
    np.testing.assert_allclose(r2_per_region(true, pred), r2_score(true, pred, multioutput="raw_values"))
    mask = rng.random((50, 4)) < 0.5
    expected = [r2_score(true[mask[:, r], r], pred[mask[:, r], r]) for r in range(4)]
    np.testing.assert_allclose(r2_per_region(true, pred, mask), expected)
    assert np.isnan(r2_per_region(np.ones((5, 1)), np.zeros((5, 1))))[0]


def test_masking_noise_hides_exactly_the_chosen_tokens(model):
    x, xyz = make_batch(3, R, WINDOW)
    L = R * WINDOW // PATCH
    g = torch.Generator().manual_seed(0)
    masked = torch.zeros(3, L, dtype=torch.bool)
    for b in range(3):
        masked[b, torch.randperm(L, generator=g)[:7]] = True
    noise, ratio = masking_noise(masked)
    out = model(x, xyz, noise=noise, mask_ratio=ratio)
    assert torch.equal(out.mask.view(3, L).bool(), masked)
    assert (out.ids_keep.diff(dim=1) > 0).all()  # visible tokens stay region-major


def test_forecast_masks_exactly_the_last_k_timepoints(model):
    x, xyz = make_batch(2, R, WINDOW)
    noise, ratio = forecast_noise(2, R, WINDOW // PATCH, 2)
    out = model(x, xyz, noise=noise, mask_ratio=ratio)
    expected = torch.zeros(2, R, WINDOW // PATCH)
    expected[:, :, -2:] = 1
    assert torch.equal(out.mask, expected)
    # The prediction does not depend on the hidden timepoints, and does on the visible ones.
    pred = forecast_windows(model, x, xyz, 2 * PATCH)
    assert pred.shape == (2, R, 2 * PATCH)
    x2 = x.clone()
    x2[..., -2 * PATCH :] = 100.0
    np.testing.assert_allclose(forecast_windows(model, x2, xyz, 2 * PATCH), pred, atol=1e-5)
    x3 = x.clone()
    x3[..., 0] += 5.0
    assert not np.allclose(forecast_windows(model, x3, xyz, 2 * PATCH), pred)


@pytest.mark.parametrize("k", [0, 3, WINDOW])
def test_forecast_k_must_be_whole_patches_inside_the_window(model, k):
    x, xyz = make_batch(1, R, WINDOW)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        forecast_windows(model, x, xyz, k)


def test_persistence_and_ar_baselines():
    vis = np.arange(12, dtype=float).reshape(1, 2, 6)
    np.testing.assert_array_equal(persistence_forecast(vis, 3), [[[5, 5, 5], [11, 11, 11]]])
    # An exact AR(2) process with intercept is continued exactly.
    y = [1.0, 2.0]
    for _ in range(40):
        y.append(0.5 + 0.6 * y[-1] - 0.3 * y[-2])
    y = np.asarray(y)
    np.testing.assert_allclose(ar_forecast(y[None, :30], 5, order=2)[0], y[30:35], rtol=1e-4)
    # Independent per series: a linear trend (AR(1) with intercept) continues.
    trend = np.stack([y[:30], 2.0 + 0.5 * np.arange(30)])
    np.testing.assert_allclose(ar_forecast(trend, 3, order=1)[1], 2.0 + 0.5 * np.arange(30, 33), rtol=1e-5)
    with pytest.raises(ValueError, match="needs more than"):
        ar_forecast(y[None, :4], 2, order=3)


def test_reconstruction_covers_every_patch_once(model):
    ts = np.asarray(make_batch(1, R, 65)[0][0].T)  # (65, R): 3 whole windows of 20 and a tail
    xyz = make_batch(1, R, 65)[1][0].numpy()
    rec = reconstruct_recording(model, ts, xyz, mask_ratio=0.3)
    assert rec.true.shape == rec.pred.shape == (60, R)
    assert rec.masked.all()
    np.testing.assert_allclose(rec.true, ts[:60])
    np.testing.assert_allclose(rec.r2, r2_per_region(rec.true, rec.pred))
    # Each window's prediction at hidden patches comes from a pass where the patch was hidden.
    one = reconstruct_recording(model, ts, xyz, mask_ratio=0.3, cover=False)
    frac = one.masked.mean()
    assert 0.2 < frac < 0.4
    np.testing.assert_allclose(one.r2, r2_per_region(one.true, one.pred, one.masked))
    with pytest.raises(ValueError, match="shorter than one window"):
        reconstruct_recording(model, ts[:10], xyz)
    with pytest.raises(ValueError, match="mask_ratio must be in"):
        reconstruct_recording(model, ts, xyz, mask_ratio=0.0)


def test_reconstruct_and_forecast_recordings(tmp_path, model):
    store = synthetic_store(tmp_path / "s")
    recs = open_recordings(store, "test")
    table, results = reconstruct_recordings(model, recs, mask_ratio=0.5, progress=False)
    assert len(table) == 2 * R and set(results) == set(table["recording_id"])
    res = forecast_recordings(model, recs, 2 * PATCH, stride=20, progress=False)
    assert list(res.metrics["method"]) == ["brainlm", "persistence", "mean", "ar"]
    assert res.true.shape == (2 * 6, R, 10) and res.context.shape == (12, R, 10)
    mse = ((res.true - res.preds["persistence"]) ** 2).mean()
    assert res.metrics.set_index("method").loc["persistence", "mse"] == pytest.approx(mse)


def test_vitmae_reconstruction_single_pass_and_no_forecast():
    from test_vitmae import tiny_model as tiny_vitmae

    vit = tiny_vitmae()
    ts = np.random.default_rng(0).normal(size=(200, 424)).astype(np.float32)
    rec = reconstruct_recording(vit, ts, np.zeros((424, 3), np.float32), mask_ratio=0.5)
    assert rec.pred.shape == (200, 424) and 0.2 < rec.masked.mean() < 0.8
    with pytest.raises(ValueError, match="forecasting needs a BrainLM model"):
        forecast_windows(vit, ts.T[None], np.zeros((424, 3)), 20)
