"""Real multi-process runs: 2 gloo processes on CPU (DDP and FSDP2) against 1 process."""

import pytest
import torch
import torch.multiprocessing as mp
from _train_helpers import ToyWindows, dist_worker, free_port, tiny_config
from safetensors.torch import load_file

from brainlm.train import pretrain, read_metrics

STEPS = dict(max_steps=6, eval_every=3, save_every=3)


def _spawn(config_kwargs: dict) -> None:
    """Two gloo processes; a fresh port again if another program took the first one."""
    for attempt in range(3):
        try:
            mp.spawn(dist_worker, args=(2, free_port(), config_kwargs), nprocs=2)
            return
        except mp.ProcessRaisedException as err:
            if "address already in use" not in str(err).lower() or attempt == 2:
                raise


def _losses(run_dir):
    return [r["loss"] for r in read_metrics(run_dir) if r["split"] == "train"]


def _max_diff(a, b):
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One process, batch 4."""
    return pretrain(tiny_config(tmp_path_factory.mktemp("single") / "run", batch_size=4, **STEPS),
                    train_dataset=ToyWindows(), val_dataset=ToyWindows(8, seed=1))


def test_ddp_two_processes_match_one_with_doubled_batch(single, tmp_path):
    out = tmp_path / "ddp"
    _spawn(dict(out_dir=str(out), batch_size=2, **STEPS))
    assert _losses(out) == pytest.approx(_losses(single.run_dir), rel=1e-5, abs=1e-6)
    assert _max_diff(out / "checkpoints" / "step_00000006", single.checkpoint) < 2e-3
    val = [r for r in read_metrics(out) if r["split"] == "validation"]
    ref = [r for r in read_metrics(single.run_dir) if r["split"] == "validation"]
    assert [r["model_mse"] for r in val] == pytest.approx([r["model_mse"] for r in ref], rel=1e-4)
    assert [r["interp_mse"] for r in val] == pytest.approx([r["interp_mse"] for r in ref], rel=1e-6)


def test_fsdp_two_processes_then_resume_on_one(single, tmp_path):
    out = tmp_path / "fsdp"
    # 2 processes shard the model (FSDP2) and stop at step 3 with a checkpoint ...
    _spawn(dict(out_dir=str(out), batch_size=2, fsdp=True, stop_at_step=3, **STEPS))
    assert _losses(out) == pytest.approx(_losses(single.run_dir)[:3], rel=1e-4, abs=1e-5)
    # ... and 1 process with the same global batch resumes from it
    result = pretrain(tiny_config(out, batch_size=4, **STEPS), resume=True, train_dataset=ToyWindows(),
                      val_dataset=ToyWindows(8, seed=1))
    assert result.step == 6
    assert _losses(out) == pytest.approx(_losses(single.run_dir), rel=1e-4, abs=1e-5)
    assert _max_diff(result.checkpoint, single.checkpoint) < 2e-3
    assert torch.isfinite(torch.tensor(result.metrics["loss"]))


def test_device_precision_and_wrapping_choices():
    from brainlm.distributed import (
        autocast_context,
        cpu_supports_bf16,
        init_distributed,
        resolve_device,
        resolve_precision,
        wrap_model,
    )
    from brainlm.model import BrainLMForPretraining, brainlm_tiny

    cpu = resolve_device("cpu")
    assert resolve_precision("fp32", cpu) == torch.float32
    assert resolve_precision("auto", cpu) == (torch.bfloat16 if cpu_supports_bf16() else torch.float32)
    with autocast_context(cpu, torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
    info = init_distributed()  # no torchrun environment: one process
    assert (info.rank, info.world_size, info.is_distributed) == (0, 1, False)
    model = BrainLMForPretraining(brainlm_tiny())
    assert wrap_model(model, "none") is model
    with pytest.raises(RuntimeError, match="launch with torchrun"):
        wrap_model(model, "ddp")
