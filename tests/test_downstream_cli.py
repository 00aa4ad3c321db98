import numpy as np
import pandas as pd
import pytest
from downstream_synth import synthetic_store, tiny_model

from brainlm.checkpoint import save_pretrained
from brainlm.cli import main
from brainlm.downstream import read_embeddings


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    store = synthetic_store(root / "store", n_subjects=12, split=(8, 2, 2))
    save_pretrained(tiny_model(), root / "run" / "best")  # a training run folder
    return root, store


def test_embed_reconstruct_forecast_fingerprint(setup, capsys):
    root, store = setup
    ckpt, data = str(root / "run"), str(store.path)
    assert main(["embed", ckpt, data, "--out", str(root / "e.parquet"), "--windows", "sliding", "--attention"]) == 0
    emb = read_embeddings(root / "e.parquet")
    assert len(emb) == 12 * 6 and emb.attention.shape == (72, 6)
    assert main(["embed", ckpt, data, "--out", str(root / "e.parquet")]) == 2
    assert "not overwriting" in capsys.readouterr().err
    assert main(["reconstruct", ckpt, data, "--split", "test", "--out", str(root / "rec"), "--mask-ratio", "0.5"]) == 0
    assert len(pd.read_csv(root / "rec" / "r2_per_region.csv")) == 2 * 6
    assert list((root / "rec").glob("reconstruction_*.png"))
    assert main(["forecast", ckpt, data, "--split", "test", "--out", str(root / "fc"), "-k", "5"]) == 0
    assert set(pd.read_csv(root / "fc" / "forecast_metrics.csv")["method"]) == {"brainlm", "persistence", "mean", "ar", "var"}
    assert main(["forecast", ckpt, data, "--out", str(root / "fc2"), "-k", "7"]) == 2
    assert "multiple of the patch size" in capsys.readouterr().err
    assert main(["fingerprint", ckpt, data, "--out", str(root / "fp")]) == 0
    assert (root / "fp" / "fingerprint.png").is_file()


def test_probe_and_finetune(setup, capsys):
    root, store = setup
    ckpt, data = str(root / "run"), str(store.path)
    args = ["probe", ckpt, data, "--target", "partial", "--out", str(root / "p"), "--folds", "3", "--bootstrap", "10",
            "--probes", "dummy,ridge", "--task", "classification"]
    with pytest.warns(UserWarning, match="s00"):
        assert main(args) == 0
    assert (root / "p" / "missing_subjects.txt").read_text().split() == ["s00", "s01"]
    metrics = pd.read_csv(root / "p" / "probe_metrics.csv")
    assert set(metrics["features"]) == {"brainlm", "fc", "fc_partial", "fc_tangent", "autocorr"}
    assert main(["probe", ckpt, data, "--target", "constant", "--out", str(root / "p2"), "--folds", "3"]) == 2
    assert "single-class target" in capsys.readouterr().err
    assert main(["probe", ckpt, data, "--target", "group", "--out", str(root / "p3"), "--folds", "20"]) == 2
    assert "fewer than the 20 folds" in capsys.readouterr().err
    out = root / "ft"
    assert main(["finetune", ckpt, data, "--target", "group", "--out", str(out), "--epochs", "2"]) == 0
    assert (out / "head.json").is_file() and (out / "history.csv").is_file()
    assert main(["embed", str(out), data, "--out", str(root / "ft.npy")]) == 0
    assert np.load(root / "ft.npy").shape == (12, 16)
    assert main(["finetune", ckpt, data, "--target", "group", "--out", str(out)]) == 2
    assert "pass --overwrite to replace" in capsys.readouterr().err


def test_region_mismatch_is_one_line(setup, capsys):
    root, store = setup
    save_pretrained(tiny_model(num_regions=9), root / "m9")
    assert main(["embed", str(root / "m9"), str(store.path), "--out", str(root / "x.parquet")]) == 2
    err = capsys.readouterr().err
    assert "trained on 9 regions" in err and "has 6" in err and len(err.strip().splitlines()) == 1
    assert not (root / "x.parquet").exists()
