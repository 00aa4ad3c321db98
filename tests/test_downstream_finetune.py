import json

import numpy as np
import pytest
import torch
from downstream_synth import WINDOW, R, synthetic_store, tiny_model

from brainlm.downstream import (
    FinetuneConfig,
    embed,
    finetune,
    load_finetuned,
    load_model,
    probe,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("store"), n_subjects=12, split=(6, 4, 2))


@pytest.fixture(scope="module")
def tuned(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "model"
    config = FinetuneConfig(freeze_encoder=False, epochs=6, patience=6, lr=1e-3, encoder_lr=3e-4, batch_size=16)
    return finetune(tiny_model(), store, "group", config, out_dir=out, progress=False), out


def test_finetune_improves_validation_loss_on_a_planted_task(tuned):
    result, _ = tuned
    h = result.history
    assert h.loc[0, "epoch"] == 0 and np.isnan(h.loc[0, "train_loss"])
    best = h["val_loss"].min()
    assert best < 0.7 * h.loc[0, "val_loss"]
    assert result.best_epoch == int(h["val_loss"].idxmin())
    assert h.loc[result.best_epoch, "val_metric"] > 0.8


def test_frozen_encoder_trains_only_the_head(store):
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = finetune(model, store, "score", FinetuneConfig(epochs=2, patience=2), progress=False)
    assert result.model.info["task"] == "regression"
    after = result.model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_checkpoint_loads_in_embed_and_probe(tuned, store):
    result, out = tuned
    assert (out / "config.json").is_file() and (out / "head.safetensors").is_file()
    assert json.loads((out / "head.json").read_text())["classes"] == ["a", "b"]
    again = load_finetuned(out)
    x = np.stack([store.get(i)[:WINDOW].T for i in range(4)])
    np.testing.assert_array_equal(again.predict(x, store.coords), result.model.predict(x, store.coords))
    enc = load_model(out)
    emb = embed(out, store, split="test", progress=False)
    direct = embed(result.model.backbone, store, split="test", progress=False)
    np.testing.assert_allclose(emb.X, direct.X, atol=1e-6)
    assert type(enc).__name__ == "BrainLMForPretraining"
    res = probe(out, store, "group", n_splits=3, n_boot=5, probes=("ridge",), fc_baseline=False, progress=False)
    assert set(res.metrics["features"]) == {"brainlm"}


def test_finetune_bad_inputs(tuned, store):
    _, out = tuned
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="already holds a checkpoint"):
        finetune(tiny_model(), store, "group", FinetuneConfig(epochs=1), out_dir=out, progress=False)
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp  # nothing overwritten
    with pytest.raises(ValueError, match="single-class target"):
        finetune(tiny_model(), store, "constant", FinetuneConfig(epochs=1), progress=False)
    with pytest.raises(ValueError, match=r"trained on 5 regions but .* has 6"):
        finetune(tiny_model(num_regions=5), store, "group", progress=False)
    with pytest.raises(FileNotFoundError, match="no head.json"):
        load_finetuned(out.parent)
    with pytest.raises(ValueError, match="task must be"):
        FinetuneConfig(task="ranking")


def test_every_trained_parameter_gets_a_gradient():
    from conftest import make_batch

    from brainlm.downstream import BrainLMFinetuner

    model = BrainLMFinetuner(tiny_model(), num_outputs=3)
    x, xyz = make_batch(4, R, WINDOW)
    model.fit_scaler(x, xyz[:1])
    model(x, xyz).sum().backward()
    trained = [(n, p) for n, p in model.named_parameters() if not n.startswith("backbone.decoder.")]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for _, p in trained), [n for n, p in trained if p.grad is None]
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("backbone.decoder."))
