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
    folds/fold_<k>/<task>.parquet   per-window errors, written once the fold is scored
    report.md, results.json, <task>.png, per_subject.png

Rerunning the same command continues: scored folds are read back, a fold whose training was
interrupted resumes from its last checkpoint. A crash loses at most the fold in progress.

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
from brainlm.io import atomic_write, atomic_write_json, output_folder, read_json

from .benchmark import (
    BenchmarkConfig,
    TaskResult,
    task_verdict,
    forecasting_windows,
    ladder_from_windows,
    reconstruction_windows,
    write_report,
)
from .protocol import subject_folds

__all__ = ["fold_assignments", "run_crossval", "CV_TASKS"]

CV_TASKS = ("reconstruction", "forecasting")


def fold_assignments(subjects, k: int, seed: int = 0) -> list[dict[str, str]]:
    """For each of ``k`` shuffled subject folds, ``subject -> split``: the fold is ``test``, the
    next fold ``validation``, the rest ``train``."""
    subjects = np.array(sorted(set(map(str, subjects))))
    if k < 3:
        raise UserError(f"--cv needs at least 3 folds (test, validation and train subjects), got {k}")
    folds = [subjects[test] for _, test in subject_folds(np.zeros(len(subjects)), subjects, "regression", k, seed)]
    out = []
    for i in range(k):
        split = {s: "train" for s in subjects}
        split.update({s: "validation" for s in folds[(i + 1) % k]})
        split.update({s: "test" for s in folds[i]})
        out.append(split)
    return out


def _write_parquet(path: Path, frame: pd.DataFrame) -> Path:
    return atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))


def _fold(k: int, store, split: dict[str, str], train_config, cfg: BenchmarkConfig, folder: Path) -> dict[str, pd.DataFrame]:
    """Pretrain and score one fold (or read it back when it was scored before)."""
    from brainlm.checkpoint import load_pretrained
    from brainlm.distributed import resolve_device, resolve_precision
    from brainlm.train import build_datasets, pretrain

    done = {t: folder / f"{t}.parquet" for t in cfg.tasks}
    if all(p.exists() for p in done.values()):
        return {t: pd.read_parquet(p) for t, p in done.items()}
    view = store.resplit(split)
    run_dir = folder / "run"
    config = train_config.replace(out_dir=str(run_dir), data=str(store.path), plots=False)
    train_ds, val_ds = build_datasets(config, ("train", "validation"), store=view)
    resume = (run_dir / "train_config.json").exists()
    print(f"fold {k + 1}: test subjects {', '.join(view.splits['test'])}; pretraining on {len(view.splits['train'])} "
          f"subjects{' (continuing)' if resume else ''}", flush=True)
    result = pretrain(config, resume=resume, train_dataset=train_ds, val_dataset=val_ds)
    device = resolve_device(cfg.device)
    model = load_pretrained(result.best or result.checkpoint).to(device).eval()
    dtype = resolve_precision(cfg.precision, device)
    out = {}
    if "reconstruction" in cfg.tasks:
        out["reconstruction"] = reconstruction_windows(model, view, cfg, device, dtype)
    if "forecasting" in cfg.tasks:
        out["forecasting"] = forecasting_windows(model, view, cfg)
    for task, frame in out.items():  # each file whole or absent; a fold counts as scored once all exist
        _write_parquet(done[task], frame.assign(fold=k))
    return out


def _per_subject_figure(frames: dict[str, pd.DataFrame], results: list[TaskResult], path: Path) -> Path:
    """Per held-out subject: the model's R^2 minus the strongest baseline's, one panel per task."""
    from brainlm.figures import pyplot, save_figure

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
    return save_figure(fig, path, dpi=110)


def run_crossval(preset: str, store_path, out_dir, k: int, cfg: BenchmarkConfig | None = None, *,
                 overrides: dict[str, Any] | None = None, overwrite: bool = False) -> list[TaskResult]:
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
    plan = {"preset": preset, "overrides": {key: str(v) for key, v in (overrides or {}).items()}, "store": str(store_path),
            "benchmark": {key: v for key, v in dataclasses.asdict(cfg).items() if key not in ("device", "batch_size")},
            "folds": [sorted(s for s, v in f.items() if v == "test") for f in folds]}
    t0 = time.perf_counter()
    with output_folder(out_dir, ["report.md", "results.json"], overwrite=overwrite) as out:
        plan_path = out / "cv.json"
        if plan_path.exists():
            if read_json(plan_path, "cross-validation plan") != read_json_like(plan):
                if not overwrite:
                    raise UserError(f"{plan_path}: {out} holds a cross-validation with other settings; pass "
                                    "--overwrite to start over or choose another --out")
                shutil.rmtree(out / "folds", ignore_errors=True)
        atomic_write_json(plan_path, plan)
        frames: dict[str, list[pd.DataFrame]] = {t: [] for t in cfg.tasks}
        for i in progress(range(k), desc="cross-validation", unit="fold"):
            folder = out / "folds" / f"fold_{i}"
            folder.mkdir(parents=True, exist_ok=True)
            for task, frame in _fold(i, store, folds[i], train_config, cfg, folder).items():
                frames[task].append(frame)
        pooled = {t: pd.concat(f, ignore_index=True) for t, f in frames.items()}
        subjects = sorted(set(store.recordings["subject_id"].astype(str)))
        results = []
        for task in cfg.tasks:
            w = pooled[task]
            what = ("a seeded random mask per window hiding " f"{cfg.mask_ratio:.0%} of the model's tokens"
                    if task == "reconstruction" else f"the last {_horizon(train_config, cfg)} timepoints of every window, "
                    f"AR({cfg.ar_order}) and VAR({cfg.ar_order})")
            notes = [f"{k}-fold subject cross-validation: {w['subject_id'].nunique()} of {len(subjects)} subjects each "
                     f"scored once while held out, {len(w)} windows; per fold a `{preset}` model pretrained from scratch "
                     "and the baselines fitted on that fold's training subjects only", what]
            results.append(ladder_from_windows(task, w, cfg, notes))
        minutes = (time.perf_counter() - t0) / 60
        header = [f"`brainlm benchmark {preset} {store_path} --cv {k}`: store {store.num_regions} regions, "
                  f"{len(subjects)} subjects; this invocation took {minutes:.1f} min. Every method is scored on the "
                  "same windows with the same formula; intervals resample subjects."]
        write_report(results, out, header)
        _per_subject_figure(pooled, results, out / "per_subject.png")
        atomic_write_json(out / "results.json", {"preset": preset, "store": str(store_path), "cv": k,
                                                 "folds": plan["folds"], "config": dataclasses.asdict(cfg),
                                                 "minutes": minutes, "tasks": [r.to_dict() for r in results]})
    for r in results:
        print(f"{r.task} ({k}-fold CV): {task_verdict(r).replace('**', '')}")
    print(f"report: {Path(out_dir) / 'report.md'}")
    return results


def _horizon(train_config, cfg: BenchmarkConfig) -> int:
    return cfg.forecast_k or train_config.model_config().timepoint_patching_size


def read_json_like(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists), for comparing with a saved file."""
    import json

    from brainlm.io import json_safe

    return json.loads(json.dumps(json_safe(obj)))
