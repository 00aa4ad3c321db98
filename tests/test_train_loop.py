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
from brainlm.train import NonFiniteLossError, latest_checkpoint, pretrain, read_metrics


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
    assert [p.name for p in (run / "checkpoints").iterdir()] and latest_checkpoint(run).name == "step_00000012"
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
        _run(short_run.parent / "other", init_from=str(latest_checkpoint(short_run)), train=ToyWindows(regions=8),
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
    source = latest_checkpoint(short_run)
    result = _run(tmp_path / "warm", init_from=str(source), max_steps=1, eval_every=0, save_every=0)
    assert result.step == 1
    with pytest.raises(ValueError, match="do not fit the configured model"):
        _run(tmp_path / "bad", init_from=str(source), model_overrides=dict(timepoint_patching_size=10, hidden_size=64))
    assert not (tmp_path / "bad").exists()


def test_corrupt_checkpoint(short_run):
    weights = latest_checkpoint(short_run) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated
    before = _snapshot(short_run)
    with pytest.raises(ValueError, match=r"corrupt: model.safetensors has \d+ bytes, expected \d+ \(truncated"):
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
