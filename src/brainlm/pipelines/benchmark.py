"""Every task of a model against the baseline ladder: the scoring that ``brainlm benchmark``
(:mod:`brainlm.pipelines.benchmark_command`), cross-validation and the demo share.

Tasks, each scored on the same data for the model and every baseline, the baselines fitted on
the store's train split only:

- **reconstruction**: the test split's non-overlapping windows, a seeded random mask per window
  (``--mask-ratio`` of the model's tokens), R^2 = 1 - SSE / sum(y^2) over the hidden values;
  ladder: zero, region mean, interpolation, connectivity-conditional fill.
- **forecasting**: the last ``k`` timepoints of every region of the same windows; ladder:
  persistence, context mean, per-region AR(p), ridge VAR(p).
- **fingerprinting**: subject identification from the first half of a recording to the
  second, over all subjects of the store; BrainLM embeddings (CLS and mean pooling) beside
  Pearson, partial-correlation and tangent-space FC.
- **probes** (with ``--target``): the probes of :mod:`brainlm.downstream.probe` on the
  embeddings and on the connectivity ladder, subject-grouped cross-validation. Brainmarks'
  protocol is ``--protocol brainmarks`` (:mod:`brainlm.pipelines.brainmarks`).

Every number carries a 95% subject-bootstrap interval, and each task ends with a paired
comparison of the model against its strongest baseline on the same resamples (the interval
of the difference and ``p_boot``, the fraction of resamples in which the model is not
better). Outputs: ``report.md`` and ``report.html`` (a table per task, the verdict of each),
``results.json`` and one figure per task (bars with intervals).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from brainlm.data import WindowDataset
from brainlm.distributed import DeviceOptions
from brainlm.downstream.probe import PROBES, TargetOptions
from brainlm.errors import UserError
from brainlm.evaluate.reconstruction import (ReconstructionEval, evaluate_reconstruction, r2_statistic,
                                             windows_with_initial)
from brainlm.figures import interval_errors, pyplot
from brainlm.options import at_least, between, option, positive

from brainlm.evaluate.baselines import (
    BASELINE_LABELS,
    CONNECTIVITY_FEATURES,
    ForecastBaselines,
    ReconstructionBaselines,
)
from brainlm.evaluate.metrics import prediction_metric
from brainlm.evaluate.protocol import Comparison, EvaluationOptions, SubjectBootstrap
from brainlm.report import Report
from brainlm.evaluate.verdict import Verdict

__all__ = ["BenchmarkConfig", "CV_TASKS", "TaskResult", "benchmark", "score_reconstruction", "reconstruction_windows",
           "reconstruction_ladder", "forecast_ladder",
           "window_sums", "forecasting_windows", "ladder_from_windows", "verdict_of", "task_verdict",
           "benchmark_report", "write_report"]


TASKS = ("reconstruction", "forecasting", "fingerprinting", "probes")
CV_TASKS = ("reconstruction", "forecasting")  # what cross-validation scores


@dataclass(kw_only=True)
class BenchmarkConfig(DeviceOptions, TargetOptions, EvaluationOptions):
    """What ``brainlm benchmark`` scores and how (the settings alone; :class:`BenchmarkOptions` adds
    the model, the store and the output)."""

    split: str = option("test", "split scored for reconstruction and forecasting")
    tasks: tuple[str, ...] | None = option(None, "comma separated (default: every task; with --cv: "
                                           "reconstruction,forecasting)", choices=TASKS)
    mask_ratio: float = option(0.5, "fraction of the model's tokens hidden per window",
                               check=between(0, 1, closed=(False, False)))
    forecast_k: int | None = option(None, "timepoints to forecast (default: one patch, or 20)",
                                    check=at_least(1, optional=True))
    ar_order: int = option(3, "p of AR(p) and VAR(p)", check=positive)
    probes: tuple[str, ...] = option(("dummy", "ridge"), "comma separated", choices=PROBES)
    batch_size: int = option(16, "windows per forward pass", check=positive)

    def __post_init__(self) -> None:
        if self.tasks is None:
            self.tasks = TASKS
        super().__post_init__()


@dataclass
class TaskResult:
    """One task: a row per method (``method``, ``label``, ``value``, ``ci_low``, ``ci_high``),
    the metric's name, and the paired comparison of the model with its strongest baseline."""

    task: str
    metric: str
    table: pd.DataFrame
    comparison: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"task": self.task, "metric": self.metric, "table": self.table.to_dict("records"),
                "comparison": self.comparison, "notes": self.notes}


def _ladder_table(task: str, metric: str, stats: dict[str, Callable[[np.ndarray], float]], boot: SubjectBootstrap,
                  n: int, labels: dict[str, str], model_keys: tuple[str, ...], notes: list[str]) -> TaskResult:
    """Values with intervals for every method, and the best model against the best baseline."""
    everything = np.arange(n)
    rows = []
    for key, stat in stats.items():
        lo, hi = boot.ci(stat)
        rows.append({"method": key, "label": labels[key], "value": stat(everything), "ci_low": lo, "ci_high": hi})
    table = pd.DataFrame(rows)
    values = table.set_index("method")["value"]
    model = max(model_keys, key=lambda k: values[k])
    base = max((k for k in stats if k not in model_keys), key=lambda k: values[k])
    cmp = boot.compare(stats[model], stats[base])
    comparison = {"model": model, "baseline": base, "model_value": float(values[model]),
                  "baseline_value": float(values[base]), "difference": float(values[model] - values[base]),
                  "diff_ci_low": cmp.diff_lo, "diff_ci_high": cmp.diff_hi, "p_boot": cmp.p_boot,
                  "num_subjects": boot.num_subjects,
                  "winner": model if values[model] > values[base] else (base if values[model] < values[base] else "tie")}
    result = TaskResult(task, metric, table, comparison, notes)
    comparison["outcome"] = verdict_of(result).outcome  # the card and readers of results.json word it the same way
    return result


# ---------------------------------------------------------------------------------------------
# The tasks
# ---------------------------------------------------------------------------------------------


def reconstruction_ladder(store) -> ReconstructionBaselines:
    """The reconstruction ladder fitted on the store's train split."""
    return ReconstructionBaselines().fit(x for _, x in store.iter_recordings("train"))


def forecast_ladder(store, cfg: BenchmarkConfig) -> ForecastBaselines:
    """The forecasting ladder (AR and VAR of order ``cfg.ar_order``) fitted on the store's train split."""
    from brainlm.downstream import open_recordings

    return ForecastBaselines(order=cfg.ar_order).fit(x for _, x in open_recordings(store, "train"))


def score_reconstruction(model, store, cfg: BenchmarkConfig, device, dtype,
                         baselines: ReconstructionBaselines | None = None) -> ReconstructionEval:
    """The model's masked reconstruction of the ``cfg.split`` windows beside the reconstruction
    ladder fitted on the train split (``baselines``, fitted here when not given): a seeded random
    mask per window (``cfg.mask_ratio`` of the model's tokens), metrics and per-window sums."""
    baselines = baselines or reconstruction_ladder(store)
    ds = WindowDataset(store, cfg.split, window=model.window_length, mode="sliding")
    return evaluate_reconstruction(model, ds, baselines=baselines, batch_size=cfg.batch_size, seed=cfg.seed,
                                   device=device, dtype=dtype, mask_ratio=cfg.mask_ratio, per_window=True)


def reconstruction_windows(model, store, cfg: BenchmarkConfig, device, dtype) -> pd.DataFrame:
    """Per window of ``cfg.split``: ``subject_id`` and ``<method>_sse`` / ``<method>_syy`` over
    the hidden values, for the model and the reconstruction ladder (:func:`score_reconstruction`)."""
    return window_sums(score_reconstruction(model, store, cfg, device, dtype))


def window_sums(ev: ReconstructionEval) -> pd.DataFrame:
    """The columns of a reconstruction's per-window frame that the R^2 ladder pools."""
    return ev.windows[["subject_id"] + [f"{m}_{part}" for m in ev.methods for part in ("sse", "syy")]]


def forecast_horizon(model, cfg: BenchmarkConfig) -> int:
    return cfg.forecast_k or getattr(getattr(model, "config", None), "timepoint_patching_size", 20)


def forecasting_windows(model, store, cfg: BenchmarkConfig, baselines: ForecastBaselines | None = None) -> pd.DataFrame:
    """Per window of ``cfg.split``: the same columns as :func:`reconstruction_windows` for the
    last ``k`` timepoints, the model beside the forecast ladder fitted on the train split
    (``baselines``, fitted here when not given)."""
    from brainlm.downstream import open_recordings
    from brainlm.downstream.reconstruct import forecast_recordings

    baselines = baselines or forecast_ladder(store, cfg)
    res = forecast_recordings(model, open_recordings(store, cfg.split), forecast_horizon(model, cfg), baselines=baselines,
                              batch_size=cfg.batch_size, precision=cfg.precision, progress=True,
                              flag=BenchmarkConfig.flag("forecast_k"))
    true = np.asarray(res.true, np.float64)
    frame = {"subject_id": res.index["subject_id"].to_numpy()}
    for m, pred in res.preds.items():
        key = "model" if m == "brainlm" else m
        frame[f"{key}_sse"], frame[f"{key}_syy"] = ((true - pred) ** 2).sum((1, 2)), (true ** 2).sum((1, 2))
    return pd.DataFrame(frame)


def ladder_from_windows(task: str, windows: pd.DataFrame, cfg: BenchmarkConfig, notes: list[str]) -> TaskResult:
    """R^2 pooled over windows for every method of a ``*_windows`` frame, 95% intervals from
    resampling its subjects, and the model against the strongest baseline."""
    methods = [c[: -len("_sse")] for c in windows.columns if c.endswith("_sse")]
    boot = SubjectBootstrap(windows["subject_id"].to_numpy(), cfg.bootstrap, cfg.seed)
    stats = {m: r2_statistic(windows, m) for m in methods}
    labels = {m: "BrainLM" if m == "model" else BASELINE_LABELS[m] for m in methods}  # "initial" is the model at step 0
    return _ladder_table(task, "R^2", stats, boot, len(windows), labels, ("model",), notes)


def _reconstruction(model, store, cfg: BenchmarkConfig, device, dtype, initial=None) -> TaskResult:
    ladder = reconstruction_ladder(store)
    frame = window_sums(score_reconstruction(model, store, cfg, device, dtype, ladder))
    if initial is not None:
        frame = windows_with_initial(frame, window_sums(score_reconstruction(initial, store, cfg, device, dtype, ladder)))
    notes = [f"{len(frame)} windows of {model.window_length} timepoints of the {cfg.split} split "
             f"({frame['subject_id'].nunique()} subjects), {cfg.mask_ratio:.0%} of the model's tokens hidden at "
             "random per window"]
    return ladder_from_windows("reconstruction", frame, cfg, notes)


def _forecasting(model, store, cfg: BenchmarkConfig, initial=None) -> TaskResult:
    ladder = forecast_ladder(store, cfg)
    frame = forecasting_windows(model, store, cfg, ladder)
    if initial is not None:
        frame = windows_with_initial(frame, forecasting_windows(initial, store, cfg, ladder))
    notes = [f"the last {forecast_horizon(model, cfg)} timepoints of {len(frame)} windows of the {cfg.split} split; "
             f"AR({cfg.ar_order}) and VAR({cfg.ar_order}) fitted on the train split"]
    return ladder_from_windows("forecasting", frame, cfg, notes)


def _fingerprinting(model, store, cfg: BenchmarkConfig, dtype_name: str, initial=None) -> TaskResult:
    from brainlm.downstream.fingerprint import fingerprint

    per_subject, labels = {}, {}
    model_labels = {"cls": "BrainLM (cls)", "mean": "BrainLM (mean)",
                    "connectivity": "BrainLM connectivity (region-embedding correlation)"}
    for pooling in model_labels:
        summary, matches = fingerprint(model, store, pooling=pooling, precision=dtype_name,
                                       connectivity=tuple(CONNECTIVITY_FEATURES) if pooling == "cls" else ())
        for kind, grp in matches.groupby("features", sort=False):
            key = f"brainlm_{pooling}" if kind == "brainlm" else kind
            per_subject[key] = (grp["subject_id"] == grp["identified_as"]).to_numpy(float)
            labels[key] = model_labels[pooling] if kind == "brainlm" else BASELINE_LABELS[kind]
        if initial is not None:
            matches = fingerprint(initial, store, pooling=pooling, precision=dtype_name, connectivity=())[1]
            per_subject[f"initial_{pooling}"] = (matches["subject_id"] == matches["identified_as"]).to_numpy(float)
            labels[f"initial_{pooling}"] = f"{BASELINE_LABELS['initial']} ({pooling})"
    n = len(next(iter(per_subject.values())))
    boot = SubjectBootstrap(np.arange(n), cfg.bootstrap, cfg.seed)
    stats = {k: (lambda v: lambda idx: float(v[idx].mean()))(v) for k, v in per_subject.items()}
    notes = [f"first half -> second half of each subject's first recording, {n} subjects (chance {1 / n:.3f}); "
             "all subjects of the store, so the model saw the train subjects' recordings in pretraining",
             "every feature from the same span: the model's over all sliding windows of a half, FC over the whole half"]
    return _ladder_table("fingerprinting", "accuracy", stats, boot, n, labels,
                         tuple(f"brainlm_{p}" for p in model_labels), notes)


def _probes(model, store, cfg: BenchmarkConfig, initial=None) -> list[TaskResult]:
    from brainlm.downstream.probe import probe

    if cfg.target is None:
        return []
    targets_file = cfg.targets
    kwargs = dict(targets_file=targets_file, subject_column=cfg.subject_column, task=cfg.task, probes=cfg.probes,
                  n_splits=cfg.folds, n_boot=0, seed=cfg.seed, progress=False, precision=cfg.precision)
    res = probe(model, store, cfg.target, **kwargs)
    if initial is not None:  # the same probes, folds and rows on the embeddings of the model at initialisation
        first = probe(initial, store, cfg.target, fc_baseline=False, **kwargs).predictions
        res.predictions = pd.concat([res.predictions, first.assign(features="initial")], ignore_index=True)
    return [_probe_task("probes", res, cfg)]


def _probe_task(name: str, res, cfg: BenchmarkConfig) -> TaskResult:
    preds = res.predictions
    main = "r2" if res.task == "regression" else "balanced_accuracy"
    classes = np.unique(preds["y_true"].astype(str)) if res.task == "classification" else None

    def metric_fn(p: pd.DataFrame):
        yt, yp = p["y_true"].to_numpy(), p["y_pred"].to_numpy()
        return lambda idx: prediction_metric(res.task, main, yt[idx], yp[idx], None, classes)

    # The best probe of each feature set, on the same rows (every feature set predicts every row).
    stats, labels = {}, {}
    for features, grp in preds.groupby("features", sort=False):
        by_probe = {p: g.sort_values("row") for p, g in grp.groupby("probe", sort=False)}
        best = max(by_probe, key=lambda p: metric_fn(by_probe[p])(np.arange(len(by_probe[p]))))
        stats[features] = metric_fn(by_probe[best])
        labels[features] = ("BrainLM" if features == "brainlm" else BASELINE_LABELS.get(features, features)) + f" ({best})"
    rows = next(iter(by_probe.values()))
    boot = SubjectBootstrap(rows["subject_id"].to_numpy(), cfg.bootstrap, cfg.seed,
                            valid=(lambda idx: len(np.unique(rows["y_true"].to_numpy()[idx].astype(str))) > 1)
                            if res.task == "classification" else None)
    notes = [f"target {cfg.target!r}, task {res.task}, {cfg.folds}-fold subject-grouped CV; the best probe of "
             f"each feature set ({', '.join(cfg.probes)}) by out-of-fold {main}"]
    if res.missing_subjects:
        notes.append(f"{len(res.missing_subjects)} subjects without a target left out")
    return _ladder_table(name, main, stats, boot, len(rows), labels, ("brainlm",), notes)


# ---------------------------------------------------------------------------------------------
# Running and reporting
# ---------------------------------------------------------------------------------------------


def benchmark(model, store, cfg: BenchmarkConfig | None = None, initial=None) -> list[TaskResult]:
    """Every task of ``cfg.tasks`` for a loaded model on a store (see the module docstring).

    Args:
        initial: the same model at initialisation (no training step); when given, every task
            scores it beside the model, and the model's verdict is against the stronger of the
            best baseline and it.
    """
    from brainlm.distributed import resolve_precision
    from brainlm.downstream.loading import check_regions

    cfg = cfg or BenchmarkConfig()
    check_regions(model, store.num_regions, str(store.path))
    if cfg.split not in store.manifest["splits"] or not len(store.split_index(cfg.split)):
        raise UserError(f"{store.path}: the {cfg.split} split (--split) has no recordings")
    if not len(store.split_index("train")):
        raise UserError(f"{store.path}: the baselines are fitted on the train split, which has no recordings")
    if "forecasting" in cfg.tasks:  # before any task runs
        from brainlm.downstream.reconstruct import check_horizon

        check_horizon(model, forecast_horizon(model, cfg), model.window_length, store.num_regions,
                      BenchmarkConfig.flag("forecast_k"))
    device = next(model.parameters()).device
    dtype = resolve_precision(cfg.precision, device)
    results = []
    if "reconstruction" in cfg.tasks:
        results.append(_reconstruction(model, store, cfg, device, dtype, initial))
    if "forecasting" in cfg.tasks:
        results.append(_forecasting(model, store, cfg, initial))
    if "fingerprinting" in cfg.tasks:
        results.append(_fingerprinting(model, store, cfg, cfg.precision, initial))
    if "probes" in cfg.tasks:
        results += _probes(model, store, cfg, initial)
    return results


def _figure(result: TaskResult):
    plt = pyplot()
    t = result.table
    fig, ax = plt.subplots(figsize=(1.1 * len(t) + 2.5, 3.4))
    colors = ["tab:red" if m.startswith(("model", "brainlm")) else
              ("tab:blue" if m == result.comparison.get("baseline") else "0.6") for m in t["method"]]
    ax.bar(range(len(t)), t["value"], yerr=interval_errors(t["value"], t["ci_low"], t["ci_high"]), color=colors,
           capsize=3)
    ax.set_xticks(range(len(t)), [label.replace(" (", "\n(") for label in t["label"]], fontsize=7, rotation=20)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_ylabel(result.metric)
    ax.set_title(f"{result.task}: BrainLM (red) vs the strongest baseline (blue), 95% subject-bootstrap CIs", fontsize=8)
    return fig


def verdict_of(r: TaskResult) -> Verdict:
    """The task's model-vs-strongest-baseline :class:`Verdict` (from ``r.comparison``)."""
    c = r.comparison
    label = dict(zip(r.table["method"], r.table["label"]))
    return Verdict(label[c["model"]], c["model_value"], label[c["baseline"]], c["baseline_value"], r.metric,
                   Comparison(c["diff_ci_low"], c["diff_ci_high"], c["p_boot"]), c.get("num_subjects"))


def task_verdict(r: TaskResult) -> str:
    """The verdict line of a task, its outcome in bold (Markdown)."""
    return verdict_of(r).markdown()


def benchmark_report(results: list[TaskResult], header: list[str], summary: dict | None = None) -> Report:
    """The report of scored tasks: per task its notes, table, verdict and figure; ``results.json``
    holds ``summary`` and every task (:meth:`TaskResult.to_dict`)."""
    report = Report("Benchmark: BrainLM against the strongest simple baselines", header,
                    {**(summary or {}), "tasks": [r.to_dict() for r in results]})
    for r in results:
        slug = r.task.split(" ")[0]
        table = r.table.assign(**{"95% CI": [f"[{lo:.3f}, {hi:.3f}]" for lo, hi in zip(r.table.ci_low, r.table.ci_high)]})
        report.section(r.task, *[f"{n}." for n in r.notes])
        report.table(table[["label", "value", "95% CI"]].rename(columns={"label": "method", "value": r.metric}),
                     key=r.task)
        report.verdict(verdict_of(r))
        report.figure(f"{slug}.png", r.task, _figure(r), dpi=110)
    return report


def write_report(results: list[TaskResult], out: Path, header: list[str], summary: dict | None = None) -> Path:
    """``report.md``, ``report.html``, ``results.json`` and a figure per task (:func:`benchmark_report`)."""
    return benchmark_report(results, header, summary).write(out)
