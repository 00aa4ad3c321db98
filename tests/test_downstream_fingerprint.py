import numpy as np
import torch
import pytest
from downstream_synth import synthetic_store, tiny_model

from brainlm.downstream import fingerprint, identify


def test_identify_by_correlation():
    rng = np.random.default_rng(0)
    first = rng.normal(size=(5, 30))
    second = first[[0, 1, 2, 3, 4]] * 3 + 1 + 0.1 * rng.normal(size=(5, 30))  # scale and shift do not matter
    assert identify(first, second).tolist() == [0, 1, 2, 3, 4]
    swapped = second[[1, 0, 2, 3, 4]]
    assert identify(first, swapped).tolist() == [1, 0, 2, 3, 4]


def test_fingerprint_on_synthetic_subjects(tmp_path):
    store = synthetic_store(tmp_path / "s", n_subjects=8, split=(6, 1, 1), T=160)
    summary, matches = fingerprint(tiny_model(), store)
    s = summary.set_index("features")
    assert s.loc["fc", "chance"] == pytest.approx(1 / 8) and s.loc["fc", "num_subjects"] == 8
    assert s.loc["fc", "accuracy"] >= 0.75  # subject-specific mixing is a strong FC fingerprint
    assert 0.0 <= s.loc["brainlm", "accuracy"] <= 1.0
    rt, _ = fingerprint(tiny_model(), store, pooling="region_time", keep_regions=True)
    assert rt.loc[0, "pooling"] == "region_time_regions"
    assert set(s.index) == {"brainlm", "fc", "fc_partial", "fc_tangent", "autocorr"}  # the feature ladder beside BrainLM
    assert len(matches) == 8 * 5 and set(matches["subject_id"]) == set(store.recordings["subject_id"])
    with pytest.raises(ValueError, match="half of its 160 timepoints is shorter than a window of 100"):
        fingerprint(tiny_model(window=100), store)
    with pytest.raises(ValueError, match="at least two subjects"):
        fingerprint(tiny_model(), store, split="test")


def test_model_connectivity_is_the_region_correlation_of_region_embeddings_over_the_half():
    from brainlm.downstream.embed import embed_windows
    from brainlm.downstream.fingerprint import _embed_half

    rng = np.random.default_rng(0)
    model, part, coords = tiny_model(), rng.normal(size=(60, 6)).astype(np.float32), rng.normal(size=(6, 3)) * 40
    feature = _embed_half(model, part, coords, "connectivity", False, 20, 10, 2, torch.float32)
    wins = np.stack([part[t : t + 20].T for t in (0, 10, 20, 30, 40)])
    e = embed_windows(model, wins, coords, "region_time")  # (5, R, D): every window of the half
    expected = np.corrcoef(np.concatenate(list(e), axis=1))  # regions x (windows * D)
    assert feature.shape == (15,)
    np.testing.assert_allclose(feature, expected[np.triu_indices(6, 1)], rtol=1e-5, atol=1e-6)


def test_fingerprint_refuses_an_unknown_pooling(tmp_path):
    store = synthetic_store(tmp_path / "s", n_subjects=4, split=(2, 1, 1), T=160)
    with pytest.raises(ValueError, match="--pooling must be cls, mean, region_time or connectivity"):
        fingerprint(tiny_model(), store, pooling="max")
    summary, _ = fingerprint(tiny_model(), store, pooling="connectivity", connectivity=())
    assert summary.loc[0, "pooling"] == "connectivity" and 0.0 <= summary.loc[0, "accuracy"] <= 1.0
