"""``brainlm pretrain`` and ``brainlm demo`` on the real demo store, a few steps each."""

import json

import pytest

from brainlm.cli import main
from brainlm.data import build_demo_store
from brainlm.train import read_metrics

TINY = ["--preset=demo", "--max_steps=2", "--eval_every=2", "--save_every=2", "--log_every=1", "--batch_size=4",
        "--eval_max_batches=1", "--progress=false", "--plots=false", "--model.hidden_size=16",
        "--model.intermediate_size=32", "--model.decoder_hidden_size=16", "--model.decoder_intermediate_size=32"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_demo_store(tmp_path_factory.mktemp("store") / "demo", progress=False)


def test_pretrain_on_store_and_resume(store, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", "--data", str(store.path), "--out", str(run), *TINY]) == 0
    out = capsys.readouterr().out
    assert "masked-value R^2 on the validation subjects: model" in out
    assert "BrainLM vs the strongest baseline (connectivity-conditional fill) on the validation subjects: " in out
    assert "[95% CI" in out
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["data"] == str(store.path) and saved["max_steps"] == 2
    assert json.loads((run / "checkpoints" / "step_00000002" / "config.json").read_text())["num_brain_voxels"] == 94
    assert main(["pretrain", "--resume", str(run), "--max_steps=3"]) == 0
    assert [r["step"] for r in read_metrics(run) if r["split"] == "train"] == [1, 2, 3]
    # a bad input is one clear line and exit status 2
    assert main(["pretrain", "--data", str(store.path), "--out", str(run), *TINY]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["pretrain", "--resume", str(run), "--batch_size=99999"]) == 2
    assert "larger than the train split" in capsys.readouterr().err


def test_demo_smoke(tmp_path, capsys):
    assert main(["demo", "--smoke", "--out", str(tmp_path / "demo"), *TINY[1:]]) == 0
    out = capsys.readouterr().out
    assert "linear interpolation" in out and "region mean" in out and "checkpoint:" in out


def test_resume_rules_and_strict_json(store, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", "--data", str(store.path), "--out", str(run), *TINY, "--max_grad_norm=0"]) == 0
    lines = (run / "metrics.jsonl").read_text()

    def strict(constant):
        raise ValueError(f"not JSON: {constant}")

    records = [json.loads(line, parse_constant=strict) for line in lines.splitlines()]  # NaN would raise
    assert any(r.get("grad_norm", 0) is None for r in records)  # no clipping: no norm, written as null
    # --resume names the run folder; another --out is refused, not ignored
    assert main(["pretrain", "--resume", str(run), "--out", str(tmp_path / "other")]) == 2
    assert "--out" in capsys.readouterr().err and not (tmp_path / "other").exists()
    # resuming a finished run changes nothing (no duplicate validation row)
    assert main(["pretrain", "--resume", str(run)]) == 0
    assert (run / "metrics.jsonl").read_text() == lines


def test_two_runs_into_one_folder_one_is_refused(store, tmp_path):
    import subprocess
    import sys

    run = tmp_path / "run"
    args = [sys.executable, "-m", "brainlm.cli", "pretrain", "--data", str(store.path), "--out", str(run),
            *TINY, "--max_steps=6"]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "being written by process" in refused or "already holds a run" in refused
    steps = [r["step"] for r in read_metrics(run) if r["split"] == "train"]
    assert steps == sorted(steps) and len(steps) == len(set(steps)) == 6  # one run's records only


def test_impossible_sizes_are_refused_before_allocating(store, tmp_path, capsys):
    out = tmp_path / "huge"
    assert main(["pretrain", "--data", str(store.path), "--out", str(out), *TINY,
                 "--model.num_hidden_layers=10000000"]) == 2  # in the config's range, beyond any memory
    assert "GiB are free" in capsys.readouterr().err and not out.exists()
    assert main(["pretrain", "--data", str(store.path), "--out", str(out), *TINY,
                 "--model.num_hidden_layers=1000000000"]) == 2  # beyond any model: the config refuses it
    assert "num_hidden_layers must be an integer in 1..16777216" in capsys.readouterr().err and not out.exists()


def test_a_damaged_store_stops_pretrain_and_embed(store, tmp_path, capsys):
    import shutil

    from brainlm import save_pretrained
    from brainlm.model import BrainLMForPretraining, brainlm_tiny

    damaged = tmp_path / "store"
    shutil.copytree(store.path, damaged)
    shard = damaged / json.loads((damaged / "manifest.json").read_text())["shards"][0]["file"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert main(["pretrain", "--data", str(damaged), "--out", str(tmp_path / "run"), *TINY]) == 2
    assert shard.name in capsys.readouterr().err.strip().splitlines()[-1]
    model = BrainLMForPretraining(brainlm_tiny(num_brain_voxels=94, num_timepoints_per_voxel=40,
                                               timepoint_patching_size=10))
    save_pretrained(model, tmp_path / "model")
    out = tmp_path / "emb.parquet"
    assert main(["embed", str(tmp_path / "model"), str(damaged), "--out", str(out), "--device", "cpu"]) == 2
    assert "SHA-256" in capsys.readouterr().err and not out.exists()


def test_resume_on_other_data_is_refused_in_one_line(store, tmp_path, capsys):
    import shutil

    from brainlm.data import open_store
    from brainlm.data.demo import demo_source
    from brainlm.data.prepare import StoreOptions, write_store

    data = tmp_path / "store"
    shutil.copytree(store.path, data)
    run = tmp_path / "run"
    assert main(["pretrain", "--data", str(data), "--out", str(run), *TINY, "--stop_at_step=1"]) == 0
    record = json.loads((run / "data.json").read_text())
    assert record["fingerprint"] == store.manifest["fingerprint"] and len(record["train_subjects"]) == 8
    # the same store with subjects moved between splits (another cross-validation fold)
    from brainlm.errors import UserError
    from brainlm.train import TrainConfig, build_datasets, pretrain

    config = TrainConfig.load(run / "train_config.json")
    splits = open_store(data).splits
    moved = {**{s: n for n, subs in splits.items() for s in subs}, splits["train"][0]: "test", splits["test"][0]: "train"}
    fold = build_datasets(config, ("train", "validation"), store=open_store(data).resplit(moved))
    with pytest.raises(UserError, match="data.json: .* now holds other train subjects"):
        pretrain(config, resume=True, train_dataset=fold[0], val_dataset=fold[1])
    # the same folder rebuilt with another normalisation: other data under the same path
    write_store(demo_source(), data, StoreOptions(split=(8, 2, 2), normalization="robust", progress=False),
                overwrite=True)
    before = sorted(p.name for p in run.rglob("*"))
    assert main(["pretrain", "--resume", str(run), "--stop_at_step=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "data.json" in err and "other data" in err and "another --out" in err
    assert sorted(p.name for p in run.rglob("*")) == before  # nothing written
    # a run of an earlier version (no record) continues with a warning, and is recorded from then on
    (run / "data.json").unlink()
    with pytest.warns(UserWarning, match="does not record the data"):
        assert main(["pretrain", "--resume", str(run), "--stop_at_step=0"]) == 0
    assert json.loads((run / "data.json").read_text())["fingerprint"] != record["fingerprint"]
