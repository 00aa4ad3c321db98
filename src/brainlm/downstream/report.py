"""One function per ``brainlm`` sub-command: run it and write its outputs to disk.

Every function claims its output first (:func:`brainlm.io.output_folder`: a lock against a
second writer, and existing outputs kept unless ``overwrite=True``), before any computation,
so a bad call leaves earlier results as they were. Files are written atomically. Under
``torchrun`` the work is split across processes and rank 0 writes.

Every number is printed next to the baseline ladder, fitted on the store's train split when
the data are a store (the connectivity fill, AR and VAR need one).
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from brainlm.data.maps import map_outputs, write_command_maps
from brainlm.data.sources import ArrayOptions
from brainlm.errors import UserError
from brainlm.data.validate import FLOAT16_MAX, ON_ERROR
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
from brainlm.evaluate.protocol import EvaluationOptions, SubjectBootstrap
from brainlm.evaluate.verdict import compare
from brainlm.options import ModelOptions, at_least, between, option, positive
from brainlm.io import (
    OutputLock,
    atomic_write_json,
    atomic_write_text,
    claim_file,
    output_folder,
    write_csv,
    write_embeddings,
)

from .embed import POOLINGS, WINDOW_MODES, embed
from .finetune import FinetuneConfig, finetune
from .fingerprint import fingerprint
from .loading import RESAMPLE_HELP, load_model, match_model_tr, open_recordings, training_recordings
from .plots import plot_fingerprint, plot_forecast, plot_reconstruction
from .probe import PROBES, TargetOptions, load_targets, probe
from .reconstruct import forecast_recordings, reconstruct_recordings

__all__ = ["RecordingsOptions", "EmbedOptions", "ReconstructOptions", "ForecastOptions", "ProbeOptions",
           "FinetuneOptions", "FingerprintOptions", "run_embed", "run_reconstruct", "run_forecast", "run_probe",
           "run_finetune", "run_fingerprint"]


@dataclass(kw_only=True)
class RecordingsOptions(DeviceOptions, ArrayOptions, ModelOptions):
    """A model and the recordings it runs on: what every command applying a model takes."""

    checkpoint: str = option(help="model folder (ours, original BrainLM, ViT-MAE, a training run) or hub id",
                             positional=True)
    data: list[str] = option(help="a store folder, or parcellated time-series files (with --coords)", positional=True,
                             nargs="+")
    coords: str | None = option(None, "coordinate file for time-series files")
    split: str | None = option(None, "store split: train, validation or test (default: all)")
    window: int | None = option(None, "timepoints per window (default: the model's)", check=at_least(1, optional=True))
    on_error: str = option("skip", "time-series files that fail prepare's checks (NaN, constant, complex, duplicate "
                           "IDs, ...): skip them (each named on stderr) or stop", choices=ON_ERROR)
    overwrite: bool = option(False, "replace existing outputs")
    resample_to_model_tr: bool = option(False, RESAMPLE_HELP)

    @property
    def source(self):
        """What :func:`open_recordings` takes: the store folder, or the list of files."""
        return self.data[0] if len(self.data) == 1 and not self.coords else list(self.data)

    def matched(self, model, *, resample: bool | None = None):
        """The recordings of :meth:`recordings`, their TRs compared with the model's (one line each on stderr,
        kept in ``self.tr_notes``) and resampled to it with ``--resample-to-model-tr``."""
        import sys

        recs = open_recordings(self.recordings(), self.split, self.coords)
        recs, self.tr_notes = match_model_tr(model, recs, self.resample_to_model_tr if resample is None else resample)
        for line in self.tr_notes:
            print(line, file=sys.stderr)
        return recs

    def recordings(self):
        """The data to run on: a store as its folder (it was checked when it was prepared), or the
        time-series files that pass ``prepare``'s checks (:func:`open_recordings`)."""
        source = self.source
        if isinstance(source, str) and Path(source).is_dir():
            return source
        return open_recordings(source, self.split, self.coords, on_error=self.on_error,
                               max_abs=FLOAT16_MAX if self.precision == "fp16" else None,
                               orientation=self.orientation, mat_key=self.mat_key, subject_id=self.subject_id)


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

    def __post_init__(self) -> None:
        super().__post_init__()
        _keep_regions_applies(self)


@dataclass(kw_only=True)
class ReconstructOptions(RecordingsOptions):
    """``brainlm reconstruct``: reconstruct whole recordings window by window; R^2 per region and a plot."""

    out: str = option(help="output folder")
    mask_ratio: float = option(0.5, "fraction of tokens hidden per window", check=between(0, 1, closed=(False, False)))
    single_pass: bool = option(False, "one random mask per window instead of covering every patch")
    write_image: bool = option(False, "also write the plotted recording's reconstruction as a 4D image of parcel series "
                               "in the store's atlas space (CIFTI dtseries or NIfTI)")
    seed: int = option(0, "seed of the masks")
    plot_recordings: int = option(1, "recordings to plot", cli=False)


@dataclass(kw_only=True)
class ForecastOptions(RecordingsOptions):
    """``brainlm forecast``: predict the last k timepoints of each window; beside persistence, AR and VAR."""

    out: str = option(help="output folder")
    last: int = option(help="timepoints to forecast (BrainLM models: a multiple of the patch size)", flag="--last",
                       aliases=("-k",), check=positive)
    stride: int | None = option(None, "step of the windows (default: the window)", check=at_least(1, optional=True))
    ar_order: int = option(3, "p of AR(p) and VAR(p)", check=positive)
    write_image: bool = option(False, "also write the first window, its last k timepoints forecast, as a 4D image of "
                               "parcel series in the store's atlas space (CIFTI dtseries or NIfTI)")


@dataclass(kw_only=True)
class ProbeOptions(RecordingsOptions, TargetOptions, EvaluationOptions):
    """``brainlm probe``: probes on frozen embeddings and on functional connectivity, grouped CV by subject."""

    target: str = option(help="phenotype column (of the store, or of --targets)")
    out: str = option(help="output folder")
    probes: tuple[str, ...] = option(PROBES, "comma separated", choices=PROBES)
    inner_folds: int = option(3, "inner folds choosing each probe's hyper-parameters", check=at_least(2))
    pooling: str = option("cls", "what a window becomes", choices=POOLINGS)
    windows: str = option("average", "which windows of a recording, and whether to average them", choices=WINDOW_MODES)
    stride: int | None = option(None, "step of sliding windows (default: the window)", check=at_least(1, optional=True))
    fc_baseline: bool = option(True, "skip the feature baselines (Pearson, partial, tangent FC; lag-1 autocorrelation)",
                               flag="--no-fc")


@dataclass(kw_only=True)
class FinetuneOptions(FinetuneConfig, TargetOptions, ModelOptions):
    """``brainlm finetune``: train a CLS -> MLP head (encoder frozen or not) with early stopping."""

    checkpoint: str = option(help="model folder or training run", positional=True)
    store: str = option(help="store folder with train and validation splits", positional=True)
    target: str = option(help="phenotype column (of the store, or of --targets)")
    out: str = option(help="checkpoint folder to write")
    overwrite: bool = option(False, "replace an existing --out")
    full: bool = option(False, "fine-tune the encoder too (default: frozen)")
    resample_to_model_tr: bool = option(False, RESAMPLE_HELP)


@dataclass(kw_only=True)
class FingerprintOptions(RecordingsOptions):
    """``brainlm fingerprint``: identify subjects from the first half of a recording to the second."""

    out: str = option(help="output folder")
    pooling: str = option("cls", "what a window becomes, or the region correlation of region-time embeddings",
                          choices=(*POOLINGS, "connectivity"))
    keep_regions: bool = option(False, "region_time: compare the (R, D) region embeddings")
    stride: int | None = option(None, "step of the windows inside each half (default: half a window)",
                                check=at_least(1, optional=True))

    def __post_init__(self) -> None:
        super().__post_init__()
        _keep_regions_applies(self)


def _keep_regions_applies(options) -> None:
    """``--keep-regions`` keeps the regions of region-time embeddings; with any other pooling it
    would be ignored, so it is refused."""
    if options.keep_regions and options.pooling != "region_time":
        raise UserError(f"--keep-regions applies to --pooling region_time only, not --pooling {options.pooling}")


@contextmanager
def _claim(path, outputs=(), *, overwrite: bool, file: bool = False):
    """Claim an output (lock, :func:`brainlm.io.claim_file` or ``claim_folder``) on rank 0; its refusal
    is raised on every rank."""
    with ExitStack() as stack:
        def claim():
            if not is_main_process():
                return
            if file:
                claim_file(path, overwrite=overwrite, companions=_companions(Path(path)))
                stack.enter_context(OutputLock(path, what="output file"))
            else:
                stack.enter_context(output_folder(path, outputs, overwrite=overwrite))

        share_errors(claim)
        yield Path(path)


def _companions(path: Path) -> list[Path]:
    """The files written beside an embedding table (an ``.npy``'s index)."""
    return [path.with_suffix(".index.tsv")] if path.suffix.lower() == ".npy" else []


def _store_of(source):
    """The store a command runs on, or None for files."""
    from brainlm.data import open_store

    return open_store(source) if isinstance(source, str) and Path(source).is_dir() else None


def _load(options: RecordingsOptions):
    """The model of ``options.checkpoint`` on this process's device (its own GPU under torchrun)."""
    return load_model(options.checkpoint, map_location=resolve_device(options.device, init_distributed().local_rank),
                      trust_unverified=options.trust_unverified)


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
            model = _load(o)
            emb = embed(model, o.matched(model), split=o.split, coords=o.coords, pooling=o.pooling,
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


def run_reconstruct(options: ReconstructOptions) -> pd.DataFrame | None:
    """Reconstruct every recording; write ``r2_per_region.csv``, ``summary.csv`` (the model and the
    baselines per recording) and plots. Returns the summary (None on ranks other than 0)."""
    o = options
    init_distributed()
    try:
        with _claim(o.out, ["r2_per_region.csv", "summary.csv", "results.json", "report.md", *map_outputs("r2_map")],
                    overwrite=o.overwrite) as out:
            model = _load(o)
            recs = o.matched(model)
            train = training_recordings(o.source)
            baselines = ReconstructionBaselines().fit(x for _, x in train) if train is not None else ReconstructionBaselines()
            result = reconstruct_recordings(model, recs, baselines=baselines,
                                            precision=o.precision, keep=o.plot_recordings, mask_ratio=o.mask_ratio,
                                            window=o.window, cover=not o.single_pass, seed=o.seed)
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
                                    title=f"{rid}: mask ratio {o.mask_ratio}")
            if is_main_process():
                r2 = table.groupby("region", sort=True)["r2"].mean().reindex(range(recs.num_regions)).to_numpy()
                store = _store_of(o.source)
                trs = dict(zip(store.recordings["recording_id"], store.recordings["tr"])) if store is not None else {}
                images = {f"reconstruction_{rid}": (rec.pred, trs.get(rid)) for rid, rec in results.items()} \
                    if o.write_image else None
                for line in write_command_maps(store, out, "reconstruct",
                                               {"r2_map": {"R2 (mean over recordings)": r2}}, series=images,
                                               numbers={"tr": o.tr_notes}):
                    print(line)
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


def run_forecast(options: ForecastOptions) -> pd.DataFrame:
    """Forecast the last k timepoints of each window; write ``forecast_metrics.csv`` and a plot."""
    o = options
    with output_folder(o.out, ["forecast_metrics.csv", "forecast.png", "results.json", "report.md",
                               *map_outputs("forecast_r2_map")], overwrite=o.overwrite) as out:
        model = _load(o)
        recs = o.matched(model)
        train = training_recordings(o.source)
        baselines = ForecastBaselines(order=o.ar_order)
        if train is not None:
            baselines.fit(x for _, x in train)
        result = forecast_recordings(model, recs, o.last, baselines=baselines,
                                     window=o.window, stride=o.stride, precision=o.precision, flag=o.flag("last"))
        write_csv(result.metrics, out / "forecast_metrics.csv")
        plot_forecast(result, out / "forecast.png",
                      title=f"last {o.last} timepoints of {result.index['recording_id'].iloc[0]}")
        err = ((result.preds["brainlm"] - result.true) ** 2).sum((0, 2))
        r2 = 1 - err / np.maximum((result.true.astype(np.float64) ** 2).sum((0, 2)), 1e-12)  # (R,)
        first, store = result.index.iloc[0], _store_of(o.source)
        trs = dict(zip(store.recordings["recording_id"], store.recordings["tr"])) if store is not None else {}
        images = {f"forecast_{first['recording_id']}_{int(first['window_start'])}": (
            np.concatenate([result.context[0], result.preds["brainlm"][0]], axis=1).T, trs.get(first["recording_id"]))} \
            if o.write_image else None
        for line in write_command_maps(store, out, "forecast",
                                       {"forecast_r2_map": {"forecast R2 (brainlm)": r2}}, series=images,
                                       numbers={"tr": o.tr_notes}):
            print(line)
    print(result.metrics.to_string(index=False))
    if train is None:
        print("AR and VAR baselines need a store's train split to be fitted on: pass a store")
    return result.metrics


def run_probe(options: ProbeOptions) -> pd.DataFrame:
    """Probes on embeddings and on the connectivity ladder; write ``probe_metrics.csv``,
    ``probe_predictions.csv``, ``probe_folds.json`` (subjects per fold) and ``missing_subjects.txt``."""
    o = options
    names = ["probe_metrics.csv", "probe_predictions.csv", "probe_folds.json", "missing_subjects.txt", "probe_tr.json"]
    with output_folder(o.out, names, overwrite=o.overwrite) as out:
        model = _load(o)
        recs = o.matched(model)  # the TR lines, and the recordings resampled with --resample-to-model-tr
        data, target, split = o.recordings(), o.target, o.split
        if o.resample_to_model_tr:
            if o.targets is None and isinstance(data, str):  # a store's phenotypes, read from the store itself
                target = load_targets(data, o.target, o.subject_column).rename(o.target)
            data, split = recs, None
        result = probe(model, data, target, targets_file=o.targets,
                       subject_column=o.subject_column, split=split, coords=o.coords, pooling=o.pooling,
                       windows=o.windows, window=o.window, stride=o.stride, fc_baseline=o.fc_baseline, task=o.task,
                       probes=o.probes, n_splits=o.folds, inner_splits=o.inner_folds, n_boot=o.bootstrap,
                       seed=o.seed, precision=o.precision)
        write_csv(result.metrics, out / "probe_metrics.csv")
        write_csv(result.predictions, out / "probe_predictions.csv")
        atomic_write_json(out / "probe_folds.json", result.folds, indent=1)
        atomic_write_json(out / "probe_tr.json", {"tr": o.tr_notes}, indent=1)
        atomic_write_text(out / "missing_subjects.txt", "".join(f"{s}\n" for s in result.missing_subjects))
    if result.missing_subjects:
        print(f"left out (no {o.target!r} target): {', '.join(result.missing_subjects)}")
    print(result.table().to_string())
    return result.metrics


def run_finetune(options: FinetuneOptions) -> pd.DataFrame:
    """Fine-tune and save the best model into ``options.out`` (with ``history.csv``); returns the history."""
    o = options
    config = o.as_base(FinetuneConfig).replace(freeze_encoder=not o.full)
    with output_folder(o.out, ["config.json", "history.csv"], kind="checkpoint", overwrite=o.overwrite) as out:
        result = finetune(o.checkpoint, o.store, o.target, config, targets_file=o.targets,
                          subject_column=o.subject_column, out_dir=out, overwrite=True,
                          trust_unverified=o.trust_unverified, resample_to_model_tr=o.resample_to_model_tr)
        write_csv(result.history, out / "history.csv")
    print(f"best epoch {result.best_epoch}: validation loss {result.history['val_loss'].iloc[result.best_epoch]:.4f} "
          f"(before fine-tuning {result.history['val_loss'].iloc[0]:.4f}); saved {o.out}")
    return result.history


def run_fingerprint(options: FingerprintOptions) -> pd.DataFrame:
    """Subject identification; write ``fingerprint.csv``, ``fingerprint_matches.csv``, ``fingerprint.png``."""
    o = options
    names = ["fingerprint.csv", "fingerprint_matches.csv", "fingerprint.png"]
    with output_folder(o.out, names, overwrite=o.overwrite) as out:
        model = _load(o)
        summary, matches = fingerprint(model, o.matched(model), split=o.split, coords=o.coords,
                                       pooling=o.pooling, keep_regions=o.keep_regions, window=o.window,
                                       stride=o.stride, precision=o.precision, on_error=o.on_error)
        write_csv(summary, out / "fingerprint.csv")
        write_csv(matches, out / "fingerprint_matches.csv")
        plot_fingerprint(summary, out / "fingerprint.png")
    print(summary[["label", "accuracy", "chance", "num_subjects"]].to_string(index=False))
    return summary
