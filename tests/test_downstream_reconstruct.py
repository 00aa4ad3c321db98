import numpy as np
import pytest
import torch
from conftest import make_batch
from downstream_synth import PATCH, WINDOW, R, synthetic_store, tiny_model

from brainlm.downstream import (
    forecast_recordings,
    forecast_windows,
    open_recordings,
    reconstruct_recording,
    reconstruct_recordings,
)
from brainlm.evaluate.baselines import ForecastBaselines, ReconstructionBaselines
from brainlm.evaluate.metrics import r2_per_region
from brainlm.model import masking_noise


@pytest.fixture(scope="module")
def model():
    return tiny_model()


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
    masked = torch.zeros(2, R, WINDOW // PATCH, dtype=torch.bool)
    masked[:, :, -2:] = True
    noise, ratio = masking_noise(masked.view(2, -1))
    out = model(x, xyz, noise=noise, mask_ratio=ratio)
    assert torch.equal(out.mask.bool(), masked)
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


def test_reconstruction_covers_every_patch_once(model):
    ts = np.asarray(make_batch(1, R, 65)[0][0].T)  # (65, R): 3 whole windows of 20 and a tail
    xyz = make_batch(1, R, 65)[1][0].numpy()
    baselines = ReconstructionBaselines().fit([np.asarray(make_batch(1, R, 200, seed=9)[0][0].T)])
    rec = reconstruct_recording(model, ts, xyz, mask_ratio=0.3, baselines=baselines)
    assert rec.true.shape == rec.pred.shape == (60, R)
    assert rec.masked.all()
    # the baselines fill the same hidden values, from the same visible ones
    assert set(rec.baselines) == {"zero", "mean", "interp", "conn"} and rec.baselines["conn"].shape == (60, R)
    scores = rec.scores()
    assert scores["zero"] == pytest.approx(0.0) and set(scores) == {"model", "zero", "mean", "interp", "conn"}
    np.testing.assert_allclose(rec.true, ts[:60])
    np.testing.assert_allclose(rec.r2, r2_per_region(rec.true, rec.pred))
    # Each window's prediction at hidden patches comes from a pass where the patch was hidden.
    one = reconstruct_recording(model, ts, xyz, mask_ratio=0.3, cover=False)
    frac = one.masked.mean()
    assert 0.2 < frac < 0.4
    np.testing.assert_allclose(one.r2, r2_per_region(one.true, one.pred, one.masked))
    with pytest.raises(ValueError, match="shorter than one window"):
        reconstruct_recording(model, ts[:10], xyz)
    with pytest.raises(ValueError, match="--mask-ratio must be in"):
        reconstruct_recording(model, ts, xyz, mask_ratio=0.0)


def test_reconstruct_and_forecast_recordings(tmp_path, model):
    store = synthetic_store(tmp_path / "s")
    recs = open_recordings(store, "test")
    table, results = reconstruct_recordings(model, recs, mask_ratio=0.5, progress=False)
    assert len(table) == 2 * R and set(results) == set(table["recording_id"])
    res = forecast_recordings(model, recs, 2 * PATCH, stride=20, progress=False)
    assert list(res.metrics["method"]) == ["brainlm", "persistence", "mean"]  # no training split: nothing fitted
    train = open_recordings(store, "train")
    fitted = ForecastBaselines(order=2).fit(x for _, x in train)
    res = forecast_recordings(model, recs, 2 * PATCH, stride=20, progress=False, baselines=fitted)
    assert list(res.metrics["method"]) == ["brainlm", "persistence", "mean", "ar", "var"]
    assert res.true.shape == (2 * 6, R, 10) and res.context.shape == (12, R, 10)
    mse = ((res.true - res.preds["persistence"]) ** 2).mean()
    assert res.metrics.set_index("method").loc["persistence", "mse"] == pytest.approx(mse)


def test_vitmae_goes_through_the_same_code():
    """No branch on the model kind: ViT-MAE reconstructs (covering every value) and forecasts."""
    from test_vitmae import tiny_model as tiny_vitmae

    vit = tiny_vitmae()
    ts = np.random.default_rng(0).normal(size=(200, 424)).astype(np.float32)
    rec = reconstruct_recording(vit, ts, np.zeros((424, 3), np.float32), mask_ratio=0.5)
    assert rec.pred.shape == (200, 424) and rec.masked.all()
    one = reconstruct_recording(vit, ts, np.zeros((424, 3), np.float32), mask_ratio=0.5, cover=False)
    assert 0.2 < one.masked.mean() < 0.8
    pred = forecast_windows(vit, ts.T[None], np.zeros((424, 3)), 20)
    assert pred.shape == (1, 424, 20)


def test_printed_verdict_counts_the_recordings_where_the_model_is_ahead(capsys):
    """The mean can favour the model while it trails on some recordings: the line says on how many it leads."""
    from types import SimpleNamespace

    import pandas as pd

    from brainlm.downstream.report import _print_scores

    summary = pd.DataFrame({"recording_id": ["a", "b"], "r2_median": [0.4, 0.5], "r2_mean": [0.4, 0.5],
                            "model_r2_masked": [0.415, 0.437], "zero_r2_masked": [0.0, 0.0],
                            "mean_r2_masked": [-0.2, -0.1], "interp_r2_masked": [-0.4, -0.3],
                            "conn_r2_masked": [0.438, 0.400]})
    _print_scores(summary, SimpleNamespace(names=("zero", "mean", "interp", "conn")), ["s1", "s2"])
    out = capsys.readouterr().out
    assert ("BrainLM vs the strongest baseline (connectivity-conditional fill): too few subjects to tell (n = 2); "
            "mean masked R^2 0.426 vs 0.419") in out
    assert "over 2 subjects; ahead on 1 of 2 recordings" in out
