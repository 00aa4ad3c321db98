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
    assert "validation masked-patch R^2 model" in capsys.readouterr().out
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
