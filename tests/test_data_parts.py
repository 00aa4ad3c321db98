"""Prepare on many machines: parts staged separately and merged equal the one-machine store."""

import json

import numpy as np
import pandas as pd
import pytest

from brainlm.cli import main
from brainlm.data import (
    InputOptions,
    StoreOptions,
    merge_parts,
    open_source,
    open_store,
    prepare,
    prepare_part,
)
from brainlm.errors import OutputLockedError, UserError
from brainlm.io import OutputLock

R = 4


@pytest.fixture
def inputs(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(9):
        path = tmp_path / "in" / f"sub-{i // 2:02d}_task-rest_run-{i % 2 + 1}.npy"
        path.parent.mkdir(exist_ok=True)
        np.save(path, (rng.normal(size=(50 + 3 * i, R)) * (1 + i)).astype(np.float32))
        paths.append(path)
    np.save(tmp_path / "in" / "sub-09_task-rest_run-1.npy", np.full((50, R), np.nan, np.float32))  # skipped
    np.save(tmp_path / "in" / "sub-10_task-rest_run-1.npy", np.zeros((5, R), np.float32))  # too short: skipped
    pd.DataFrame({"x": rng.normal(size=R), "y": rng.normal(size=R), "z": rng.normal(size=R)}).to_csv(
        tmp_path / "coords.csv", index=False)
    pd.DataFrame({"participant_id": [f"sub-{i:02d}" for i in range(11)], "age": np.arange(11) + 20.0}).to_csv(
        tmp_path / "participants.tsv", sep="\t", index=False)
    return tmp_path


def _input_options(root):
    return InputOptions(coords=str(root / "coords.csv"), participants=str(root / "participants.tsv"))


STORE = dict(window=20, split=(3, 1, 2), seed=4, progress=False)


def _tables(path):
    store = open_store(path)
    return store.manifest, store.recordings, [store.get(i) for i in range(len(store))]


def test_merged_parts_equal_the_one_machine_store(inputs):
    whole = prepare([inputs / "in"], inputs / "whole", _input_options(inputs), StoreOptions(**STORE))
    source = open_source([inputs / "in"], _input_options(inputs))
    parts = [prepare_part(source, inputs / f"part{i}", StoreOptions(**STORE), (i, 3)) for i in range(3)]
    merged = merge_parts(reversed(parts), inputs / "merged", progress_bars=False)  # order of the arguments does not matter
    m1, rec1, data1 = _tables(whole.path)
    m2, rec2, data2 = _tables(merged.path)
    assert m1 == m2  # same splits, normalisation statistics, shards (names and SHA-256), skipped inputs
    pd.testing.assert_frame_equal(rec1, rec2)
    for a, b in zip(data1, data2):
        np.testing.assert_array_equal(a, b)
    assert len(m1["skipped"]) == 2 and "sub-09" in m1["skipped"][0]["reason"]


def test_bad_parts_are_refused_and_nothing_is_written(inputs):
    source = open_source([inputs / "in"], _input_options(inputs))
    p0 = prepare_part(source, inputs / "p0", StoreOptions(**STORE), (0, 2))
    p1 = prepare_part(source, inputs / "p1", StoreOptions(**STORE), (1, 2))
    other = prepare_part(source, inputs / "other", StoreOptions(**{**STORE, "seed": 5}), (1, 2))
    with pytest.raises(UserError, match=r"parts \[1\] of 2 are missing"):
        merge_parts([p0], inputs / "s")
    with pytest.raises(UserError, match="part 0/2 given twice"):
        merge_parts([p0, p0, p1], inputs / "s")
    with pytest.raises(UserError, match="built from other inputs or options"):
        merge_parts([p0, other], inputs / "s")
    with pytest.raises(UserError, match="not a finished prepare part"):
        merge_parts([p0, inputs / "in"], inputs / "s")
    with pytest.raises(UserError, match="differ from those the parts were built with"):
        merge_parts([p0, p1], inputs / "s", overwrite_options=StoreOptions(**{**STORE, "dtype": "float32"}))
    assert not (inputs / "s").exists()


def test_cli_parts_and_merge(inputs, capsys):
    common = [str(inputs / "in"), "--coords", str(inputs / "coords.csv"), "--participants",
              str(inputs / "participants.tsv"), "--window", "20", "--split", "3", "1", "2", "--seed", "4"]
    for i in range(2):
        assert main(["prepare", *common, "--part", f"{i}/2", "--out", str(inputs / f"p{i}")]) == 0
    assert main(["prepare", "--merge", str(inputs / "p0"), str(inputs / "p1"), "--out", str(inputs / "m")]) == 0
    assert main(["prepare", *common, "--out", str(inputs / "w")]) == 0
    assert json.loads((inputs / "m" / "manifest.json").read_text()) == json.loads((inputs / "w" / "manifest.json").read_text())
    capsys.readouterr()
    assert main(["prepare", *common, "--part", "2/2", "--out", str(inputs / "p2")]) == 2
    assert "--part 2/2: I must be in 0..N-1" in capsys.readouterr().err


def test_failed_prepare_leaves_nothing(inputs):
    out = inputs / "store"
    with pytest.raises(UserError):
        prepare([inputs / "in"], out, _input_options(inputs), StoreOptions(**STORE, on_error="raise"))
    assert not out.exists() and not list(inputs.glob(".store*"))


def test_a_second_writer_is_refused(inputs):
    with OutputLock(inputs / "store", folder=True):
        with pytest.raises(OutputLockedError, match="being written by process"):
            prepare([inputs / "in"], inputs / "store", _input_options(inputs), StoreOptions(**STORE))


def test_nan_coordinates_are_refused(inputs, capsys):
    table = pd.read_csv(inputs / "coords.csv")
    table.loc[2, "y"] = np.nan
    table.to_csv(inputs / "bad.csv", index=False)
    assert main(["prepare", str(inputs / "in"), "--coords", str(inputs / "bad.csv"), "--out", str(inputs / "s")]) == 2
    err = capsys.readouterr().err
    assert "bad.csv: 1 regions have missing or non-finite coordinates (e.g. row 3)" in err
    assert not (inputs / "s").exists()


def test_folder_kinds_are_recognised(tmp_path):
    from brainlm.data.sources import detect_kind

    (tmp_path / "bold").mkdir()
    (tmp_path / "bold" / "sub-01_bold.nii.gz").write_bytes(b"")
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "sub-01.npy").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    assert detect_kind(tmp_path / "bold") == "bold"  # plain NIfTI files, no BIDS layout, no --kind needed
    assert detect_kind(tmp_path / "series") == "timeseries"
    assert detect_kind(tmp_path / "bold" / "sub-01_bold.nii.gz") == "bold"
    with pytest.raises(UserError, match="cannot tell what this folder holds.*pass --kind"):
        detect_kind(tmp_path / "empty")


def test_flags_are_never_abbreviated(inputs, capsys):
    """``--partic`` must not silently mean ``--participants`` (nor ``--part``)."""
    argv = ["prepare", str(inputs / "in"), "--coords", str(inputs / "coords.csv"), "--out", str(inputs / "s"),
            "--partic", str(inputs / "participants.tsv")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unrecognized arguments: --partic" in err
    assert not (inputs / "s").exists()


def test_out_pointing_at_a_file_is_one_line(inputs, capsys):
    (inputs / "afile").write_text("x")
    assert main(["prepare", str(inputs / "in"), "--coords", str(inputs / "coords.csv"), "--out", str(inputs / "afile")]) == 2
    assert "--out" in capsys.readouterr().err and (inputs / "afile").read_text() == "x"
