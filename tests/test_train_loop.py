"""The training loop on tiny models: exact resume, files of a run, and every bad input."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _train_helpers import ToyWindows, tiny_config
from safetensors.torch import load_file

from brainlm.checkpoint import load_pretrained
from brainlm.model import BrainLMForPretraining
from brainlm.hub import newest_checkpoint
from brainlm.train import NonFiniteLossError, pretrain, read_metrics


def _run(out, resume=False, train=None, val=None, **changes):
    train = ToyWindows() if train is None else train
    val = ToyWindows(8, seed=1) if val is None else val
    return pretrain(tiny_config(out, **changes), resume=resume, train_dataset=train, val_dataset=val)


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _train_losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir) if r["split"] == "train"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 12-step run."""
    return _run(tmp_path_factory.mktemp("ref") / "run", plots=True)


def test_run_folder_contents(reference):
    run = reference.run_dir
    assert reference.step == 12
    assert [p.name for p in (run / "checkpoints").iterdir()] and newest_checkpoint(run).name == "step_00000012"
    assert len(list((run / "checkpoints").iterdir())) == 2  # keep_last
    assert (run / "best" / "model.safetensors").is_file() and (run / "metrics.csv").is_file()
    assert {p.name for p in reference.plots} == {"curves.png", "reconstructions.png"}
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["max_steps"] == 12 and saved["model"] == "tiny"
    for key in ("model_r2", "interp_r2", "mean_r2", "zero_r2", "model_pearson", "interp_mse"):
        assert key in reference.metrics
    # a checkpoint's model is an ordinary model folder
    model = load_pretrained(reference.checkpoint)
    assert model.config.num_brain_voxels == 6
    val = [r for r in read_metrics(run) if r["split"] == "validation"]
    assert [r["step"] for r in val] == [6, 12]
    train = [r for r in read_metrics(run) if r["split"] == "train"]
    assert all(np.isfinite(r["loss"]) and r["windows_per_s"] > 0 for r in train)


def test_resume_is_exact(reference, tmp_path):
    run = tmp_path / "run"
    first = _run(run, stop_at_step=6)
    assert first.step == 6
    second = _run(run, resume=True)
    assert second.step == 12
    assert _train_losses(run) == _train_losses(reference.run_dir)  # identical, not merely close
    a = load_file(reference.checkpoint / "model.safetensors")
    b = load_file(second.checkpoint / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gradient_accumulation_and_checkpointing_run(tmp_path):
    result = _run(tmp_path / "run", grad_accum_steps=2, gradient_checkpointing=True, max_steps=3, eval_every=0,
                  save_every=0)
    assert result.step == 3 and np.isfinite(result.metrics["loss"])


# ---------------------------------------------------------------------------------------------
# Bad input: a clear error, and nothing in the run folder changes
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def short_run(tmp_path):
    run = tmp_path / "run"
    _run(run, max_steps=4, eval_every=4, save_every=4)
    return run


def test_wrong_region_count_for_checkpoint(short_run):
    before = _snapshot(short_run)
    with pytest.raises(ValueError, match="data have 8 regions but the checkpoint .* trained on 6"):
        _run(short_run, resume=True, max_steps=8, train=ToyWindows(regions=8), val=ToyWindows(8, regions=8, seed=1))
    with pytest.raises(ValueError, match="data have 8 regions but the checkpoint .* trained on 6"):
        _run(short_run.parent / "other", init_from=str(newest_checkpoint(short_run)), train=ToyWindows(regions=8),
             val=ToyWindows(8, regions=8, seed=1))
    assert _snapshot(short_run) == before
    assert not (short_run.parent / "other").exists()


def test_incompatible_or_existing_run_folder(short_run):
    before = _snapshot(short_run)
    with pytest.raises(ValueError, match="incompatible model config:\n  hidden_size: 32 -> 64"):
        _run(short_run, resume=True, model_overrides=dict(timepoint_patching_size=10, mask_ratio=0.5,
                                                          time_encoding_dropout=0.0, hidden_size=64))
    with pytest.raises(ValueError, match="already holds a run; continue it with --resume"):
        _run(short_run)
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        _run(short_run.parent / "nothing", resume=True)
    assert _snapshot(short_run) == before


def test_init_from_checkpoint(short_run, tmp_path):
    source = newest_checkpoint(short_run)
    result = _run(tmp_path / "warm", init_from=str(source), max_steps=1, eval_every=0, save_every=0)
    assert result.step == 1
    with pytest.raises(ValueError, match="do not fit the configured model"):
        _run(tmp_path / "bad", init_from=str(source), model_overrides=dict(timepoint_patching_size=10, hidden_size=64))
    assert not (tmp_path / "bad").exists()


def test_corrupt_checkpoint(short_run):
    weights = newest_checkpoint(short_run) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated
    before = _snapshot(short_run)
    with pytest.raises(ValueError, match=r"model.safetensors: \d+ bytes, the manifest says \d+ \(truncated"):
        _run(short_run, resume=True, max_steps=8)
    assert _snapshot(short_run) == before


def test_empty_split_and_batch_larger_than_data(tmp_path):
    with pytest.raises(ValueError, match="the validation split is empty"):
        _run(tmp_path / "a", val=ToyWindows(0))
    with pytest.raises(ValueError, match="the train split is empty"):
        _run(tmp_path / "a", train=ToyWindows(0))
    with pytest.raises(ValueError, match="batch of 64 windows .* larger than the train split \\(32 windows\\)"):
        _run(tmp_path / "a", batch_size=64)
    assert not (tmp_path / "a").exists()


def test_nan_loss_stops_with_step_and_batch_ids(tmp_path):
    run = tmp_path / "run"
    order = np.random.default_rng((3, 0)).permutation(32)  # epoch 0 order for seed 3
    bad = int(order[4 * 5])  # first window of step 6's batch
    _run(run, max_steps=12, stop_at_step=4, save_every=4)
    before = _snapshot(run / "checkpoints")
    with pytest.raises(NonFiniteLossError, match=rf"at step 6 .*index=\[{bad}, .*recording_id=\['rec{bad}'") as err:
        _run(run, resume=True, max_steps=12, save_every=4, train=ToyWindows(nan_at=bad))
    assert "step_00000004" in str(err.value)  # names the last good checkpoint
    assert _snapshot(run / "checkpoints") == before  # no checkpoint of the bad state


# -- masking schemes, the evaluation mask ratio, the connectivity start -----------------------------


def _mask_of(noise, ratio=0.5):
    B, L = noise.shape
    mask = torch.ones(B, L)
    mask.scatter_(1, noise.argsort(1)[:, : int(L * (1 - ratio))], 0.0)
    return mask


def test_structured_noise_masks_whole_regions_or_whole_time_spans():
    from brainlm.train import structured_noise

    R, P = 10, 4
    noise = torch.rand(3, R * P, generator=torch.Generator().manual_seed(0))
    assert torch.equal(structured_noise(noise, R, "patch"), noise)
    region = _mask_of(structured_noise(noise, R, "region")).view(3, R, P)
    assert ((region.sum(-1) == 0) | (region.sum(-1) == P)).all()  # whole regions
    time = _mask_of(structured_noise(noise, R, "time")).view(3, R, P)
    assert ((time.sum(1) == 0) | (time.sum(1) == R)).all()  # whole patch columns across regions
    mixed = structured_noise(noise, R, "mixed", torch.tensor([0, 1, 2]))
    assert torch.equal(mixed[0], noise[0]) and torch.equal(mixed[1], structured_noise(noise, R, "region")[1])
    with pytest.raises(ValueError):
        structured_noise(noise, R, "mixed")


def test_eval_mask_ratio_masking_schemes_and_connectivity_start(tmp_path):
    from brainlm.evaluate.reconstruction import evaluate_reconstruction
    from brainlm.train import fit_baselines

    overrides = dict(timepoint_patching_size=10, mask_ratio=0.75, time_encoding_dropout=0.0, learned_region_embedding=True)
    result = _run(tmp_path / "run", max_steps=4, eval_every=4, save_every=4, train_mask_scheme="mixed",
                  eval_mask_ratio=0.5, model_overrides=overrides, region_embedding_init="connectivity")
    model = load_pretrained(result.checkpoint)
    val, base = ToyWindows(8, seed=1), fit_baselines(ToyWindows())
    half = evaluate_reconstruction(model, val, baselines=base, batch_size=4, seed=3, mask_ratio=0.5).metrics
    own = evaluate_reconstruction(model, val, baselines=base, batch_size=4, seed=3).metrics
    assert result.metrics["model_mse"] == pytest.approx(half["model_mse"], rel=1e-5)  # validated at 50%, not 75%
    assert own["model_mse"] != pytest.approx(half["model_mse"], rel=1e-5)
    assert result.metrics["conn_r2"] == pytest.approx(half["conn_r2"], rel=1e-6)
    with pytest.raises(ValueError, match="learned_region_embedding=true"):
        tiny_config(None, region_embedding_init="connectivity")


def test_connectivity_embedding_reproduces_the_region_covariance():
    from brainlm.train import connectivity_embedding, init_region_embedding

    rng = np.random.default_rng(0)
    cov = np.cov(rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6)), rowvar=False)
    table = connectivity_embedding(cov, dim=8)
    assert table.shape == (6, 8) and torch.allclose(table[:, 6:], torch.zeros(6, 2))
    gram = (table @ table.T).double()
    assert torch.allclose(gram / gram.trace(), torch.as_tensor(cov) / np.trace(cov), atol=1e-5)
    cfg = tiny_config(None, model_overrides=dict(timepoint_patching_size=10, learned_region_embedding=True),
                      region_embedding_init="connectivity")
    model = BrainLMForPretraining(cfg.model_config(num_regions=6))
    init_region_embedding(model, cov)
    assert torch.equal(model.encoder.region_embedding, connectivity_embedding(cov, 32))
    assert model.decoder.xyz_proj.weight.abs().sum() == 0


def test_forecast_scheme_trains_on_exactly_what_model_forecast_predicts(tmp_path):
    from brainlm.train.masking import training_noise

    R, P, W = 6, 4, 10
    noise, ratio = training_noise("forecast", [(0, j) for j in range(3)], R, P)
    model = load_pretrained(_run(tmp_path / "base", max_steps=2, eval_every=2, save_every=2).checkpoint)
    x = torch.randn(3, R, P * W, generator=torch.Generator().manual_seed(0))
    xyz = torch.randn(3, R, 3, generator=torch.Generator().manual_seed(1)) * 40
    with torch.no_grad():
        out = model(x, xyz, noise=noise, mask_ratio=ratio)
        forecast = model.forecast(x, xyz, k=W)
    assert (out.mask.view(3, R, P)[:, :, -1] == 1).all() and (out.mask.view(3, R, P)[:, :, :-1] == 0).all()
    torch.testing.assert_close(out.logits.view(3, R, P, W)[:, :, -1], forecast)
    result = _run(tmp_path / "ft", max_steps=3, eval_every=3, save_every=3, train_mask_scheme="forecast")
    assert result.step == 3 and np.isfinite(result.train_losses[-1][1])
