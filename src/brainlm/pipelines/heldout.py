"""Pretrain, score on held-out subjects, fine-tune to forecast: the one path that the demo and
every cross-validation fold take.

Given a training config, a store whose splits say which subjects train, choose the checkpoint
(validation) and are scored (test), and a folder:

1. pretrain into ``FOLDER/run`` (continued where it stopped when the folder holds the run);
2. take the checkpoint with the best validation loss and score its masked reconstruction of the
   test windows beside the reconstruction ladder fitted on the train subjects and beside the same
   model at initialisation (``FOLDER/run/init``: what initialisation alone gives);
3. with ``forecast_steps``, fine-tune that checkpoint to predict the last patch of every region
   (``FOLDER/forecast_run``, on the same training subjects, as the paper does) and score its
   forecasts beside persistence, AR(p) and ridge VAR fitted on the train subjects, and beside the
   pretrained checkpoint it started from (its initialisation).

Scoring follows the benchmark's settings (:class:`~brainlm.pipelines.benchmark.BenchmarkConfig`:
mask ratio, seed, horizon, AR order), so a number from the demo and one from a fold mean the same.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from brainlm.checkpoint import load_pretrained
from brainlm.distributed import resolve_device, resolve_precision
from brainlm.downstream import Initial, load_initial
from brainlm.evaluate.reconstruction import ReconstructionEval, windows_with_initial, with_initial
from brainlm.train import RunResult, TrainConfig, forecast_finetune, pretrain

from .benchmark import BenchmarkConfig, forecast_ladder, forecasting_windows, reconstruction_ladder, score_reconstruction

__all__ = ["HeldOutResult", "pretrain_and_score"]


@dataclass
class HeldOutResult:
    """What :func:`pretrain_and_score` produced."""

    pretraining: RunResult
    chosen: Path  # the checkpoint chosen on validation (scored for reconstruction)
    model: Any  # that checkpoint's model, loaded
    reconstruction: ReconstructionEval | None = None  # per window, the model beside the ladder
    forecaster: Path | None = None  # the checkpoint fine-tuned to forecast
    forecast_model: Any = None  # the model that forecasting was scored with (fine-tuned, else ``model``)
    forecasting: pd.DataFrame | None = None  # per window: forecast errors of the model and the ladder
    initial: Initial | None = None  # the pretrained run's model at initialisation
    seconds: dict[str, float] = field(default_factory=dict)  # pretrain_s, forecast_finetune_s, score_s of this call


def _train(config: TrainConfig, datasets) -> RunResult:
    """Run (or continue, or find finished) one training run."""
    resume = (Path(config.out_dir) / "train_config.json").exists()
    train, val = datasets if datasets is not None else (None, None)
    return pretrain(config, resume=resume, train_dataset=train, val_dataset=val)


def pretrain_and_score(config: TrainConfig, store, folder: str | Path, score: BenchmarkConfig, *,
                       forecast_steps: int = 0, forecast_lr: float = 1e-3,
                       tasks: tuple[str, ...] = ("reconstruction", "forecasting"), datasets=None) -> HeldOutResult:
    """Pretrain, score the chosen model on the test split, fine-tune to forecast (see the module docstring).

    Args:
        config: the training settings (its ``out_dir`` is replaced by ``FOLDER/run``).
        store: the store, or a view of it with other splits (a fold's ``Store.resplit``).
        folder: where the runs go.
        score: scoring settings (``split`` is the test split).
        forecast_steps: fine-tuning steps for forecasting; 0 forecasts with the pretrained model.
        tasks: ``reconstruction`` and / or ``forecasting``.
        datasets: ``(train, validation)`` datasets to train on (default: the store's, from ``config``).
    """
    folder, seconds = Path(folder), {}
    t = time.perf_counter()
    run = _train(config.replace(out_dir=str(folder / "run")), datasets)
    seconds["pretrain_s"] = time.perf_counter() - t
    chosen = run.best or run.checkpoint
    device = resolve_device(score.device)
    model = load_pretrained(chosen).to(device)
    result = HeldOutResult(run, chosen, model, seconds=seconds, initial=load_initial(chosen, model, seed=config.seed))
    t, tuning = time.perf_counter(), 0.0
    if "reconstruction" in tasks:
        dtype, ladder = resolve_precision(score.precision, device), reconstruction_ladder(store)
        result.reconstruction = with_initial(score_reconstruction(model, store, score, device, dtype, ladder),
                                             score_reconstruction(result.initial.model, store, score, device, dtype,
                                                                  ladder))
    if "forecasting" in tasks:
        if forecast_steps:
            t_tune = time.perf_counter()
            tuned = _train(forecast_finetune(config, chosen, folder / "forecast_run", forecast_steps, forecast_lr),
                           datasets)
            tuning = time.perf_counter() - t_tune
            # forecasting fine-tunes are judged by their last step: validation scores reconstruction
            result.forecaster = tuned.checkpoint
        result.forecast_model = load_pretrained(tuned.checkpoint).to(device) if forecast_steps else model
        # a fine-tune starts from the pretrained model; without one, the model is the pretrained run's own
        started = model if forecast_steps else result.initial.model
        ladder = forecast_ladder(store, score)
        result.forecasting = windows_with_initial(forecasting_windows(result.forecast_model, store, score, ladder),
                                                  forecasting_windows(started, store, score, ladder))
    seconds["forecast_finetune_s"] = tuning
    seconds["score_s"] = time.perf_counter() - t - tuning
    return result
