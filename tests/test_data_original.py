"""The original BrainLM Arrow layout, written by the datasets library, read into a store."""

import numpy as np
import pytest

from brainlm.data import (
    InputError,
    InputOptions,
    StoreOptions,
    WindowDataset,
    prepare,
    read_original_dataset,
)

datasets = pytest.importorskip("datasets")
R, T = 7, 48


def _write_original(root, n=6, seed=0):
    rng = np.random.default_rng(seed)
    raw = [rng.normal(size=(T, R)).astype(np.float32) for _ in range(n)]
    columns = {
        "Raw_Recording": raw,
        "Voxelwise_RobustScaler_Normalized_Recording": [x * 0.5 for x in raw],
        "Filename": [f"{1000 + i}_20227_2_0.dat" for i in range(n)],
        "Patient ID": [str(1000 + i) for i in range(n)],
        "Age.At.MHQ": [40.0 + i for i in range(n)],
    }
    datasets.Dataset.from_dict(columns).save_to_disk(str(root / "train"))
    coords = rng.normal(size=(R, 3)).astype(np.float32)
    datasets.Dataset.from_dict({"Index": np.arange(1, R + 1).astype(np.float32), "X": coords[:, 0], "Y": coords[:, 1],
                                "Z": coords[:, 2]}).save_to_disk(str(root / "Brain_Region_Coordinates"))
    return raw, coords


def test_original_dataset_to_store(tmp_path):
    raw, coords = _write_original(tmp_path)
    store = prepare([tmp_path / "train"], tmp_path / "store", None,
                    StoreOptions(window=16, split=(4, 1, 1), dtype="float32", progress=False))
    assert store.normalization["method"] == "none"
    np.testing.assert_allclose(store.coords, coords)
    assert sorted(store.recordings["subject_id"]) == [str(1000 + i) for i in range(6)]
    assert store.phenotype_columns == ["Age.At.MHQ"]
    for _, row in store.recordings.iterrows():
        i = int(row["subject_id"]) - 1000
        np.testing.assert_array_equal(store.get(row["recording_id"]), raw[i] * 0.5)
        assert row["Age.At.MHQ"] == 40.0 + i
    batch = WindowDataset(store, "train", window=16, mode="fixed")[0]
    assert batch["signal_vectors"].shape == (R, 16)


def test_original_raw_column_renormalised(tmp_path):
    raw, _ = _write_original(tmp_path)
    store = prepare([tmp_path / "train"], tmp_path / "s", InputOptions(kind="original", recording_column="Raw_Recording"),
                    StoreOptions(normalization="zscore", window=16, split=(4, 1, 1), dtype="float32", progress=False))
    x = store.get(0)
    np.testing.assert_allclose(x.mean(0), 0, atol=1e-5)


def test_original_bad_inputs(tmp_path):
    _write_original(tmp_path)
    with pytest.raises(InputError, match="no column 'Nope'"):
        prepare([tmp_path / "train"], tmp_path / "s", InputOptions(kind="original", recording_column="Nope"),
                StoreOptions(progress=False))
    arrow = next((tmp_path / "train").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:300])
    with pytest.raises(InputError, match="unreadable or truncated"):
        read_original_dataset(tmp_path / "train")
