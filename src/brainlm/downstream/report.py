"""One function per ``brainlm`` sub-command: run it and write its outputs to disk.

Every function claims its output first (:func:`brainlm.io.output_folder`: a lock against a
second writer, and existing outputs kept unless ``overwrite=True``), before any computation,
so a bad call leaves earlier results as they were. Files are written atomically. Under
``torchrun`` the work is split across processes and rank 0 writes.

Every number is printed next to the baseline ladder, fitted on the store's train split when
the data are a store (the connectivity fill, AR and VAR need one).
"""

from __future__ import annotations

import json
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from brainlm.distributed import (
    DeviceOptions,
    destroy_distributed,
    init_distributed,
    is_main_process,
    resolve_device,
    share_errors,
)
from brainlm.evaluate.baselines import (
    BASELINE_LABELS,
    ForecastBaselines,
    ReconstructionBaselines,
)
from brainlm.evaluate.protocol import SubjectBootstrap
from brainlm.evaluate.verdict import compare
from brainlm.options import at_least, option, positive
from brainlm.io import (
    OutputLock,
    atomic_write_text,
    check_overwrite,
    output_folder,
    write_csv,
    write_embeddings,
)

from .embed import POOLINGS, WINDOW_MODES, embed
from .finetune import FinetuneConfig, finetune
from .fingerprint import fingerprint
from .loading import load_model, open_recordings, training_recordings
from .plots import plot_fingerprint, plot_forecast, plot_reconstruction
from .probe import probe
from .reconstruct import forecast_recordings, reconstruct_recordings

__all__ = ["RecordingsOptions", "EmbedOptions", "run_embed", "run_reconstruct", "run_forecast", "run_probe",
           "run_finetune", "run_fingerprint"]


@dataclass(kw_only=True)
class RecordingsOptions(DeviceOptions):
    """A model and the recordings it runs on: what every command applying a model takes."""

    checkpoint: str = option(help="model folder (ours, original BrainLM, ViT-MAE, a training run) or hub id",
                             positional=True)
    data: list[str] = option(help="a store folder, or parcellated time-series files (with --coords)", positional=True,
                             nargs="+")
    coords: str | None = option(None, "coordinate file for time-series files")
    split: str | None = option(None, "store split: train, validation or test (default: all)")
    window: int | None = option(None, "timepoints per window (default: the model's)", check=at_least(1, optional=True))
    overwrite: bool = option(False, "replace existing outputs")

    @property
    def source(self):
        """What :func:`open_recordings` takes: the store folder, or the list of files."""
        return self.data[0] if len(self.data) == 1 and not self.coords else list(self.data)


@dataclass(kw_only=True)
class EmbedOptions(RecordingsOptions):
    """``brainlm embed``: embeddings of recording windows (masking off), as Parquet, CSV/TSV or .npy."""

    out: str = option(help="output .parquet, or .npy (with .index.tsv beside it)")
    pooling: str = option("cls", "what a window becomes", choices=POOLINGS)
    keep_regions: bool = option(False, "region_time: keep one vector per region (R, D)")
    windows: str = option("average", "which windows of a recording, and whether to average them",
                          choices=WINDOW_MODES)
    stride: int | None = option(None, "step of sliding windows (default: the window)", check=at_least(1, optional=True))
    batch_size: int = option(32, "windows per forward pass", check=positive)
    attention: bool = option(False, "also store CLS attention per region")


@contextmanager
def _claim(path, outputs=(), *, overwrite: bool, file: bool = False):
    """Claim an output (lock, overwrite policy) on rank 0; its refusal is raised on every rank."""
    with ExitStack() as stack:
        def claim():
            if not is_main_process():
                return
            if file:
                stack.enter_context(OutputLock(path, what="output file"))
                check_overwrite([path], overwrite)
            else:
                stack.enter_context(output_folder(path, outputs, overwrite=overwrite))

        share_errors(claim)
        yield Path(path)


def _load(checkpoint, device: str):
    """The model on this process's device (its own GPU under torchrun)."""
    return load_model(checkpoint, map_location=resolve_device(device, init_distributed().local_rank))


def run_embed(options: EmbedOptions) -> Path:
    """Embed and write ``options.out`` (``.parquet``, ``.csv``/``.tsv``, or ``.npy`` + ``.index.tsv``); returns it.

    Under ``torchrun`` every process embeds its share of the recordings and rank 0 writes
    one table, identical to a single process's.
    """
    o = options
    out = Path(o.out)
    init_distributed()
    try:
        with _claim(out, overwrite=o.overwrite, file=True):
            emb = embed(_load(o.checkpoint, o.device), o.source, split=o.split, coords=o.coords, pooling=o.pooling,
                        average_regions=not o.keep_regions, windows=o.windows, window=o.window, stride=o.stride,
                        batch_size=o.batch_size, attention=o.attention, precision=o.precision)
            if emb is not None:
                write_embeddings(emb, out, overwrite=o.overwrite)
                for rid in emb.skipped:
                    print(f"skipped (shorter than one window): {rid}")
                print(f"wrote {out}")
    finally:
        destroy_distributed()
    return out


def run_reconstruct(checkpoint, data, out_dir, *, split=None, coords=None, overwrite=False, plot_recordings: int = 1,
                    device: str = "cpu", precision: str = "fp32", **kwargs) -> pd.DataFrame | None:
    """Reconstruct every recording; write ``r2_per_region.csv``, ``summary.csv`` (the model and the
    baselines per recording) and plots. Returns the summary (None on ranks other than 0)."""
    init_distributed()
    try:
        with _claim(out_dir, ["r2_per_region.csv", "summary.csv"], overwrite=overwrite) as out:
            recs = open_recordings(data, split, coords)
            train = training_recordings(data)
            baselines = ReconstructionBaselines().fit(x for _, x in train) if train is not None else ReconstructionBaselines()
            result = reconstruct_recordings(_load(checkpoint, device), recs, baselines=baselines, precision=precision,
                                            keep=plot_recordings, **kwargs)
            if result is None:
                return None
            table, results = result
            summary = table.groupby("recording_id", sort=False)["r2"].agg(["median", "mean"]).reset_index()
            summary.columns = ["recording_id", "r2_median", "r2_mean"]
            scores = pd.DataFrame.from_dict(table.attrs["scores"], orient="index").add_suffix("_r2_masked")
            summary = summary.join(scores, on="recording_id")
            write_csv(table, out / "r2_per_region.csv")
            write_csv(summary, out / "summary.csv")
            for rid, rec in results.items():
                plot_reconstruction(rec, out / f"reconstruction_{rid}.png", region_names=recs.region_names,
                                    title=f"{rid}: mask ratio {kwargs.get('mask_ratio', 0.5)}")
    finally:
        destroy_distributed()
    subjects = {m["recording_id"]: m["subject_id"] for m in recs.meta}
    _print_scores(summary, baselines, summary["recording_id"].map(subjects).to_numpy())
    return summary


def _print_scores(summary: pd.DataFrame, baselines: ReconstructionBaselines, subjects) -> None:
    """The table, the mean over recordings of each method, and the verdict (intervals resample subjects)."""
    pooled = {name: summary[f"{name}_r2_masked"].mean() for name in ("model", *baselines.names)}
    best = max((n for n in pooled if n != "model"), key=pooled.get)
    print(summary.to_string(index=False))
    print("mean masked R^2 over recordings: " + ", ".join(
        f"{'BrainLM' if n == 'model' else BASELINE_LABELS[n]} {v:.3f}" for n, v in pooled.items()))
    model, base = summary["model_r2_masked"].to_numpy(), summary[f"{best}_r2_masked"].to_numpy()
    verdict = compare("BrainLM", BASELINE_LABELS[best], lambda idx: model[idx].mean(), lambda idx: base[idx].mean(),
                      SubjectBootstrap(subjects, 1000, 0), len(summary), metric="mean masked R^2")
    print(f"{verdict.line()}; ahead on {int((model > base).sum())} of {len(summary)} recordings"
          + ("" if "conn" in pooled else "; pass a store for the connectivity fill (fitted on its train split)"))


def run_forecast(checkpoint, data, out_dir, k: int, *, split=None, coords=None, overwrite=False, ar_order: int = 3,
                 device: str = "cpu", **kwargs) -> pd.DataFrame:
    """Forecast the last k timepoints of each window; write ``forecast_metrics.csv`` and a plot."""
    with output_folder(out_dir, ["forecast_metrics.csv", "forecast.png"], overwrite=overwrite) as out:
        train = training_recordings(data)
        baselines = ForecastBaselines(order=ar_order)
        if train is not None:
            baselines.fit(x for _, x in train)
        result = forecast_recordings(_load(checkpoint, device), open_recordings(data, split, coords), k,
                                     baselines=baselines, **kwargs)
        write_csv(result.metrics, out / "forecast_metrics.csv")
        plot_forecast(result, out / "forecast.png", title=f"last {k} timepoints of {result.index['recording_id'].iloc[0]}")
    print(result.metrics.to_string(index=False))
    if train is None:
        print("AR and VAR baselines need a store's train split to be fitted on: pass a store")
    return result.metrics


def run_probe(checkpoint, data, target, out_dir, *, overwrite=False, device: str = "cpu", **kwargs) -> pd.DataFrame:
    """Probes on embeddings and on the connectivity ladder; write ``probe_metrics.csv``,
    ``probe_predictions.csv``, ``probe_folds.json`` (subjects per fold) and ``missing_subjects.txt``."""
    names = ["probe_metrics.csv", "probe_predictions.csv", "probe_folds.json", "missing_subjects.txt"]
    with output_folder(out_dir, names, overwrite=overwrite) as out:
        result = probe(_load(checkpoint, device), data, target, **kwargs)
        write_csv(result.metrics, out / "probe_metrics.csv")
        write_csv(result.predictions, out / "probe_predictions.csv")
        atomic_write_text(out / "probe_folds.json", json.dumps(result.folds, indent=1) + "\n")
        atomic_write_text(out / "missing_subjects.txt", "".join(f"{s}\n" for s in result.missing_subjects))
    if result.missing_subjects:
        print(f"left out (no {target!r} target): {', '.join(result.missing_subjects)}")
    print(result.table().to_string())
    return result.metrics


def run_finetune(checkpoint, store, target, out_dir, *, overwrite=False, targets_file=None, subject_column=None,
                 **config) -> pd.DataFrame:
    """Fine-tune and save the best model into ``out_dir`` (with ``history.csv``); returns the history."""
    with output_folder(out_dir, ["config.json", "history.csv"], overwrite=overwrite, what="checkpoint folder") as out:
        result = finetune(checkpoint, store, target, FinetuneConfig(**config), targets_file=targets_file,
                          subject_column=subject_column, out_dir=out, overwrite=True)
        write_csv(result.history, out / "history.csv")
    print(f"best epoch {result.best_epoch}: validation loss {result.history['val_loss'].iloc[result.best_epoch]:.4f} "
          f"(before fine-tuning {result.history['val_loss'].iloc[0]:.4f}); saved {out_dir}")
    return result.history


def run_fingerprint(checkpoint, data, out_dir, *, overwrite=False, device: str = "cpu", **kwargs) -> pd.DataFrame:
    """Subject identification; write ``fingerprint.csv``, ``fingerprint_matches.csv``, ``fingerprint.png``."""
    names = ["fingerprint.csv", "fingerprint_matches.csv", "fingerprint.png"]
    with output_folder(out_dir, names, overwrite=overwrite) as out:
        summary, matches = fingerprint(_load(checkpoint, device), data, **kwargs)
        write_csv(summary, out / "fingerprint.csv")
        write_csv(matches, out / "fingerprint_matches.csv")
        plot_fingerprint(summary, out / "fingerprint.png")
    print(summary[["label", "accuracy", "chance", "num_subjects"]].to_string(index=False))
    return summary
