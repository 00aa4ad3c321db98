"""Hostile inputs, part 2: one validation path for recordings, flags checked where they are parsed
and named as typed, and the wrong results and crashes fixed at their root."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from downstream_synth import tiny_model
from hostile import R, no_progress_bars, refused, series, world  # noqa: F401 (fixtures)

from brainlm.cli import main
from brainlm.errors import InputError
from brainlm.io import Embeddings, read_embeddings, write_embeddings


def _bad(folder, name, x):
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / name, x)
    return folder / name


# ------------------------------------------------------------------- one validation path for recordings


@pytest.mark.parametrize("kind", ["nan", "constant", "complex"])
def test_embed_files_pass_the_checks_of_prepare(world, tmp_path, capsys, kind):
    x = series(9)
    bad = {"nan": lambda: np.where(np.arange(x.size).reshape(x.shape) == 7, np.nan, x),
           "constant": lambda: np.ones_like(x), "complex": lambda: x + 1j}[kind]()
    path = _bad(tmp_path / "in", "sub-99.npy", bad)
    coords = ["--coords", world / "coords.csv"]
    line = refused(capsys, tmp_path, ["embed", world / "ckpt", path, *coords, "--out", tmp_path / "e.parquet"], path)
    assert "no usable recordings" in line
    good = world / "inputs" / "sub-00.npy"
    refused(capsys, tmp_path, ["embed", world / "ckpt", good, path, *coords, "--out", tmp_path / "e.parquet",
                               "--on-error", "raise"], path)
    # skipped like a bad input of prepare: the table holds the good recording only, and no NaN
    assert main(["embed", str(world / "ckpt"), str(good), str(path), "--coords", str(world / "coords.csv"),
                 "--out", str(tmp_path / "e.parquet")]) == 0
    emb = read_embeddings(tmp_path / "e.parquet")
    assert emb.index["subject_id"].tolist() == ["00"] and np.isfinite(emb.X).all()


def test_duplicate_recording_ids_keep_the_first(world, tmp_path):
    a = _bad(tmp_path / "a", "sub-00.npy", series(0))
    b = _bad(tmp_path / "b", "sub-00.npy", series(1))
    assert main(["embed", str(world / "ckpt"), str(a), str(b), "--coords", str(world / "coords.csv"),
                 "--out", str(tmp_path / "e.parquet")]) == 0
    assert read_embeddings(tmp_path / "e.parquet").index["recording_id"].tolist() == ["sub-00"]


def test_prepare_refuses_a_complex_recording(world, tmp_path, capsys):
    path = _bad(tmp_path / "in", "sub-00.npy", series(0) + 1j)
    line = refused(capsys, tmp_path, ["prepare", path, "--coords", world / "coords.csv", "--window", "20",
                                      "--split", "1", "0", "0", "--out", tmp_path / "s"], path, "complex")
    assert "no usable recordings" in line


def test_the_scikit_learn_embedder_checks_its_arrays(world):
    from brainlm.sklearn import BrainLMEmbedder

    coords = np.random.default_rng(0).normal(size=(R, 3))
    embedder = BrainLMEmbedder(model=tiny_model(), coords=coords).fit()
    assert embedder.transform([series(0)]).shape == (1, 16)
    for bad, match in ((np.full((60, R), np.nan), "NaN"), (series(0) + 1j, "complex"), (np.ones((60, R)), "constant")):
        with pytest.raises(InputError, match=match):
            embedder.transform([series(0), bad])


def test_a_float16_overflow_is_skipped_like_any_bad_input(world, tmp_path, capsys):
    inputs = tmp_path / "in"
    shutil.copytree(world / "inputs", inputs)
    np.save(inputs / "sub-03.npy", series(3) * 1e6)
    args = ["prepare", inputs, "--coords", world / "coords.csv", "--window", "20", "--split", "3", "1", "1",
            "--normalization", "none"]
    refused(capsys, tmp_path, [*args, "--on-error", "raise", "--out", tmp_path / "s"], inputs / "sub-03.npy",
            "float16")
    assert main([str(a) for a in [*args, "--split", "3", "1", "1", "--out", tmp_path / "s"]]) == 0
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["num_recordings"] == 5 and "sub-03.npy" in manifest["skipped"][0]["source"]
    assert "float16" in capsys.readouterr().err


def test_a_short_time_first_nifti_is_named_time_first(tmp_path, capsys):
    import nibabel as nib

    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = [-20, -20, -120]
    img = nib.Nifti1Image(np.random.default_rng(0).random((60, 10, 10, 10)).astype(np.float32), affine)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, tmp_path / "sub-01_bold.nii.gz")
    refused(capsys, tmp_path, ["prepare", tmp_path / "sub-01_bold.nii.gz", "--window", "5", "--on-error", "raise",
                               "--out", tmp_path / "s"], "sub-01_bold.nii.gz", "axis 0 looks like time")


def test_a_file_name_that_is_not_utf8_is_a_bad_input(world, tmp_path, capsys):
    import os

    folder = tmp_path / "in"
    folder.mkdir()
    bad = os.path.join(os.fsencode(folder), b"sub-\xff04.npy")
    with open(bad, "wb") as f:
        np.save(f, series(4))
    refused(capsys, tmp_path, ["prepare", folder, "--coords", world / "coords.csv", "--window", "20", "--split", "1",
                               "0", "0", "--out", tmp_path / "s"], "not valid UTF-8", "sub-\\xff04.npy")
    assert not (tmp_path / "s").exists()
    for i in range(4):
        np.save(folder / f"sub-{i:02d}.npy", series(i))
    assert main(["prepare", str(folder), "--coords", str(world / "coords.csv"), "--window", "20", "--split", "2", "1",
                 "1", "--out", str(tmp_path / "s")]) == 0
    assert "not valid UTF-8" in json.loads((tmp_path / "s" / "manifest.json").read_text())["skipped"][0]["reason"]
    assert main(["embed", str(world / "ckpt"), *map(str, sorted(folder.iterdir())), "--coords",
                 str(world / "coords.csv"), "--out", str(tmp_path / "e.parquet")]) == 0
    assert len(read_embeddings(tmp_path / "e.parquet")) == 4


# ------------------------------------------------------------------------------- flags and messages


def test_splits_that_would_be_empty_or_are_not_numbers(world, tmp_path, capsys):
    five = tmp_path / "five"
    shutil.copytree(world / "inputs", five)
    (five / "sub-05.npy").unlink()
    args = ["prepare", five, "--coords", world / "coords.csv", "--window", "20", "--out", tmp_path / "s"]
    refused(capsys, tmp_path, args, "--split 0.8 0.1 0.1", "no validation subject among 5")
    for bad in ("inf", "nan"):
        refused(capsys, tmp_path, [*args, "--split", bad, "1", "1"], "--split", "finite")
    assert main([str(a) for a in [*args, "--split", "1", "0", "0"]]) == 0  # an empty split asked for is fine


def test_participants_that_match_no_subject(world, tmp_path, capsys):
    (tmp_path / "p.csv").write_text("participant_id,age\nsub-98,31\nsub-99,40\n")
    refused(capsys, tmp_path, ["prepare", world / "inputs", "--coords", world / "coords.csv", "--window", "20",
                               "--participants", tmp_path / "p.csv", "--out", tmp_path / "s"], "--participants",
            "none of its 2 subject IDs")


@pytest.mark.parametrize("argv, names", [
    (["embed", "CKPT", "STORE", "--out", "OUT/e.parquet", "--batch-size", "-3"], ["--batch-size"]),
    (["embed", "CKPT", "STORE", "--out", "OUT/e.parquet", "--stride", "-5"], ["--stride"]),
    (["embed", "CKPT", "/missing/store", "--out", "OUT/e.parquet"], ["/missing/store", "no such store"]),
    (["embed", "owner/na--me", "STORE", "--out", "OUT/e.parquet"], ["owner/na--me", "not a valid Hugging Face Hub id"]),
    (["forecast", "CKPT", "STORE", "--out", "OUT/f", "-k", "7"], ["--last 7", "multiple of the patch size"]),
    (["benchmark", "CKPT", "STORE", "--out", "OUT/b", "--tasks", "forecasting", "--forecast-k", "7"],
     ["--forecast-k 7"]),
    (["benchmark", "tiny", "STORE", "--out", "OUT/b", "--cv", "20"], ["fewer --cv", "20 folds"]),
    (["integrate", "cca", "--brain", "b.npy", "--genetic", "g.csv", "--out", "OUT/i", "--permutations", "-1"],
     ["--permutations"]),
    (["pretrain", "--preset", "tiny", "--data", "STORE", "--out", "OUT/run", "--max_grad_norm=inf"],
     ["--max_grad_norm", "finite"]),  # train_config.json is strict JSON: no Infinity in it
])
def test_messages_name_the_flag_the_user_typed(world, tmp_path, capsys, argv, names):
    where = {"CKPT": str(world / "ckpt"), "STORE": str(world / "store")}
    argv = [where.get(a, a.replace("OUT", str(tmp_path))) for a in argv]
    refused(capsys, tmp_path, argv, *names)


def test_a_mat_file_with_several_variables_names_mat_key(world, tmp_path, capsys):
    import scipy.io

    scipy.io.savemat(tmp_path / "sub-00.mat", {"a": series(0), "b": series(1)})
    refused(capsys, tmp_path, ["prepare", tmp_path / "sub-00.mat", "--coords", world / "coords.csv", "--window", "20",
                               "--on-error", "raise", "--out", tmp_path / "s"], "sub-00.mat", "--mat-key")
    assert main(["embed", str(world / "ckpt"), str(tmp_path / "sub-00.mat"), "--coords", str(world / "coords.csv"),
                 "--mat-key", "b", "--out", str(tmp_path / "e.parquet")]) == 0


# --------------------------------------------------------------------------- wrong results and crashes


def test_a_numeric_target_with_one_text_value_is_refused(world, tmp_path, capsys):
    targets = pd.DataFrame({"subject_id": [f"s{i:02d}" for i in range(12)], "score": [str(i * 1.5) for i in range(12)]})
    targets.loc[5, "score"] = "abc"
    targets.to_csv(tmp_path / "t.csv", index=False)
    refused(capsys, tmp_path, ["probe", world / "ckpt", world / "store", "--targets", tmp_path / "t.csv",
                               "--target", "score", "--probes", "dummy", "--no-fc", "--folds", "2", "--bootstrap", "0",
                               "--out", tmp_path / "p"], "--target", "'abc'")


def test_integrate_with_an_npy_table_and_a_participant_id_column(world, tmp_path, capsys):
    rng = np.random.default_rng(0)
    ids = [f"{i:03d}" for i in range(12)]
    index = pd.DataFrame({"recording_id": [f"sub-{i}" for i in ids], "subject_id": ids, "session_id": "",
                          "run_id": "", "window": -1, "window_start": -1})  # as brainlm embed writes it
    write_embeddings(Embeddings(rng.normal(size=(12, 4)).astype(np.float32), index), tmp_path / "b.npy")
    pd.DataFrame({"participant_id": [f"sub-{i}" for i in ids], "g0": rng.normal(size=12),
                  "g1": rng.normal(size=12)}).to_csv(tmp_path / "g.csv", index=False)
    assert main(["integrate", "cca", "--brain", str(tmp_path / "b.npy"), "--genetic", str(tmp_path / "g.csv"),
                 "--id-col", "participant_id", "--components", "1", "--permutations", "5", "--folds", "2",
                 "--out", str(tmp_path / "cca")]) == 0
    assert (tmp_path / "cca" / "report.md").is_file()


def test_the_fusion_figure_takes_an_estimate_outside_its_interval(tmp_path):
    from brainlm.integrate.report import write_fusion_report

    results = pd.DataFrame({"features": ["genetic", "brain", "fusion"], "model": ["linear"] * 3,
                            "r2": [0.10, 0.30, 0.35], "r2_lo": [0.12, 0.05, 0.20], "r2_hi": [0.40, 0.50, 0.30]})
    gains = pd.DataFrame({"metric": ["r2"], "model": ["linear"], "gain": [0.05], "gain_lo": [-0.1], "gain_hi": [0.2]})
    analysis = SimpleNamespace(gains_=gains, results_=results, task_="regression", folds_=[0, 1], n_bootstrap=10)
    report = write_fusion_report(analysis, tmp_path)
    assert report.is_file() and (tmp_path / "fusion.png").is_file()
    from brainlm.figures import interval_errors

    # a percentile bootstrap interval need not contain its point estimate, and may be NaN (no resamples)
    assert interval_errors([0.5, 0.2], [0.6, np.nan], [0.9, np.nan]).tolist() == [[0.0, 0.0], [0.4, 0.0]]
