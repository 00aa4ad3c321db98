"""Brainmarks A424 evaluation datasets: the adapter, and the binning and scoring convention.

The datasets are written here the way Brainmarks writes them: a ``datasets.DatasetDict`` with
``Array2D`` float16 ``bold`` (each region z-scored over the sample), float32 ``mean`` / ``std``
of shape ``(1, 424)``, saved with ``save_to_disk`` into ``<name>.a424.arrow``; targets as
columns and as JSON target maps in a ``targets`` folder next to it.
"""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from pyarrow import ipc

from brainlm.data import (
    InputError,
    InputOptions,
    StoreOptions,
    load_atlas,
    open_source,
    prepare,
    write_store,
)
from brainlm.data.brainmarks import (
    BRAINMARKS_INDEX,
    BRAINMARKS_SPLIT,
    brainmarks_recordings,
    brainmarks_splits,
    read_target_maps,
)
from brainlm.evaluate.brainmarks import classification_scores, quantile_bins, quantile_edges

hfds = pytest.importorskip("datasets")
hfds.disable_progress_bars()

R, T = 424, 300
SUBJECTS = {"train": ["0012", "0034", "0056", "0078"], "validation": ["0090"], "test": ["0101"]}
AGES = {"0012": 22.5, "0034": 31.0, "0056": 27.25, "0078": 35.5, "0090": 24.0, "0101": 29.75}
GENDER = {"0012": "F", "0034": "M", "0056": "F", "0078": "M", "0090": "F", "0101": "M"}
FLUID = {"0012": 0, "0034": 2, "0056": 1, "0078": 1, "0090": 0}  # 0101 has no label


def _zscore(x):
    mean, std = x.mean(0, keepdims=True), x.std(0, keepdims=True)
    return (x - mean) / std, mean, std


def _features(regions=R, bold="bold"):
    return hfds.Features({
        "sub": hfds.Value("string"), "visit": hfds.Value("string"), "task": hfds.Value("string"),
        "gender": hfds.Value("string"), "age": hfds.Value("float32"), "path": hfds.Value("string"),
        "start": hfds.Value("int32"), "end": hfds.Value("int32"), "n_frames": hfds.Value("int32"),
        "tr": hfds.Value("float32"),
        bold: hfds.Array2D(shape=(None, regions), dtype="float16"),
        "mean": hfds.Array2D(shape=(1, regions), dtype="float32"),
        "std": hfds.Array2D(shape=(1, regions), dtype="float32"),
    })


def _sample(sub, rng, regions=R, start=0, length=T):
    raw = 500 + 40 * rng.normal(size=(length, regions)) + np.arange(regions)  # region means differ
    bold, mean, std = _zscore(raw)
    return {"sub": sub, "visit": "V1", "task": "REST", "gender": GENDER[sub], "age": AGES[sub],
            "path": f"{sub}_V1_MR/rfMRI_REST.dtseries.nii", "start": start, "end": start + length,
            "n_frames": length, "tr": 0.72, "bold": bold.astype(np.float16),
            "mean": mean.astype(np.float32), "std": std.astype(np.float32)}


def write_brainmarks(root, *, regions=R, bold="bold", seed=0, subjects=SUBJECTS, maps=True):
    """A Brainmarks-style dataset ``root`` (e.g. ``.../eval/toy.a424.arrow``); returns its samples."""
    rng = np.random.default_rng(seed)
    samples = {split: [_sample(s, rng, regions) for s in subs] for split, subs in subjects.items()}
    dd = {}
    for split, rows in samples.items():
        columns = {k: [r[k] for r in rows] for k in rows[0]}
        if bold != "bold":
            columns[bold] = columns.pop("bold")
        dd[split] = hfds.Dataset.from_dict(columns, features=_features(regions, bold), split=hfds.NamedSplit(split))
    hfds.DatasetDict(dd).save_to_disk(str(root))
    if maps:
        targets = root.parent / "targets"
        targets.mkdir(exist_ok=True)
        (targets / "toy_target_map_fluid.json").write_text(json.dumps(FLUID))
        (targets / "other_target_map_fluid.json").write_text(json.dumps({s: 9 for s in GENDER}))  # another dataset's
    return samples


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval") / "toy.a424.arrow"
    return root, write_brainmarks(root)


def _by_subject(tasks):
    return {rec.subject_id: rec for rec in (load() for _, load in tasks)}


# --------------------------------------------------------------------------- reading back

def test_layout_is_what_save_to_disk_writes(toy):
    root, _ = toy
    assert json.loads((root / "dataset_dict.json").read_text())["splits"] == ["train", "validation", "test"]
    assert list(brainmarks_splits(root)) == ["train", "validation", "test"]
    assert brainmarks_splits(root / "test") == {"test": root / "test"}
    assert (root / "train" / "state.json").is_file() and list((root / "train").glob("data-*.arrow"))


def test_values_ids_targets_and_splits(toy):
    root, samples = toy
    atlas, tasks, norm = brainmarks_recordings([root])
    assert norm == "robust"
    a424 = load_atlas("A424")
    assert atlas.name == "A424" and atlas.num_regions == R
    np.testing.assert_array_equal(atlas.coords, a424.coords)
    assert len(tasks) == 6 and all(src.split("#")[0].endswith(".arrow") for src, _ in tasks)

    recs = _by_subject(tasks)
    assert sorted(recs) == sorted(GENDER)  # text IDs, leading zeros kept
    for split, rows in samples.items():
        for row in rows:
            rec = recs[row["sub"]]
            expected = row["bold"].astype(np.float32) * row["std"] + row["mean"]  # the stored z-scores undone
            assert rec.data.dtype == np.float32 and rec.data.shape == (T, R)
            np.testing.assert_allclose(rec.data, expected, rtol=1e-6, atol=1e-3)
            raw_scale = row["bold"].astype(np.float64) * row["std"] + row["mean"]
            np.testing.assert_allclose(rec.data.mean(0), raw_scale.mean(0), rtol=1e-5)
            assert (rec.session_id, rec.task, rec.run_id) == ("V1", "REST", "")
            assert rec.tr == 0.72
            assert rec.recording_id == f"sub-{row['sub']}_ses-V1_task-REST"
            assert rec.phenotypes[BRAINMARKS_SPLIT] == split
            assert rec.phenotypes["gender"] == GENDER[row["sub"]]
            assert rec.phenotypes["age"] == AGES[row["sub"]]
            assert rec.phenotypes["fluid"] == FLUID.get(row["sub"])  # this dataset's map only; None when absent
            assert {"path", "n_frames", "sub", "bold", "mean", "std", "tr"}.isdisjoint(rec.phenotypes)
            assert rec.phenotypes["start"] == 0 and rec.phenotypes["end"] == T


def test_keep_stored_zscores(toy):
    root, samples = toy
    _, tasks, norm = brainmarks_recordings([root], unscale=False, targets=False)
    assert norm == "none"
    recs = _by_subject(tasks)
    row = samples["train"][0]
    np.testing.assert_array_equal(recs[row["sub"]].data, row["bold"].astype(np.float32))
    assert "fluid" not in recs[row["sub"]].phenotypes


def test_single_split_folder_and_explicit_target_map(toy):
    root, _ = toy
    _, tasks, _ = brainmarks_recordings([root / "validation"], targets=root.parent / "targets" / "toy_target_map_fluid.json")
    (rec,) = _by_subject(tasks).values()
    assert rec.subject_id == "0090" and rec.phenotypes[BRAINMARKS_SPLIT] == "validation"
    assert rec.phenotypes["fluid"] == 0


def test_loaders_feed_the_store(toy, tmp_path):
    root, _ = toy
    options = StoreOptions(window=100, split=(4, 1, 1), dtype="float32", progress=False)
    store = write_store(open_source([root], InputOptions(kind="brainmarks")), tmp_path / "store", options)
    auto = prepare([root], tmp_path / "auto", None, options)  # --kind auto recognises the layout
    assert auto.manifest["kind"] == "brainmarks" and auto.manifest["shards"] == store.manifest["shards"]
    assert store.normalization["method"] == "robust"
    assert sorted(store.recordings["subject_id"]) == sorted(GENDER)
    assert {"gender", "age", "fluid", BRAINMARKS_SPLIT} <= set(store.phenotype_columns)
    by_sub = store.recordings.set_index("subject_id")
    assert by_sub.loc["0090", BRAINMARKS_SPLIT] == "validation"


def test_clips_of_one_run_get_distinct_run_ids(tmp_path):
    rng = np.random.default_rng(1)
    rows = [_sample("0012", rng, start=s, length=120) for s in (0, 150)]
    rows.append(_sample("0012", rng, start=0, length=120))  # same start again: falls back to its position
    columns = {k: [r[k] for r in rows] for k in rows[0]}
    root = tmp_path / "clips.a424.arrow"
    hfds.DatasetDict({"train": hfds.Dataset.from_dict(columns, features=_features())}).save_to_disk(str(root))
    _, tasks, _ = brainmarks_recordings([root])
    ids = [load().recording_id for _, load in tasks]
    assert len(set(ids)) == 3
    assert ids[1] == "sub-0012_ses-V1_task-REST_run-s150"


def test_several_shards(tmp_path):
    rng = np.random.default_rng(4)
    rows = [_sample(s, rng, length=50) for s in SUBJECTS["train"]]
    root = tmp_path / "big.a424.arrow"
    dd = hfds.DatasetDict({"train": hfds.Dataset.from_dict({k: [r[k] for r in rows] for k in rows[0]}, features=_features())})
    dd.save_to_disk(str(root), num_shards={"train": 2})
    _, tasks, _ = brainmarks_recordings([root], targets=False)
    files = {src.split("#")[0] for src, _ in tasks}
    assert len(files) == 2 and all("-of-00002.arrow" in f for f in files)
    assert [load().subject_id for _, load in tasks] == SUBJECTS["train"]


def test_adni_keys_and_column_wins_on_name_clash(tmp_path):
    rng = np.random.default_rng(2)
    row = _sample("0012", rng)
    row.update(sub="168S6049", visit="20201012")
    columns = {k: [v] for k, v in row.items()}
    root = tmp_path / "eval" / "adni.a424.arrow"
    hfds.DatasetDict({"test": hfds.Dataset.from_dict(columns, features=_features())}).save_to_disk(str(root))
    targets = tmp_path / "eval" / "targets"
    targets.mkdir()
    (targets / "adni_target_map_mmse.json").write_text(json.dumps({"168_S_6049_2020-10-12": 2}))
    (targets / "adni_target_map_gender.json").write_text(json.dumps({"168_S_6049_2020-10-12": 1}))
    _, tasks, _ = brainmarks_recordings([root])
    rec = tasks[0][1]()
    assert rec.phenotypes["mmse"] == 2
    assert rec.phenotypes["gender"] == "F" and rec.phenotypes["gender_map"] == 1


def test_plain_arrow_without_datasets_metadata(tmp_path):
    """Arrow written by pyarrow alone (nested lists, no extension metadata) reads the same."""
    rng = np.random.default_rng(3)
    row = _sample("0012", rng)
    folder = tmp_path / "plain.a424.arrow" / "train"
    folder.mkdir(parents=True)
    table = pa.table({"sub": ["0012"], "tr": pa.array([0.72], pa.float32()),
                      "bold": [row["bold"].astype(np.float32).tolist()],
                      "mean": [row["mean"].tolist()], "std": [row["std"].tolist()]})
    with ipc.new_stream(str(folder / "data-00000-of-00001.arrow"), table.schema) as w:
        w.write_table(table)
    _, tasks, _ = brainmarks_recordings([folder.parent])
    rec = tasks[0][1]()
    assert rec.subject_id == "0012" and rec.phenotypes == {BRAINMARKS_SPLIT: "train", BRAINMARKS_INDEX: 0}
    np.testing.assert_allclose(rec.data, row["bold"].astype(np.float32) * row["std"] + row["mean"], atol=1e-3)


# --------------------------------------------------------------------------- bad inputs

def _fails(match, fn, *args, starts=None, **kwargs):
    with pytest.raises(InputError, match=match) as err:
        fn(*args, **kwargs)
    if starts is not None:
        assert str(err.value).startswith(str(starts)), str(err.value)
    return err


def test_missing_and_empty_folders(tmp_path):
    _fails("not found", brainmarks_recordings, [tmp_path / "nope.a424.arrow"], starts=tmp_path / "nope.a424.arrow")
    (tmp_path / "empty").mkdir()
    _fails("no Brainmarks data", brainmarks_recordings, [tmp_path / "empty"], starts=tmp_path / "empty")


def test_missing_split_and_missing_shard(tmp_path):
    root = tmp_path / "toy.a424.arrow"
    write_brainmarks(root, subjects={"train": ["0012"], "test": ["0101"]}, maps=False)
    listing = root / "dataset_dict.json"
    listing.write_text(json.dumps({"splits": ["train", "validation", "test"]}))
    _fails(r"missing: \['validation'\]", brainmarks_recordings, [root], starts=listing)
    listing.write_text(json.dumps({"splits": ["train", "test"]}))
    next((root / "test").glob("*.arrow")).unlink()
    _fails("data files listed in state.json are missing", brainmarks_recordings, [root], starts=root / "test")


def test_truncated_arrow(tmp_path):
    root = tmp_path / "toy.a424.arrow"
    write_brainmarks(root, subjects={"train": ["0012", "0034"]}, maps=False)
    shard = next((root / "train").glob("*.arrow"))
    shard.write_bytes(shard.read_bytes()[:2000])
    _fails("unreadable or truncated", brainmarks_recordings, [root], starts=shard)


def test_wrong_column(tmp_path):
    root = tmp_path / "toy.a424.arrow"
    write_brainmarks(root, subjects={"train": ["0012"]}, bold="timeseries", maps=False)
    shard = next((root / "train").glob("*.arrow"))
    _fails("no column 'bold'", brainmarks_recordings, [root], starts=shard)


def test_wrong_region_count(tmp_path):
    root = tmp_path / "toy.schaefer400.arrow"
    write_brainmarks(root, subjects={"train": ["0012"]}, regions=400, maps=False)
    shard = next((root / "train").glob("*.arrow"))
    _fails("400 regions, the A424 atlas has 424", brainmarks_recordings, [root], starts=shard)

    # Without the datasets metadata the count is found when the sample is loaded.
    folder = tmp_path / "plain.arrow" / "train"
    folder.mkdir(parents=True)
    table = pa.table({"sub": ["0012"], "bold": [np.zeros((T, 400), np.float32).tolist()],
                      "mean": [np.zeros((1, 400)).tolist()], "std": [np.ones((1, 400)).tolist()]})
    with ipc.new_stream(str(folder / "data-00000-of-00001.arrow"), table.schema) as w:
        w.write_table(table)
    _, tasks, _ = brainmarks_recordings([folder.parent])
    _fails("'bold' has 400 regions", tasks[0][1], starts=folder / "data-00000-of-00001.arrow#0")


def test_missing_mean_std(tmp_path):
    folder = tmp_path / "nomean.arrow" / "train"
    folder.mkdir(parents=True)
    table = pa.table({"sub": ["0012"], "bold": [np.ones((T, R), np.float32).tolist()]})
    with ipc.new_stream(str(folder / "data-00000-of-00001.arrow"), table.schema) as w:
        w.write_table(table)
    _fails("no column 'mean'", brainmarks_recordings, [folder.parent], starts=folder / "data-00000-of-00001.arrow")
    _, tasks, norm = brainmarks_recordings([folder.parent], unscale=False)
    assert norm == "none" and tasks[0][1]().data.shape == (T, R)


def test_bad_target_map(tmp_path):
    root = tmp_path / "toy.a424.arrow"
    write_brainmarks(root, subjects={"train": ["0012"]})
    bad = tmp_path / "targets" / "toy_target_map_fluid.json"
    bad.write_text("{not json")
    _fails("unreadable target map", brainmarks_recordings, [root], starts=bad)
    bad.write_text("[1, 2]")
    _fails("must be a JSON object", read_target_maps, [bad], starts=bad)
    _fails("not found", read_target_maps, [tmp_path / "none.json"], starts=tmp_path / "none.json")


# --------------------------------------------------------------------------- evaluation convention

def test_quantile_edges_by_hand():
    y_train = np.arange(1.0, 11.0)  # 1..10: the 1/3 and 2/3 quantiles sit at positions 3 and 6
    np.testing.assert_array_equal(quantile_edges(y_train), [4.0, 7.0])
    # 1..9: positions 8/3 and 16/3 -> 3 + 2/3 and 6 + 1/3 (linear interpolation)
    np.testing.assert_allclose(quantile_edges(np.arange(1.0, 10.0)), [11 / 3, 19 / 3])
    np.testing.assert_array_equal(quantile_edges(y_train, 4), [3.25, 5.5, 7.75])
    np.testing.assert_array_equal(quantile_edges([*y_train, np.nan]), [4.0, 7.0])  # NaN ignored


def test_quantile_bins_right_closed_and_clipped():
    y_train = np.arange(1.0, 11.0)
    y = [4.0, 4.5, 7.0, 7.01, -100.0, 100.0, np.nan, 1.0]
    np.testing.assert_array_equal(quantile_bins(y_train, y), [0, 1, 1, 2, 0, 2, -1, 0])
    assert quantile_bins(y_train, y).dtype == np.int64


def test_quantile_bins_match_pandas_qcut_on_the_reference():
    y = np.random.default_rng(0).normal(50, 10, size=101)
    np.testing.assert_array_equal(quantile_bins(y, y), pd.qcut(y, 3, labels=False))


def test_quantile_bins_rounded_edges():
    y_train = np.arange(1.0, 10.0)  # edges 3.6667 and 6.3333
    assert quantile_bins(y_train, [3.6666])[0] == 0
    np.testing.assert_array_equal(quantile_edges(y_train, decimals=3), [3.667, 6.333])
    assert quantile_bins(y_train, [6.3332], decimals=3)[0] == 2  # above the rounded edge 6.333
    assert quantile_bins(y_train, [6.3332])[0] == 1


def test_quantile_bins_bad_arguments():
    with pytest.raises(ValueError, match="n_bins"):
        quantile_bins([1, 2, 3], [1], n_bins=1)
    with pytest.raises(ValueError, match="no finite values"):
        quantile_bins([np.nan], [1])


def test_classification_metrics_by_hand():
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 1, 2, 0]
    m = classification_scores(np.array(y_true), np.array(y_pred))
    assert m["acc"] == pytest.approx(4 / 6)
    # per-class F1: class 0 P=1/2 R=1/2 -> 1/2; class 1 P=2/3 R=1 -> 4/5; class 2 P=1 R=1/2 -> 2/3
    assert m["f1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    assert m["bacc"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    # a class never predicted scores 0 in the macro average
    assert classification_scores(np.array([0, 1]), np.array([0, 0]))["f1"] == pytest.approx((2 / 3 + 0) / 2)
