import numpy as np
import pandas as pd
import pytest
from downstream_synth import R, synthetic_store, tiny_model

from brainlm.downstream import (
    align_targets,
    fc_features,
    load_targets,
    open_recordings,
    probe,
    run_probes,
)


def planted(n_subjects=16, rows=3, seed=0, task="classification"):
    rng = np.random.default_rng(seed)
    subj = np.repeat([f"s{i}" for i in range(n_subjects)], rows)
    label = np.repeat(np.arange(n_subjects) % 2, rows)
    X = rng.normal(size=(len(subj), 8))
    X[:, 0] += 3 * label
    y = label.astype(str) if task == "classification" else label + 0.2 * rng.normal(size=len(subj))
    return X, y, subj


def test_classification_probes_beat_chance_and_keep_subjects_apart():
    X, y, g = planted()
    res = run_probes(X, y, g, n_splits=4, n_boot=50, probes=("dummy", "ridge", "knn", "svm", "mlp"))
    assert res.task == "classification" and res.chance == pytest.approx(0.5)
    m = res.metrics.set_index(["probe", "metric"])["value"]
    for p in ("ridge", "knn", "svm", "mlp"):
        assert m[p, "balanced_accuracy"] > 0.8 and m[p, "auroc"] > 0.8
    assert m["dummy", "auroc"] == pytest.approx(0.5)
    for fold in res.folds:
        assert not set(fold["train_subjects"]) & set(fold["test_subjects"])
    # every subject's rows sit in one test fold
    assert (res.predictions.groupby(["probe", "subject_id"])["fold"].nunique() == 1).all()
    ci = res.metrics.set_index(["probe", "metric"]).loc[("ridge", "accuracy")]
    assert ci["ci_low"] <= ci["value"] <= ci["ci_high"]
    assert "ridge" in res.table().index.get_level_values("probe")


def test_regression_probes_beat_the_mean():
    X, y, g = planted(task="regression")
    res = run_probes(X, y, g, n_splits=4, n_boot=50, probes=("dummy", "ridge", "knn"))
    m = res.metrics.set_index(["probe", "metric"])["value"]
    assert res.task == "regression"
    assert m["ridge", "r2"] > 0.5 and m["ridge", "pearson_r"] > 0.7 and m["dummy", "r2"] < 0.05
    assert m["ridge", "mae"] < m["dummy", "mae"]


def test_multiclass_auroc():
    rng = np.random.default_rng(1)
    g = np.repeat([f"s{i}" for i in range(18)], 2)
    lab = np.repeat(np.arange(18) % 3, 2)
    X = rng.normal(size=(36, 5)) + 3 * np.eye(5)[lab]
    res = run_probes(X, lab.astype(str), g, n_splits=3, n_boot=20, probes=("ridge", "svm"))
    assert (res.metrics.query("metric == 'auroc'")["value"] > 0.8).all()


def _pearson(ts):
    c = np.corrcoef(ts.T)
    return c[np.tril_indices(len(c), -1)]  # nilearn's vector order: the lower triangle row by row


def test_pearson_fc_is_the_plain_correlation():
    from brainlm.evaluate.baselines import connectivity_features

    rng = np.random.default_rng(0)
    ts = rng.normal(size=(50, 4))
    np.testing.assert_allclose(connectivity_features([ts], "fc")[0], _pearson(ts), rtol=1e-5)


def test_fc_features_use_the_embedding_windows(tmp_path):
    store = synthetic_store(tmp_path / "s")
    recs = open_recordings(store, "test")
    avg = fc_features(recs, window=20, windows="average", stride=20)
    sl = fc_features(recs, window=20, windows="sliding", stride=20)
    assert avg.X.shape == (2, R * (R - 1) // 2) and sl.X.shape == (12, R * (R - 1) // 2)
    ts = store.get(avg.index.loc[0, "recording_id"])
    # per-recording rows: one estimate over the span the windows cover, not a mean of window FCs
    np.testing.assert_allclose(avg.X[0], _pearson(ts[:120]), rtol=1e-5)
    np.testing.assert_allclose(sl.X[1], _pearson(ts[20:40]), rtol=1e-5)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("store"), n_subjects=24, split=(16, 4, 4))


def test_probe_end_to_end_reports_fc_and_model_side_by_side(store):
    res = probe(tiny_model(), store, "group", n_splits=3, n_boot=20, probes=("dummy", "ridge"), progress=False)
    assert set(res.metrics["features"]) == {"brainlm", "fc", "fc_partial", "fc_tangent", "autocorr"}
    fc = res.metrics.set_index(["features", "probe", "metric"])["value"]
    assert fc["fc", "ridge", "accuracy"] > 0.8  # the planted coupling of regions 0 and 1 lives in FC
    assert res.missing_subjects == []


def test_missing_and_nan_targets_are_reported_not_silently_dropped(store, tmp_path):
    with pytest.warns(UserWarning, match=r"2 subjects have no 'partial' target.*s00.*s01"):
        res = probe(tiny_model(), store, "partial", n_splits=3, n_boot=10, probes=("ridge",), progress=False, task="classification")
    assert res.missing_subjects == ["s00", "s01"]
    assert not {"s00", "s01"} & set(res.predictions["subject_id"])
    # a TSV keyed by subject (BIDS participant_id with the sub- prefix), missing one subject
    pd.DataFrame({"participant_id": [f"sub-s{i:02d}" for i in range(1, 12)], "age": np.arange(1, 12) * 1.5}).to_csv(
        tmp_path / "t.tsv", sep="\t", index=False)
    targets = load_targets(tmp_path / "t.tsv", "age")
    assert targets["s03"] == 4.5
    pd.DataFrame({"subject_id": ["001", "002"], "iq": [100, 90]}).to_csv(tmp_path / "z.csv", index=False)
    assert load_targets(tmp_path / "z.csv", "iq").index.tolist() == ["001", "002"]  # leading zeros kept
    y, keep, missing = align_targets(pd.DataFrame({"subject_id": ["s00", "s03"]}), targets)
    assert missing == ["s00"] and keep.tolist() == [False, True]
    with pytest.warns(UserWarning, match="s00"):
        probe(tiny_model(), store, "age", targets_file=tmp_path / "t.tsv", n_splits=3, n_boot=10, probes=("ridge",), progress=False)


def test_bad_inputs(store, tmp_path):
    X, y, g = planted(n_subjects=4)
    with pytest.raises(ValueError, match="4 subjects are fewer than the 5 folds; use fewer --folds"):
        run_probes(X, y, g, n_splits=5)
    with pytest.raises(ValueError, match="single-class target"):
        probe(tiny_model(), store, "constant", n_splits=3, progress=False)
    yn = np.asarray(y, dtype=object)
    yn[0] = np.nan
    with pytest.raises(ValueError, match="missing or NaN"):
        run_probes(X, yn, g, n_splits=2)
    with pytest.raises(ValueError, match="no phenotype column 'nope'"):
        probe(tiny_model(), store, "nope", progress=False)
    with pytest.raises(ValueError, match=r"trained on 7 regions but .* has 6"):
        probe(tiny_model(num_regions=7), store, "group", progress=False)
    with pytest.raises(ValueError, match="the target is constant"):
        run_probes(X, np.ones(len(y)), g, n_splits=2, task="regression")
    with pytest.raises(ValueError, match="unknown probes"):
        run_probes(X, y, g, n_splits=2, probes=("forest",))
