"""prepare -> store -> loader round trips, input formats, splits, atomic and idempotent writes, bad inputs."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
import scipy.io

from brainlm.data import (
    InputError,
    InputOptions,
    Normalizer,
    StoreOptions,
    WindowDataset,
    collate_windows,
    open_store,
    prepare,
    read_timeseries,
    split_subjects,
)
from brainlm.errors import OutputExistsError
from brainlm.io import MARKER

R = 6


def _coords(tmp_path):
    path = tmp_path / "coords.csv"
    pd.DataFrame({"name": [f"r{i}" for i in range(R)], "x": np.arange(R) * 1.0, "y": -np.arange(R) * 2.0,
                  "z": np.ones(R)}).to_csv(path, index=False)
    return path


def _series(n=6, T=60, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(T + 5 * i, R)) * (1 + i) + 100).astype(np.float32) for i in range(n)]


def _write_npy(folder, series, names=None):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, x in enumerate(series):
        p = folder / (names[i] if names else f"sub-{i:02d}_task-rest_run-1.npy")
        np.save(p, x)
        paths.append(str(p))
    return paths


_INPUT_FIELDS = {f.name for f in dataclasses.fields(InputOptions)}


def _options(tmp_path, **kw):
    base = dict(coords=str(_coords(tmp_path)), window=20, split=(4, 1, 1), tr=0.72, progress=False)
    base.update(kw)
    return (InputOptions(**{k: v for k, v in base.items() if k in _INPUT_FIELDS}),
            StoreOptions(**{k: v for k, v in base.items() if k not in _INPUT_FIELDS}))


def _prepare(tmp_path, inputs, out_dir=None, **kw):
    return prepare(inputs, out_dir or tmp_path / "store", *_options(tmp_path, **kw))


def test_round_trip_float32_exact(tmp_path):
    series = _series()
    store = _prepare(tmp_path, _write_npy(tmp_path / "in", series), dtype="float32", normalization="zscore")
    assert store.num_regions == R and store.coords.shape == (R, 3) and store.region_names[0] == "r0"
    for _, row in store.recordings.iterrows():
        raw = series[int(row["subject_id"])]
        expected = Normalizer("zscore").transform(raw)
        np.testing.assert_array_equal(store.get(row["recording_id"]), expected)
    # The loader gives back the same values, windowed and transposed to (R, W).
    ds = WindowDataset(store, "train", window=20, mode="sliding", stride=20)
    for i in range(len(ds)):
        item = ds[i]
        raw = series[int(item["subject_id"])]
        t0 = item["window_start"]
        np.testing.assert_array_equal(item["signal_vectors"].numpy(), Normalizer("zscore").transform(raw)[t0:t0 + 20].T)


def test_round_trip_float16_and_train_only_statistics(tmp_path):
    series = _series()
    store = _prepare(tmp_path, _write_npy(tmp_path / "in", series))  # robust, float16
    norm = Normalizer.from_state(store.normalization)
    assert store.normalization["method"] == "robust" and store.normalization["num_fit_recordings"] == 4
    train = store.split_index("train")
    refit = Normalizer("robust").fit(series[int(s)] for s in store.recordings["subject_id"].iloc[train])
    np.testing.assert_allclose(norm.scale_, refit.scale_)  # fitted on the training split only
    for _, row in store.recordings.iterrows():
        expected = norm.transform(series[int(row["subject_id"])])
        got = store.get(row["recording_id"])
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)  # float16 precision


def test_store_readable_with_pyarrow_alone(tmp_path):
    series = _series()
    _prepare(tmp_path, _write_npy(tmp_path / "in", series), dtype="float32", normalization="none")
    root = tmp_path / "store"
    manifest = json.loads((root / "manifest.json").read_text())
    regions = pq.read_table(root / manifest["files"]["regions"]).to_pandas()
    assert list(regions.columns) == ["region_index", "name", "x", "y", "z"]
    shard = manifest["shards"][0]
    table = ipc.open_file(str(root / shard["file"])).read_all()
    row = table.slice(0, 1).to_pylist()[0]
    x = np.array(row["timeseries"], np.float32)  # (T, R)
    np.testing.assert_array_equal(x, series[int(row["subject_id"])])
    assert row["atlas"] == "coords" and row["normalization"] == "none" and abs(row["tr"] - 0.72) < 1e-6
    assert sum(s["num_recordings"] for s in manifest["shards"]) == manifest["num_recordings"] == 6


def test_input_formats_and_orientation(tmp_path):
    x = _series(1, T=40)[0]
    (tmp_path / "a.csv").write_text("\n".join(",".join(map(str, r)) for r in x.tolist()))
    pd.DataFrame(x.T, columns=[f"t{i}" for i in range(40)]).to_csv(tmp_path / "b.tsv", sep="\t", index=False)  # regions x time, header
    scipy.io.savemat(tmp_path / "c.mat", {"tc": x.T.astype(np.float64)})
    pd.DataFrame(x, columns=[f"r{i}" for i in range(R)]).to_parquet(tmp_path / "d.parquet")
    np.save(tmp_path / "e.npy", x.T)
    for name in ["a.csv", "b.tsv", "c.mat", "d.parquet", "e.npy"]:
        np.testing.assert_allclose(read_timeseries(tmp_path / name, num_regions=R), x, rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(read_timeseries(tmp_path / "e.npy", orientation="RT"), x)


def test_split_by_subject_deterministic(tmp_path):
    # Two runs per subject: both runs of a subject must land in the same split.
    series = _series(12, T=30)
    names = [f"sub-{i // 2:02d}_task-rest_run-{i % 2 + 1}.npy" for i in range(12)]
    store = _prepare(tmp_path, _write_npy(tmp_path / "in", series, names), split=(0.5, 0.25, 0.25), seed=3)
    by_split = store.recordings.groupby("split")["subject_id"].apply(set)
    assert sum(len(s) for s in by_split) == 6 and set.intersection(*by_split) == set()
    assert store.splits == split_subjects([f"{i:02d}" for i in range(6)], (0.5, 0.25, 0.25), seed=3)
    assert {k: v["num_recordings"] for k, v in store.manifest["splits"].items()} == {"train": 4, "validation": 4, "test": 4}


def test_rerun_is_idempotent_and_atomic(tmp_path):
    inputs = _write_npy(tmp_path / "in", _series())
    store = _prepare(tmp_path, inputs)
    files = sorted((tmp_path / "store").rglob("*"))
    stamps = {p: p.stat().st_mtime_ns for p in files}
    again = _prepare(tmp_path, inputs)
    assert {p: p.stat().st_mtime_ns for p in sorted((tmp_path / "store").rglob("*"))} == stamps
    assert again.manifest == store.manifest
    again.verify()
    # no temporary or staging files left; the one hidden file is brainlm's marker of the folder
    assert [p.name for p in files if p.name.startswith(".")] == [MARKER]
    # A changed input is another store: replaced only with overwrite, and then the old shards disappear once
    # the new manifest is in place.
    np.save(inputs[0], _series(1, T=80, seed=9)[0])
    with pytest.raises(OutputExistsError, match="holds a store built from other inputs or options.*--overwrite"):
        _prepare(tmp_path, inputs)
    assert open_store(tmp_path / "store").manifest == store.manifest
    rebuilt = prepare(inputs, tmp_path / "store", *_options(tmp_path), overwrite=True)
    assert rebuilt.manifest["fingerprint"] != store.manifest["fingerprint"]
    assert sorted(p.name for p in (tmp_path / "store" / "shards").iterdir()) == sorted(
        s["file"].split("/")[1] for s in rebuilt.manifest["shards"])


def test_shards_roll_over_and_stream(tmp_path):
    series = _series(6, T=200)
    store = _prepare(tmp_path, _write_npy(tmp_path / "in", series), shard_mb=0, dtype="float32")
    assert len(store.manifest["shards"]) == 6  # one recording per shard at this tiny size
    got = {m["recording_id"]: x for m, x in store.iter_recordings("train")}
    assert len(got) == 4


# --------------------------------------------------------------------------- bad inputs

@pytest.mark.parametrize(
    "make, match",
    [
        (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 7, np.nan, x), "NaN/Inf"),
        (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 9, np.inf, x), "NaN/Inf"),
        (lambda x: np.concatenate([x[:, :2], np.full((len(x), 1), 3.0), x[:, 3:]], axis=1), "constant"),
        (lambda x: x[:10], "shorter than one window"),
        (lambda x: x[:, :4], "4 regions"),
    ],
    ids=["nan", "inf", "constant", "short", "regions"],
)
def test_bad_recording_skipped_or_raised(tmp_path, make, match):
    series = _series()
    series[2] = make(series[2])
    inputs = _write_npy(tmp_path / "in", series)
    store = _prepare(tmp_path, inputs, split=(3, 1, 1))
    assert len(store) == 5 and "sub-02" not in set(store.recordings["recording_id"].str[:6])
    (skip,) = store.manifest["skipped"]
    assert "sub-02_task-rest_run-1.npy" in skip["reason"]
    with pytest.raises(InputError, match=rf"sub-02_task-rest_run-1.npy.*{match}"):
        _prepare(tmp_path, inputs, out_dir=tmp_path / "other", on_error="raise", split=(3, 1, 1))
    assert not (tmp_path / "other" / "manifest.json").exists()


def test_duplicate_ids_unreadable_and_truncated_files(tmp_path):
    series = _series(5)
    inputs = _write_npy(tmp_path / "in", series)
    dup = tmp_path / "in2" / "sub-01_task-rest_run-1.npy"
    dup.parent.mkdir()
    np.save(dup, series[0])
    trunc = tmp_path / "in" / "sub-07_task-rest_run-1.npy"
    np.save(trunc, series[0])
    trunc.write_bytes(trunc.read_bytes()[:200])
    garbage = tmp_path / "in" / "sub-08_task-rest_run-1.csv"
    garbage.write_text("a,b\nc,d\n")
    store = _prepare(tmp_path, inputs + [str(dup), str(trunc), str(garbage)], split=(3, 1, 1))
    reasons = [s["reason"] for s in store.manifest["skipped"]]
    assert len(store) == 5 and len(reasons) == 3
    assert any("in2/sub-01_task-rest_run-1.npy" in r and "duplicate" in r for r in reasons)
    assert any("sub-07_task-rest_run-1.npy" in r and "truncated" in r for r in reasons)
    assert any("sub-08_task-rest_run-1.csv" in r for r in reasons)


def test_missing_coordinates_and_wrong_coordinate_count(tmp_path):
    inputs = _write_npy(tmp_path / "in", _series())
    with pytest.raises(ValueError, match="coordinate file"):
        _prepare(tmp_path, inputs, coords=None)
    np.savetxt(tmp_path / "c.dat", np.c_[np.arange(1, 5), np.zeros((4, 3))], delimiter="\t")
    with pytest.raises(InputError, match="6 regions.*coordinates list 4"):
        _prepare(tmp_path, inputs, coords=str(tmp_path / "c.dat"), on_error="raise")


def test_target_tr_resampling(tmp_path):
    series = _series(6, T=100)
    store = _prepare(tmp_path, _write_npy(tmp_path / "in", series), tr=1.44, target_tr=0.72, normalization="none",
                         dtype="float32")
    np.testing.assert_allclose(store.recordings["tr"], 0.72)
    row = store.recordings.iloc[0]
    assert row["num_timepoints"] == 2 * len(series[int(row["subject_id"])])


def test_collate_phenotypes(tmp_path):
    inputs = _write_npy(tmp_path / "in", _series())
    pd.DataFrame({"participant_id": [f"sub-{i:02d}" for i in range(6)], "age": np.arange(6) + 20.0,
                  "sex": list("MFMFMF")}).to_csv(tmp_path / "participants.tsv", sep="\t", index=False)
    store = _prepare(tmp_path, inputs, participants=str(tmp_path / "participants.tsv"))
    assert store.phenotype_columns == ["age", "sex"]
    batch = collate_windows([it for it in WindowDataset(store, "train", window=20)])
    assert batch["phenotypes"]["age"].dtype.is_floating_point
    np.testing.assert_array_equal(batch["phenotypes"]["age"].numpy(), [20.0 + int(s) for s in batch["subject_id"]])
    assert batch["phenotypes"]["sex"] == ["MF"[int(s) % 2] for s in batch["subject_id"]]


def test_failed_rebuild_leaves_previous_store_intact(tmp_path):
    from brainlm.data import Atlas, Recording, Source, write_store

    inputs = _write_npy(tmp_path / "in", _series())
    store = _prepare(tmp_path, inputs)

    def crash():
        raise MemoryError("simulated crash while reading")

    tasks = [(p, lambda p=p: Recording(np.load(p), subject_id=p[-20:-18], source=p)) for p in inputs] + [("x", crash)]
    atlas = Atlas(name="coords", coords=store.coords, region_names=store.region_names)
    with pytest.raises(MemoryError):
        write_store(Source("timeseries", atlas, tasks), tmp_path / "store", _options(tmp_path, seed=1)[1],
                    overwrite=True)
    again = open_store(tmp_path / "store")
    assert again.manifest == store.manifest
    again.verify()
    assert [p.name for p in (tmp_path / "store").glob(".*")] == [MARKER]  # staging removed


def test_participant_ids_keep_leading_zeros(tmp_path):
    from brainlm.data import read_participants

    (tmp_path / "p.tsv").write_text("participant_id\tage\nsub-007\t31\n008\tn/a\n")
    table = read_participants(tmp_path / "p.tsv")
    assert list(table.index) == ["007", "008"] and np.isnan(table.loc["008", "age"])


def test_cli_prepare_folder_and_bad_file(tmp_path, capsys):
    from brainlm.cli import main

    series = _series()
    _write_npy(tmp_path / "in", series)
    args = ["prepare", str(tmp_path / "in"), "--coords", str(_coords(tmp_path)), "--window", "20", "--split", "4", "1", "1"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert len(open_store(tmp_path / "a")) == 6
    series[3][5, 2] = np.nan
    _write_npy(tmp_path / "in", series)
    assert main([*args, "--out", str(tmp_path / "b"), "--on-error", "raise"]) == 2
    err = capsys.readouterr().err
    assert "brainlm prepare: error:" in err and "sub-03_task-rest_run-1.npy" in err and "NaN" in err
