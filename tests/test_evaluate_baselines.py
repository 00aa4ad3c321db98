"""The baseline ladder and the metrics: hand computations, and planted data where the answer is known."""

import numpy as np
import pytest
import torch

from brainlm.evaluate.baselines import (
    ForecastBaselines,
    ReconstructionBaselines,
    connectivity_features,
)
from brainlm.evaluate.metrics import MaskedMetrics, masked_metrics, r2_per_region


def _window(values):
    return torch.tensor(values, dtype=torch.float32).view(1, 1, -1)  # (B=1, R=1, T)


def test_trivial_baselines_by_hand():
    x = _window([1, 2, 3, 4, 5, 6])
    mask = _window([0, 0, 1, 1, 0, 0]).bool()  # t = 2, 3 hidden
    base = ReconstructionBaselines().predict(x, mask)
    assert base["interp"][0, 0, 2:4].tolist() == pytest.approx([3.0, 4.0])  # between 2 (t=1) and 5 (t=4)
    assert base["mean"][0, 0, 2:4].tolist() == pytest.approx([3.5, 3.5])  # mean of 1, 2, 5, 6
    assert base["zero"][0, 0, 2:4].tolist() == [0.0, 0.0]
    assert base["mean"][0, 0, 0].item() == 1.0  # visible values are returned as they are
    assert masked_metrics(base["interp"], x, mask)["mse"] == pytest.approx(0.0)
    assert masked_metrics(base["zero"], x, mask)["r2"] == pytest.approx(0.0)  # 1 - SSE / sum(y^2)
    edge = ReconstructionBaselines().predict(_window([1, 2, 5, 6, 3, 4]), _window([1, 1, 0, 0, 1, 1]).bool())
    assert edge["interp"][0, 0].tolist() == [5.0, 5.0, 5.0, 6.0, 6.0, 6.0]  # flat outside the visible span


def test_metrics_match_pooled_definitions():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(3, 5, 24, generator=g)
    pred = target + 0.5 * torch.randn(3, 5, 24, generator=g)
    mask = torch.rand(3, 5, 24, generator=g) < 0.4
    y, p = target[mask].double().numpy(), pred[mask].double().numpy()
    m = masked_metrics(pred, target, mask)
    assert m["mse"] == pytest.approx(np.mean((p - y) ** 2))
    assert m["mae"] == pytest.approx(np.mean(np.abs(p - y)))
    assert m["r2"] == pytest.approx(1 - np.sum((p - y) ** 2) / np.sum(y ** 2))
    assert m["pearson"] == pytest.approx(np.corrcoef(p, y)[0, 1])
    acc = MaskedMetrics()  # batching does not change the result; weight-0 windows do not count
    acc.update(pred[:2], target[:2], mask[:2])
    acc.update(pred[2:], target[2:], mask[2:])
    acc.update(pred[:1] + 100, target[:1], mask[:1], weight=torch.zeros(1))
    assert acc.compute()["r2"] == pytest.approx(m["r2"])
    per_region = r2_per_region(target[0].T.numpy(), pred[0].T.numpy(), mask[0].T.numpy())
    r = 2
    sel = mask[0, r].numpy()
    yt, yp = target[0, r].numpy()[sel], pred[0, r].numpy()[sel]
    assert per_region[r] == pytest.approx(1 - ((yt - yp) ** 2).sum() / (yt ** 2).sum(), rel=1e-5)


def test_conditional_fill_equals_the_gaussian_formula():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(7, 3))
    recs = [rng.normal(size=(200, 3)) @ A.T + 0.3 * rng.normal(size=(200, 7)) for _ in range(3)]
    base = ReconstructionBaselines().fit(recs)
    cov = np.cov(np.concatenate(recs), rowvar=False)
    np.testing.assert_allclose(base.covariance_, 0.9 * cov + 0.1 * np.diag(np.diag(cov)))
    x = torch.tensor(rng.normal(size=(2, 7, 12)), dtype=torch.float32)
    mask = torch.tensor(rng.integers(0, 2, (2, 7, 3)), dtype=torch.bool).repeat_interleave(4, -1)
    mask[0, :, 0] = True  # a timepoint with nothing visible: the training mean
    pred = base.predict(x, mask)["conn"]
    S, mu = base.covariance_, base.mean_
    for b in range(2):
        for t in range(12):
            m = mask[b, :, t].numpy()
            v = ~m
            if not v.any():
                np.testing.assert_allclose(pred[b, :, t], mu, atol=1e-5)
                continue
            xs = x[b, :, t].numpy().astype(float)
            ref = mu[m] + S[np.ix_(m, v)] @ np.linalg.solve(S[np.ix_(v, v)], xs[v] - mu[v])
            np.testing.assert_allclose(pred[b, m, t], ref, atol=1e-5)


def test_low_rank_spatial_process_the_connectivity_fill_beats_interpolation():
    """Regions mix 3 fast sources: neighbours in time say little, other regions say a lot."""
    rng = np.random.default_rng(1)
    A = rng.normal(size=(20, 3))

    def recording(T=400):
        return rng.normal(size=(T, 3)) @ A.T + 0.2 * rng.normal(size=(T, 20))

    base = ReconstructionBaselines().fit(recording() for _ in range(5))
    x = torch.tensor(np.stack([recording(40).T for _ in range(8)]), dtype=torch.float32)  # (8, 20, 40)
    mask = (torch.rand(8, 20, 4, generator=torch.Generator().manual_seed(0)) < 0.5).repeat_interleave(10, -1)
    preds = base.predict(x, mask)
    r2 = {k: masked_metrics(p, x, mask)["r2"] for k, p in preds.items()}
    assert r2["conn"] > 0.8 and r2["conn"] > r2["interp"] + 0.5 and abs(r2["zero"]) < 1e-9


def test_var_process_the_var_baseline_beats_persistence():
    rng = np.random.default_rng(2)
    R = 6
    M = 0.5 * rng.normal(size=(R, R)) / np.sqrt(R)
    M = 0.8 * (M - 0.6 * np.eye(R)) / np.abs(np.linalg.eigvals(M - 0.6 * np.eye(R))).max()  # anti-persistent, stable

    def recording(T):
        x = np.zeros((T, R))
        for t in range(1, T):
            x[t] = x[t - 1] @ M.T + rng.normal(size=R)
        return x

    base = ForecastBaselines(order=1, alpha=1.0).fit(recording(2000) for _ in range(3))
    windows = np.stack([recording(30).T for _ in range(50)])  # (50, R, 30)
    preds = base.predict(windows[..., :29], 1)
    err = {k: float(((p - windows[..., 29:]) ** 2).mean()) for k, p in preds.items()}
    assert err["var"] < 0.75 * err["persistence"] and err["var"] <= err["ar"] + 1e-3
    np.testing.assert_allclose(preds["persistence"][..., 0], windows[..., 28])
    with pytest.raises(ValueError, match="more than 1 visible"):
        base.predict(windows[..., :1], 1)


def test_ar_continues_an_exact_ar_process():
    y = [1.0, 2.0]
    for _ in range(400):
        y.append(0.5 + 0.6 * y[-1] - 0.3 * y[-2])
    y = np.asarray(y)[:, None] + np.zeros((1, 2))  # two identical regions
    base = ForecastBaselines(order=2).fit([y[:300]])
    context = y[300:330].T[None]  # (1, R, 30)
    np.testing.assert_allclose(base.predict(context, 5)["ar"][0, 0], y[330:335, 0], rtol=1e-4)


def test_connectivity_features_identify_subjects_with_specific_fc():
    """Two sessions per subject with subject-specific mixing: FC fingerprints are near perfect."""
    from brainlm.downstream import identify

    rng = np.random.default_rng(3)
    mixing = [rng.normal(size=(12, 4)) for _ in range(10)]
    sessions = [[rng.normal(size=(300, 4)) @ m.T + 0.3 * rng.normal(size=(300, 12)) for m in mixing] for _ in range(2)]
    for kind in ("fc", "fc_partial", "fc_tangent"):
        feats = connectivity_features(sessions[0] + sessions[1], kind)
        acc = (identify(feats[:10], feats[10:]) == np.arange(10)).mean()
        assert feats.shape == (20, 66) and acc >= 0.9, (kind, acc)


def test_autocorrelation_sees_the_temporal_structure_that_fc_discards():
    """Two groups with the same region covariance (independent unit-variance regions) but AR(1)
    coefficients 0.1 and 0.7: the lag-1 autocorrelation recovers each coefficient and a probe on
    it separates the groups, while a probe on Pearson FC stays near chance."""
    from brainlm.downstream import run_probes

    rng = np.random.default_rng(5)
    series, label = [], []
    for i in range(24):
        phi = 0.7 if i % 2 else 0.1
        e = rng.normal(size=(400, 10)) * np.sqrt(1 - phi**2)
        x = np.zeros_like(e)
        for t in range(1, 400):
            x[t] = phi * x[t - 1] + e[t]
        series.append(x)
        label.append(i % 2)
    ac = connectivity_features(series, "autocorr")
    assert ac.shape == (24, 10)
    np.testing.assert_allclose(ac[1::2].mean(), 0.7, atol=0.03)
    np.testing.assert_allclose(ac[0::2].mean(), 0.1, atol=0.03)
    groups = np.array([f"s{i}" for i in range(24)])
    scores = {}
    for kind in ("autocorr", "fc"):
        m = run_probes(connectivity_features(series, kind), np.array(label), groups, probes=("ridge",), n_splits=4,
                       n_boot=0).metrics.set_index("metric")["value"]
        scores[kind] = m["balanced_accuracy"]
    assert scores["autocorr"] >= 0.95 and scores["fc"] <= 0.75, scores
    assert connectivity_features([np.ones((20, 3))], "autocorr").tolist() == [[0.0, 0.0, 0.0]]  # constant regions
