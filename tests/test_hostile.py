"""Hostile inputs, part 1: folders brainlm owns, checks on every read, errors of the machine, Ctrl-C.

Each case is a command line a careless or hostile user could type. A refusal is exit status 2
(130 for Ctrl-C), one line on standard error naming the file or the flag, and every file that
existed before unchanged (``hostile.refused``).
"""

from __future__ import annotations

import errno
import json
import os
import shutil

import pytest
from hostile import PRETRAIN, no_progress_bars, refused, tree, world  # noqa: F401 (fixtures)

from brainlm.cli import main
from brainlm.io import MARKER


def _args(world, *rest):
    return [str(a) for a in (*rest, "--coords", world / "coords.csv", "--window", "20")]


# --------------------------------------------------------------------------------- folders we own


def test_prepare_never_writes_into_a_folder_it_did_not_write(world, tmp_path, capsys):
    mine = tmp_path / "mine"
    (mine / "shards").mkdir(parents=True)
    (mine / "shards" / "notes.arrow").write_text("k\n")
    (mine / "recordings-mine.parquet").write_text("mine\n")
    (mine / "regions-mine.parquet").write_text("mine\n")
    (mine / "manifest.json").write_text("{}\n")
    for extra in ([], ["--overwrite"]):
        line = refused(capsys, tmp_path, ["prepare", *_args(world, world / "inputs"), "--split", "3", "1", "1",
                                          "--out", mine, *extra], "--out", mine)
        assert "not written by brainlm" in line
    # a checkpoint folder is a checkpoint's, not a store's
    ckpt = tmp_path / "ckpt"
    shutil.copytree(world / "ckpt", ckpt)
    line = refused(capsys, tmp_path, ["prepare", *_args(world, world / "inputs"), "--split", "3", "1", "1",
                                      "--out", ckpt], "--out", ckpt)
    assert "holds a brainlm checkpoint" in line


def test_prepare_replaces_a_store_of_other_inputs_only_with_overwrite(world, tmp_path, capsys):
    store = tmp_path / "store"
    base = _args(world, world / "inputs")
    assert main(["prepare", *base, "--split", "3", "1", "1", "--out", str(store)]) == 0
    (store / "notes.txt").write_text("mine\n")
    (store / "shards" / "mine.arrow").write_text("mine\n")
    old_shards = {p.name for p in (store / "shards").glob("*-*.arrow")}
    line = refused(capsys, tmp_path, ["prepare", *base, "--split", "2", "1", "2", "--out", store], "--out", store,
                   "--overwrite")
    assert "other inputs or options" in line
    assert main(["prepare", *base, "--split", "2", "1", "2", "--out", str(store), "--overwrite"]) == 0
    # only the files the old manifest listed are gone; the user's files stay
    assert (store / "notes.txt").read_text() == "mine\n" and (store / "shards" / "mine.arrow").is_file()
    now = {p.name for p in (store / "shards").glob("*-*.arrow")}
    assert not old_shards & now and now == {s["file"].split("/")[1] for s in
                                            json.loads((store / "manifest.json").read_text())["shards"]}


def test_pretrain_never_writes_into_a_folder_it_did_not_write(world, tmp_path, capsys):
    someone = tmp_path / "someone"
    someone.mkdir()
    (someone / "metrics.jsonl").write_text('{"mine": 1}\n')
    (tmp_path / "file").write_text("x\n")
    data = ["--data", world / "store"]
    refused(capsys, tmp_path, ["pretrain", *data, *PRETRAIN, "--out", someone], "--out", someone,
            "not written by brainlm")
    refused(capsys, tmp_path, ["pretrain", *data, *PRETRAIN, "--out", tmp_path / "file"], "--out",
            tmp_path / "file", "is a file")
    store = tmp_path / "store"
    shutil.copytree(world / "store", store)
    refused(capsys, tmp_path, ["pretrain", *data, *PRETRAIN, "--out", store], "--out", store, "holds a brainlm store")


def test_embed_out_that_is_a_folder(world, tmp_path, capsys):
    (tmp_path / "e.parquet").mkdir()
    refused(capsys, tmp_path, ["embed", world / "ckpt", world / "store", "--out", tmp_path / "e.parquet",
                               "--overwrite"], "--out", "is a folder")


# --------------------------------------------------------------------------- checks on every read


def test_a_flipped_weight_byte_is_refused_by_every_command(world, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(world / "ckpt", ckpt)
    weights = bytearray((ckpt / "model.safetensors").read_bytes())
    weights[-10] ^= 1
    (ckpt / "model.safetensors").write_bytes(bytes(weights))
    for command, out in (("embed", "e.parquet"), ("reconstruct", "rec"), ("forecast", "fc")):
        extra = ["--last", "5"] if command == "forecast" else []
        refused(capsys, tmp_path, [command, ckpt, world / "store", "--out", tmp_path / out, *extra],
                "model.safetensors", "SHA-256")
    refused(capsys, tmp_path, ["pretrain", "--data", world / "store", *PRETRAIN, f"--init_from={ckpt}",
                               "--out", tmp_path / "run"], "model.safetensors", "SHA-256")


def _edited_store(world, tmp_path, edit):
    store = tmp_path / "store"
    shutil.copytree(world / "store", store)
    manifest = json.loads((store / "manifest.json").read_text())
    edit(manifest)
    (store / "manifest.json").write_text(json.dumps(manifest))
    return store


def test_a_shard_the_manifest_does_not_list_is_never_read(world, tmp_path, capsys):
    store = _edited_store(world, tmp_path, lambda m: m["shards"].pop())
    for argv in (["verify", store], ["embed", world / "ckpt", store, "--out", tmp_path / "e.parquet"]):
        line = refused(capsys, tmp_path, argv, "not listed in", "manifest.json")
        assert "/shards/" in line


def test_a_manifest_path_out_of_the_store_is_never_followed(world, tmp_path, capsys):
    def escape(manifest):
        manifest["shards"][0]["file"] = "../../x"

    store = _edited_store(world, tmp_path, escape)  # the shard the recordings table names is no longer listed
    refused(capsys, tmp_path, ["verify", store], "not listed in", "manifest.json")
    shutil.rmtree(store)

    def escape_table(manifest):
        manifest["checksums"]["../regions.parquet"] = manifest["checksums"].pop(manifest["files"]["regions"])
        manifest["files"]["regions"] = "../regions.parquet"

    store = _edited_store(world, tmp_path, escape_table)
    shutil.copy(store / next(p.name for p in store.glob("regions-*.parquet")), tmp_path / "regions.parquet")
    line = refused(capsys, tmp_path, ["verify", store], "'../regions.parquet'")
    assert "leads out of the store" in line


# ------------------------------------------------------------------- errors of the machine, Ctrl-C


def test_read_only_folders_are_one_line(world, tmp_path, capsys, monkeypatch):
    # permissions do not bind root, who runs the tests here: the check is simulated
    (tmp_path / "ro").mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if "ro" in str(path) else real(path, mode))
    refused(capsys, tmp_path, ["pretrain", "--data", world / "store", *PRETRAIN, "--out", tmp_path / "ro" / "run"],
            "--out", "not writable")
    refused(capsys, tmp_path, ["embed", world / "ckpt", world / "store", "--out", tmp_path / "ro" / "e.parquet"],
            "--out", "not writable")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_full_or_read_only_disk_while_writing_is_one_line(world, tmp_path, capsys, monkeypatch, code):
    import pyarrow.parquet as pq

    def fail(table, where, *args, **kwargs):
        raise OSError(code, os.strerror(code), str(where))

    monkeypatch.setattr(pq, "write_table", fail)
    refused(capsys, tmp_path, ["embed", world / "ckpt", world / "store", "--out", tmp_path / "e.parquet"],
            os.strerror(code))
    assert not list(tmp_path.iterdir())  # no temporary file left


def test_a_full_disk_while_saving_a_checkpoint_is_one_line(world, tmp_path, capsys, monkeypatch):
    import torch

    def fail(*args, **kwargs):  # what torch.save raises when the disk fills up
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 4416 vs 4304")

    monkeypatch.setattr(torch, "save", fail)
    (tmp_path / "keep.txt").write_text("mine\n")
    before = tree(tmp_path)
    assert main(["pretrain", "--data", str(world / "store"), *PRETRAIN, "--out", str(tmp_path / "run")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "is the disk full?" in lines[0]
    assert {k: v for k, v in tree(tmp_path).items() if k in before} == before
    assert not [p for p in (tmp_path / "run").rglob(".tmp-*")]  # no half-written checkpoint


def test_ctrl_c_names_the_resume_command_and_resume_finishes_the_run(world, tmp_path, capsys, monkeypatch):
    from brainlm.train.trainer import Trainer

    run = tmp_path / "run"
    step = Trainer.train_step

    def interrupted(self, batches):
        if self.step == 2:  # after the checkpoint of step 2
            raise KeyboardInterrupt
        return step(self, batches)

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    args = ["pretrain", "--data", str(world / "store"), *PRETRAIN, "--max_steps=4", "--out", str(run)]
    assert main(args) == 130
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"brainlm pretrain: interrupted; continue with: brainlm pretrain --resume {run}"]
    assert not list(run.rglob(".tmp-*")) and (run / "checkpoints" / "step_00000002").is_dir()
    monkeypatch.setattr(Trainer, "train_step", step)
    assert main(["pretrain", "--resume", str(run)]) == 0
    assert (run / "checkpoints" / "step_00000004").is_dir()

    def strict(constant):
        raise ValueError(f"not strict JSON: {constant}")

    # a metric that is NaN (the zero baseline's correlation) is written as null, never as a bare NaN
    metrics = json.loads((run / "best" / "metrics.json").read_text(), parse_constant=strict)
    assert metrics["zero_pearson"] is None
    json.loads((run / "checkpoints" / "step_00000004" / "trainer_state.json").read_text(), parse_constant=strict)
    assert json.loads((run / MARKER).read_text()) == {"kind": "run"}


def test_ctrl_c_in_the_demo_says_how_to_continue(tmp_path, capsys, monkeypatch):
    import brainlm.data

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(brainlm.data, "build_demo_store", interrupted)
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        f"brainlm demo: interrupted; run brainlm demo --out {tmp_path / 'demo'} again to continue where it stopped"]
