"""``brainlm benchmark PRESET STORE --cv K --out DIR``: every subject scored once, held out.

The store's subjects are dealt into ``K`` shuffled folds. For fold ``k``: its subjects are the
test subjects, the next fold's are the validation subjects (the checkpoint is chosen on them),
and every other subject is a training subject. A model is pretrained from scratch with the
same preset and budget on the training subjects only, the baseline ladders (connectivity fill,
AR, VAR, ...) are refitted on the same training subjects, and both are scored on the fold's test
windows. The per-window errors of all folds are then pooled, so every R^2 and the paired
model-minus-baseline interval are over all subjects of the store.

Layout of ``DIR``::

    cv.json                  the folds and every setting (a rerun must match it)
    folds/fold_<k>/run/      the fold's pretraining run (resumed where it stopped)
    folds/fold_<k>/forecast_run/    with --forecast-finetune: the fold's forecasting fine-tune
    folds/fold_<k>/<task>.parquet   per-window errors, written once the fold is scored
    folds/fold_<k>/timing.json      minutes spent per stage
    report.md, report.html, results.json, <task>.png, per_subject.png

Rerunning the same command continues: scored folds are read back, a fold whose training was
interrupted resumes from its last checkpoint. A crash loses at most the fold in progress.
Changed scoring settings (``--forecast-finetune``, ``--mask-ratio``, ...) with ``--overwrite``
rescore every fold with its pretraining run kept.

With ``--forecast-finetune N`` each fold's pretrained model is fine-tuned for ``N`` steps on
the same training subjects to predict the last patch of every region from the rest
(``train_mask_scheme="forecast"``, what ``model.forecast`` sees), as the paper fine-tunes
for forecasting; forecasting is then scored with the fine-tuned model, reconstruction with the
pretrained one.

The store's normaliser was fitted once, on the store's own train split; with a cohort-level
normalisation (``robust``) its per-region median and IQR therefore saw some subjects that a
fold holds out. That touches the scale of the inputs only, never a target.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainlm.errors import UserError
from brainlm.evaluate.protocol import subject_folds
from brainlm.io import atomic_write, atomic_write_json, output_folder, read_json
from brainlm.options import command_line

from .benchmark import CV_TASKS, BenchmarkConfig, TaskResult, benchmark_report, ladder_from_windows, verdict_of, window_sums
from .heldout import pretrain_and_score

__all__ = ["fold_assignments", "run_crossval"]


def fold_assignments(subjects, k: int, seed: int = 0) -> list[dict[str, str]]:
    """For each of ``k`` shuffled subject folds, ``subject -> split``: the fold is ``test``, the
    next fold ``validation``, the rest ``train``."""
    subjects = np.array(sorted(set(map(str, subjects))))
    if k < 3:
        raise UserError(f"--cv needs at least 3 folds (test, validation and train subjects), got {k}")
    folds = [subjects[test] for _, test in subject_folds(np.zeros(len(subjects)), subjects, "regression", k, seed,
                                                         flag="--cv")]
    out = []
    for i in range(k):
        split = {s: "train" for s in subjects}
        split.update({s: "validation" for s in folds[(i + 1) % k]})
        split.update({s: "test" for s in folds[i]})
        out.append(split)
    return out


def _write_parquet(path: Path, frame: pd.DataFrame) -> Path:
    return atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))


def _fold(k: int, store, split: dict[str, str], train_config, cfg: BenchmarkConfig, folder: Path,
          forecast_finetune: int, forecast_lr: float) -> dict[str, pd.DataFrame]:
    """Pretrain and score one fold (or read it back when it was scored before)."""
    from brainlm.train import build_datasets

    done = {t: folder / f"{t}.parquet" for t in cfg.tasks}
    if all(p.exists() for p in done.values()):
        return {t: pd.read_parquet(p) for t, p in done.items()}
    timing_path = folder / "timing.json"
    timing = read_json(timing_path, "fold timing") if timing_path.exists() else {}
    view = store.resplit(split)
    config = train_config.replace(data=str(store.path), plots=False)
    datasets = build_datasets(config, ("train", "validation"), store=view)
    print(f"fold {k + 1}: test subjects {', '.join(view.splits['test'])}; pretraining on {len(view.splits['train'])} "
          "subjects", flush=True)
    held = pretrain_and_score(config, view, folder, cfg, forecast_steps=forecast_finetune, forecast_lr=forecast_lr,
                              tasks=cfg.tasks, datasets=datasets)
    for key, seconds in held.seconds.items():  # over every invocation that worked on the fold
        timing[key] = timing.get(key, 0.0) + seconds
    atomic_write_json(timing_path, timing)
    out = {}
    if held.reconstruction is not None:
        out["reconstruction"] = window_sums(held.reconstruction)
    if held.forecasting is not None:
        out["forecasting"] = held.forecasting
    for task, frame in out.items():  # each file whole or absent; a fold counts as scored once all exist
        _write_parquet(done[task], frame.assign(fold=k))
    return out


def _per_subject_figure(frames: dict[str, pd.DataFrame], results: list[TaskResult]):
    """Per held-out subject: the model's R^2 minus the strongest baseline's, one panel per task."""
    from brainlm.figures import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.2), squeeze=False)
    for ax, r in zip(axes[0], results):
        w, base = frames[r.task], r.comparison["baseline"]
        g = w.groupby("subject_id")
        diff = ((1 - g["model_sse"].sum() / g["model_syy"].sum()) - (1 - g[f"{base}_sse"].sum() / g[f"{base}_syy"].sum()))
        diff = diff.sort_values()
        ax.bar(range(len(diff)), diff.to_numpy(), color=np.where(diff.to_numpy() > 0, "tab:red", "tab:blue"))
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(range(len(diff)), diff.index, rotation=70, fontsize=6)
        ax.set_ylabel("R^2 difference")
        label = dict(zip(r.table["method"], r.table["label"]))[base]
        ax.set_title(f"{r.task}: BrainLM minus {label}\n(red: BrainLM ahead)", fontsize=8)
    return fig


def run_crossval(preset: str, store_path, out_dir, k: int, cfg: BenchmarkConfig | None = None, *,
                 overrides: dict[str, Any] | None = None, forecast_finetune: int = 0, forecast_lr: float = 1e-3,
                 overwrite: bool = False) -> list[TaskResult]:
    """``brainlm benchmark PRESET STORE --cv K``: see the module docstring."""
    from brainlm.data import open_store
    from brainlm.progress import progress
    from brainlm.train import apply_overrides, train_preset

    cfg = cfg or BenchmarkConfig(tasks=CV_TASKS)
    unknown = set(cfg.tasks) - set(CV_TASKS)
    if unknown:
        raise UserError(f"--tasks: with --cv only {', '.join(CV_TASKS)} are scored, not {sorted(unknown)}")
    if cfg.split != "test":
        raise UserError("--split: with --cv every fold's held-out subjects are scored; leave --split at test")
    train_config = apply_overrides(train_preset(preset), {"data": str(store_path), **(overrides or {})})
    store = open_store(store_path)
    folds = fold_assignments(store.recordings["subject_id"], k, cfg.seed)
    if forecast_finetune < 0 or forecast_lr <= 0:
        raise UserError("--forecast-finetune must be >= 0 steps and --forecast-lr positive")
    plan = {"pretraining": {"preset": preset, "overrides": {key: str(v) for key, v in (overrides or {}).items()},
                            "store": str(store_path), "folds": [sorted(s for s, v in f.items() if v == "test")
                                                                for f in folds]},
            "scoring": {"benchmark": {key: v for key, v in dataclasses.asdict(cfg).items()
                                      if key not in ("device", "batch_size")},
                        "forecast_finetune": forecast_finetune, "forecast_lr": forecast_lr}}
    t0 = time.perf_counter()
    with output_folder(out_dir, ["report.md", "results.json"], kind="cross-validation", overwrite=overwrite) as out:
        _check_plan(out, read_json_like(plan), overwrite)
        frames: dict[str, list[pd.DataFrame]] = {t: [] for t in cfg.tasks}
        for i in progress(range(k), desc="cross-validation", unit="fold"):
            folder = out / "folds" / f"fold_{i}"
            folder.mkdir(parents=True, exist_ok=True)
            for task, frame in _fold(i, store, folds[i], train_config, cfg, folder, forecast_finetune,
                                     forecast_lr).items():
                frames[task].append(frame)
        pooled = {t: pd.concat(f, ignore_index=True) for t, f in frames.items()}
        subjects = sorted(set(store.recordings["subject_id"].astype(str)))
        results = [ladder_from_windows(task, pooled[task], cfg,
                                       _notes(task, pooled[task], len(subjects), k, preset, train_config, cfg,
                                              forecast_finetune, forecast_lr)) for task in cfg.tasks]
        minutes = (time.perf_counter() - t0) / 60
        timings = [read_json(p, "fold timing") for p in sorted(out.glob("folds/fold_*/timing.json"))]
        stages = {key: sum(t.get(key, 0.0) for t in timings) / 60 for key in ("pretrain_s", "forecast_finetune_s", "score_s")}
        command = command_line("brainlm", "benchmark", preset, store_path, "--cv", k,
                               *(["--forecast-finetune", forecast_finetune] if forecast_finetune else []))
        header = [f"`{command}`: store {store.num_regions} regions, {len(subjects)} subjects. Every method is scored "
                  "on the same windows with the same formula; intervals resample subjects.",
                  f"Time: this invocation {minutes:.1f} min; over all folds as recorded, pretraining "
                  f"{stages['pretrain_s']:.1f} min, forecasting fine-tunes {stages['forecast_finetune_s']:.1f} min, "
                  f"scoring {stages['score_s']:.1f} min."]
        report = benchmark_report(results, header, {"command": command, **plan, "minutes": minutes,
                                                    "stage_minutes": stages})
        report.figure("per_subject.png", "per held-out subject: BrainLM's R^2 minus the strongest baseline's",
                      _per_subject_figure(pooled, results), dpi=110)
        report.write(out)
    for r in results:
        print(f"{r.task} ({k}-fold CV): {verdict_of(r).line()}")
    print(f"report: {Path(out_dir) / 'report.md'}")
    return results


def _notes(task: str, windows: pd.DataFrame, num_subjects: int, k: int, preset: str, train_config,
           cfg: BenchmarkConfig, forecast_finetune: int, forecast_lr: float) -> list[str]:
    """What a task's pooled cross-validation numbers are (the report's notes)."""
    if task == "reconstruction":
        what = f"a seeded random mask per window hiding {cfg.mask_ratio:.0%} of the model's tokens"
    else:
        what = (f"the last {_horizon(train_config, cfg)} timepoints of every window, AR({cfg.ar_order}) and "
                f"VAR({cfg.ar_order})" + (
                    f"; the model fine-tuned per fold for {forecast_finetune} steps (lr {forecast_lr:g}) to predict "
                    "them from the rest, on the same training subjects" if forecast_finetune else
                    "; the pretrained model, not fine-tuned for forecasting"))
    return [f"{k}-fold subject cross-validation: {windows['subject_id'].nunique()} of {num_subjects} subjects each "
            f"scored once while held out, {len(windows)} windows; per fold a `{preset}` model pretrained from scratch "
            "and the baselines fitted on that fold's training subjects only", what]


def _check_plan(out: Path, plan: dict, overwrite: bool) -> None:
    """Continue only what matches ``cv.json``: other pretraining settings need ``--overwrite``
    and start the folds over; other scoring settings need ``--overwrite`` and keep the folds'
    pretraining runs (rescored, fine-tunes redone)."""
    path = out / "cv.json"
    if path.exists():
        saved = read_json(path, "cross-validation plan")
        for part, what in (("pretraining", "pretraining"), ("scoring", "scoring")):
            if saved.get(part) == plan[part]:
                continue
            if not overwrite:
                raise UserError(f"{path}: {out} holds a cross-validation with other {what} settings; pass "
                                "--overwrite to redo it or choose another --out")
            if part == "pretraining":
                shutil.rmtree(out / "folds", ignore_errors=True)
                break
            for stale in [*out.glob("folds/fold_*/*.parquet"), *out.glob("folds/fold_*/forecast_run")]:
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    atomic_write_json(path, plan)


def _horizon(train_config, cfg: BenchmarkConfig) -> int:
    return cfg.forecast_k or train_config.model_config().timepoint_patching_size


def read_json_like(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists), for comparing with a saved file."""
    import json

    from brainlm.io import json_safe

    return json.loads(json.dumps(json_safe(obj)))
