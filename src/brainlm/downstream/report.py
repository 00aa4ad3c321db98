"""One function per ``brainlm`` sub-command: run it and write its outputs to disk.

Every function claims its output first (:func:`brainlm.io.output_folder`: a lock against a
second writer, and existing outputs kept unless ``overwrite=True``), before any computation,
so a bad call leaves earlier results as they were. Files are written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from brainlm.io import (
    OutputLock,
    atomic_write_text,
    check_overwrite,
    output_folder,
    write_csv,
    write_embeddings,
)

from .embed import embed
from .finetune import FinetuneConfig, finetune
from .fingerprint import fingerprint
from .loading import load_model, open_recordings
from .plots import plot_fingerprint, plot_forecast, plot_reconstruction
from .probe import probe
from .reconstruct import forecast_recordings, reconstruct_recordings

__all__ = ["run_embed", "run_reconstruct", "run_forecast", "run_probe", "run_finetune", "run_fingerprint"]


def run_embed(checkpoint, data, out, *, overwrite: bool = False, split=None, coords=None, **kwargs) -> Path:
    """Embed and write ``out`` (``.parquet``, ``.csv``/``.tsv``, or ``.npy`` + ``.index.tsv``); returns ``out``."""
    out = Path(out)
    with OutputLock(out, what="embedding table"):
        check_overwrite([out], overwrite)
        emb = embed(checkpoint, data, split=split, coords=coords, **kwargs)
        write_embeddings(emb, out, overwrite=overwrite)
    for rid in emb.skipped:
        print(f"skipped (shorter than one window): {rid}")
    return out


def run_reconstruct(checkpoint, data, out_dir, *, split=None, coords=None, overwrite=False, plot_recordings: int = 1,
                    **kwargs) -> pd.DataFrame:
    """Reconstruct every recording; write ``r2_per_region.csv``, ``summary.csv`` and plots.

    Returns:
        summary: one row per recording with the median and mean R^2 over regions.
    """
    with output_folder(out_dir, ["r2_per_region.csv", "summary.csv"], overwrite=overwrite) as out:
        model = load_model(checkpoint)
        recs = open_recordings(data, split, coords)
        table, results = reconstruct_recordings(model, recs, **kwargs)
        summary = table.groupby("recording_id", sort=False)["r2"].agg(["median", "mean"]).reset_index()
        summary.columns = ["recording_id", "r2_median", "r2_mean"]
        write_csv(table, out / "r2_per_region.csv")
        write_csv(summary, out / "summary.csv")
        names = getattr(recs, "region_names", None)
        for rid in list(results)[:plot_recordings]:
            plot_reconstruction(results[rid], out / f"reconstruction_{rid}.png", region_names=names,
                                title=f"{rid}: mask ratio {kwargs.get('mask_ratio', 0.5)}")
    return summary


def run_forecast(checkpoint, data, out_dir, k: int, *, split=None, coords=None, overwrite=False, **kwargs) -> pd.DataFrame:
    """Forecast the last k timepoints of each window; write ``forecast_metrics.csv`` and a plot."""
    with output_folder(out_dir, ["forecast_metrics.csv", "forecast.png"], overwrite=overwrite) as out:
        result = forecast_recordings(load_model(checkpoint), open_recordings(data, split, coords), k, **kwargs)
        write_csv(result.metrics, out / "forecast_metrics.csv")
        plot_forecast(result, out / "forecast.png", title=f"last {k} timepoints of {result.index['recording_id'].iloc[0]}")
    return result.metrics


def run_probe(checkpoint, data, target, out_dir, *, overwrite=False, **kwargs) -> pd.DataFrame:
    """Probes on embeddings and on FC; write ``probe_metrics.csv``, ``probe_predictions.csv``,
    ``probe_folds.json`` (subjects per fold) and ``missing_subjects.txt``. Returns the metrics."""
    names = ["probe_metrics.csv", "probe_predictions.csv", "probe_folds.json", "missing_subjects.txt"]
    with output_folder(out_dir, names, overwrite=overwrite) as out:
        result = probe(checkpoint, data, target, **kwargs)
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


def run_fingerprint(checkpoint, data, out_dir, *, overwrite=False, **kwargs) -> pd.DataFrame:
    """Subject identification; write ``fingerprint.csv``, ``fingerprint_matches.csv``, ``fingerprint.png``."""
    names = ["fingerprint.csv", "fingerprint_matches.csv", "fingerprint.png"]
    with output_folder(out_dir, names, overwrite=overwrite) as out:
        summary, matches = fingerprint(checkpoint, data, **kwargs)
        write_csv(summary, out / "fingerprint.csv")
        write_csv(matches, out / "fingerprint_matches.csv")
        plot_fingerprint(summary, out / "fingerprint.png")
    print(summary.to_string(index=False))
    return summary
