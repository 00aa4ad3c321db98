"""``brainlm benchmark MODEL STORE --out DIR``: the command. It dispatches to the model's tasks
against the baseline ladder (:mod:`brainlm.pipelines.benchmark`, the scoring library that the
demo and cross-validation share), to the cross-validation of a preset (``--cv``,
:mod:`brainlm.pipelines.crossval`) or to Brainmarks' own protocol (``--protocol brainmarks``,
:mod:`brainlm.pipelines.brainmarks`). It sits above all three, so none of them imports it back.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from brainlm.data import open_store
from brainlm.distributed import resolve_device
from brainlm.downstream.loading import RESAMPLE_HELP, load_initial, load_model, match_store_tr
from brainlm.errors import UserError
from brainlm.io import output_folder
from brainlm.options import ModelOptions, at_least, between, option
from brainlm.train.config import TrainingOverrides

from .benchmark import CV_TASKS, BenchmarkConfig, TaskResult, benchmark, verdict_of, write_report
from .brainmarks import BrainmarksOptions, run_brainmarks_benchmark
from .crossval import run_crossval

__all__ = ["BenchmarkOptions", "run_benchmark"]


@dataclass(kw_only=True)
class BenchmarkOptions(BenchmarkConfig, BrainmarksOptions, TrainingOverrides, ModelOptions):
    """Score a model on a store next to the strongest simple baselines (connectivity fill, AR/VAR,
    Pearson/partial/tangent FC), with subject-bootstrap CIs; writes report.md, results.json and figures.
    With --cv K, CHECKPOINT is a training preset (e.g. demo): a model is pretrained per subject fold and every
    subject is scored once while held out (training settings as --key=value, e.g. --max_steps=500)."""

    checkpoint: str = option(help="model folder (ours, original BrainLM, ViT-MAE, a training run); with --cv, a "
                             "training preset; with --protocol brainmarks, '-' for none (baselines and --features)",
                             positional=True)
    store: str = option(help="store folder (baselines are fitted on its train split)", positional=True)
    out: str = option(help="output folder")
    overwrite: bool = option(False, "replace the outputs of an earlier run in --out")
    cv: int | None = option(None, "K-fold subject cross-validation: pretrain CHECKPOINT (a preset) per fold; rerun "
                            "to continue", metavar="K", check=at_least(3, optional=True))
    forecast_finetune: int = option(0, "with --cv: fine-tune each fold's model this many steps to predict the last "
                                    "patch (forecasting)", metavar="STEPS", check=at_least(0))
    forecast_lr: float = option(1e-3, "learning rate of --forecast-finetune", check=between(0, 1, closed=(False, True)))
    resample_to_model_tr: bool = option(False, RESAMPLE_HELP)

    def __post_init__(self) -> None:
        if self.tasks is None and self.cv is not None:  # cross-validation scores these two by default
            self.tasks = CV_TASKS
        super().__post_init__()
        if self.cv is None and self.overrides:
            raise UserError(f"unrecognised arguments: {' '.join(f'--{k}' for k in self.overrides)} (training settings "
                            "need --cv)")
        if self.cv is None and self.forecast_finetune:
            raise UserError("--forecast-finetune needs --cv")
        if self.resample_to_model_tr and (self.cv is not None or self.protocol == "brainmarks"):
            raise UserError("--resample-to-model-tr applies to a model's benchmark; with "
                            f"{'--cv the models are trained on the store as it is' if self.cv is not None else '--protocol brainmarks the store is read as Brainmarks reads it'}")
        if self.trust_unverified and (self.cv is not None or self.checkpoint == "-"):
            raise UserError("--trust-unverified applies to a model folder; with "
                            f"{'--cv the models are trained here' if self.cv is not None else '- there is none'}")

    def resume_hint(self) -> str | None:
        if self.cv is None:
            return None
        return "run the same command again to continue: folds already scored are kept, an interrupted one resumes"



def run_benchmark(options: BenchmarkOptions) -> list[TaskResult]:
    """``brainlm benchmark``: the model's tasks (or, with ``--cv``, the cross-validation of a preset);
    writes ``report.md``, ``results.json`` and the figures."""
    o, cfg = options, options.as_base(BenchmarkConfig)
    if o.protocol == "brainmarks":
        return run_brainmarks_benchmark(None if o.checkpoint == "-" else o.checkpoint, o.store, o.out, target=o.target,
                                        options=o.as_base(BrainmarksOptions), targets_file=o.targets,
                                        subject_column=o.subject_column, batch_size=o.batch_size,
                                        precision=o.precision, device=o.device, overwrite=o.overwrite,
                                        trust_unverified=o.trust_unverified)
    if o.cv is not None:
        return run_crossval(o.checkpoint, o.store, o.out, o.cv, cfg, overrides=o.overrides,
                            forecast_finetune=o.forecast_finetune, forecast_lr=o.forecast_lr, overwrite=o.overwrite)
    checkpoint, store_path, out_dir = o.checkpoint, o.store, o.out
    with output_folder(out_dir, ["report.md", "results.json"], overwrite=o.overwrite) as out:
        store = open_store(store_path)
        model = load_model(checkpoint, map_location=resolve_device(cfg.device), trust_unverified=o.trust_unverified)
        store, tr_lines = match_store_tr(model, store, o.resample_to_model_tr)
        for line in tr_lines:
            print(line, file=sys.stderr)
        initial = load_initial(checkpoint, model, seed=cfg.seed)
        results = benchmark(model, store, cfg, initial.model)
        header = [f"Model `{checkpoint}` on store `{store_path}` ({store.num_regions} regions; subjects "
                  + ", ".join(f"{k} {len(v)}" for k, v in store.splits.items()) + "). Every method is scored on the "
                  "same data with the same formula; the baselines are fitted on the train split only.",
                  "Beside the model, the same model at initialisation (no training step), and the model's verdict is "
                  f"against the stronger of it and the best baseline: {initial.description}."]
        write_report(results, out, header, {"checkpoint": str(checkpoint), "store": str(store_path),
                                            "config": cfg.to_dict(), "initialisation": initial.to_dict(), "tr": tr_lines})
    for r in results:
        print(f"{r.task}: {verdict_of(r).line()}")
    print(f"report: {Path(out_dir) / 'report.md'}")
    return results
