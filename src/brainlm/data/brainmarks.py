"""Adapter for Brainmarks evaluation datasets in A424 space, and Brainmarks' scoring convention.

Brainmarks (``github.com/clane9/Brainmarks``, formerly ``MedARC-AI/fmri-fm-eval``) publishes
each evaluation dataset as a folder written by ``datasets.DatasetDict.save_to_disk``, named
``<dataset>.<space>.arrow`` (``aabc.a424.arrow``, ``hcpya-rest1lr.a424.arrow``,
``abide.a424.arrow`` ...). The layout read here:

* ``dataset_dict.json`` at the top, ``{"splits": ["train", "validation", "test"]}`` (some
  datasets have more splits, e.g. NSD's ``testid``), and one sub-folder per split holding
  ``state.json`` (its ``_data_files`` list), ``dataset_info.json`` and ``data-*.arrow``
  shards (Arrow IPC streams). A bare folder of ``*.arrow`` or ``*.parquet`` shards is read too.
* one row per sample. ``bold``: the time series, timepoints x regions (``Array2D`` of shape
  ``(None, 424)``, float16), each region z-scored over the sample's own timepoints;
  ``mean`` and ``std`` (``(1, 424)`` float32): the statistics that were removed, so
  ``bold * std + mean`` is the parcellated signal (regions with std <= 1e-6 are stored as
  zeros with mean and std 0). ``sub`` (text), ``tr`` (seconds, float32), and depending on the
  dataset ``ses`` or ``visit``, ``run``, ``task``, ``path``, ``start``/``end`` (timepoints
  of the sample in its source run), ``n_frames``, and target columns (``gender``,
  ``age_q`` ..., ``dx``, ``cond_id``, ``category_id``).
* some datasets keep their targets outside the Arrow files, as JSON "target maps" in a
  ``targets`` folder next to the dataset folders: ``<prefix>_target_map_<target>.json``
  mapping subject ID -> label (ADNI keys are ``<PTID>_<YYYY-MM-DD>``, built from ``sub``
  such as ``168S6049`` and ``visit`` such as ``20201012``).
* region ``i`` is A424 label ``i + 1``, the row order of ``A424_Coordinates.dat``.

Contract (the same as ``original.original_recordings``): ``brainmarks_recordings`` returns the
A424 atlas, one ``(source, load)`` pair per sample, and the default normalisation; ``load()``
returns a ``Recording`` with ``(T, 424)`` float32 data, text IDs (leading zeros kept), the TR,
and ``phenotypes`` holding the dataset's targets plus ``brainmarks_split``, the split the
sample belongs to in Brainmarks (``train``, ``validation``, ``test`` ...), and
``brainmarks_index``, its position in that split (the order Brainmarks reads samples in, which
its protocol's random splits depend on). The store keeps these splits (``Source.split_phenotype``)
and keeps regions stored as zeros (``Source.keep_flat_regions``). Because the stored values are
z-scored per sample, the loaders undo that by default (``bold * std + mean``, the same first
step as Brainmarks' own BrainLM transform) and the default normalisation is ``"robust"``, the
one our models are trained with. It is *not* Brainmarks' BrainLM transform (``robust`` also
removes each recording's mean and fits on a sample of timepoints, and neither divides by 5.643
nor resamples): ``--normalization brainmarks-brainlm`` is (see
:mod:`brainlm.data.normalize`). ``unscale=False`` keeps the stored z-scores and makes the
default ``"none"``.

Brainmarks' evaluation conventions (target bins, scores) are :mod:`brainlm.evaluate.brainmarks`'s.

Everything is read with pyarrow alone (memory-mapped); the ``datasets`` package is not needed.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import ipc

from brainlm.errors import InputError

from .atlas import Atlas, load_atlas
from .readers import Recording

__all__ = [
    "BRAINMARKS_SPLIT",
    "BRAINMARKS_INDEX",
    "brainmarks_splits",
    "read_brainmarks_split",
    "read_target_maps",
    "brainmarks_recordings",
]

A424_REGIONS = 424
BRAINMARKS_SPLIT = "brainmarks_split"  # phenotype holding the sample's Brainmarks split
BRAINMARKS_INDEX = "brainmarks_index"  # phenotype holding the sample's position in its split
_SPLIT_ORDER = ("train", "validation", "test")
# Columns that become Recording fields (or are bookkeeping), not phenotypes.
_NOT_PHENOTYPES = {"sub", "ses", "visit", "run", "task", "tr", "bold", "mean", "std", "path", "n_frames"}
_SESSION_COLUMNS = ("ses", "visit")


# --------------------------------------------------------------------------- layout

def _data_files(folder: Path) -> list[Path]:
    """Shards of one split folder: ``state.json``'s list, else every ``*.arrow`` / ``*.parquet``."""
    state = folder / "state.json"
    if state.is_file():
        try:
            names = [f["filename"] for f in json.loads(state.read_text())["_data_files"]]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise InputError(f"{state}: unreadable dataset state ({type(err).__name__}: {err})") from err
        files = [folder / n for n in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise InputError(f"{folder}: data files listed in state.json are missing: {missing}")
        return files
    return sorted(folder.glob("*.arrow")) or sorted(folder.glob("*.parquet"))


def _is_split_folder(folder: Path) -> bool:
    return folder.is_dir() and bool((folder / "state.json").is_file() or _data_files(folder))


def brainmarks_splits(path: str | Path) -> dict[str, Path]:
    """Split name -> split folder of a Brainmarks dataset.

    ``path`` is a dataset folder (``<dataset>.a424.arrow`` with ``dataset_dict.json``, or
    without it but with split sub-folders) or one split folder (its name is the split).
    Splits come in the order of ``dataset_dict.json``, else train, validation, test, then
    any others by name.
    """
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: Brainmarks dataset folder not found")
    listing = path / "dataset_dict.json"
    if listing.is_file():
        try:
            names = json.loads(listing.read_text())["splits"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise InputError(f"{listing}: unreadable split list ({type(err).__name__}: {err})") from err
        missing = [n for n in names if not (path / n).is_dir()]
        if missing:
            raise InputError(f"{listing}: lists split folders that are missing: {missing}")
        return {str(n): path / n for n in names}
    if _is_split_folder(path):
        return {path.name: path}
    subs = [p for p in path.iterdir() if _is_split_folder(p)]
    if not subs:
        raise InputError(f"{path}: no Brainmarks data (no dataset_dict.json, no split folders, no *.arrow files)")
    rank = {n: i for i, n in enumerate(_SPLIT_ORDER)}
    subs.sort(key=lambda p: (rank.get(p.name, len(rank)), p.name))
    return {p.name: p for p in subs}


def _read_file(path: Path) -> pa.Table:
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path, memory_map=True)
        source = pa.memory_map(str(path), "r")
        try:
            return ipc.open_stream(source).read_all()  # what save_to_disk writes
        except pa.ArrowInvalid:
            source.seek(0)
            return ipc.open_file(source).read_all()
    except (OSError, pa.ArrowInvalid) as err:
        raise InputError(f"{path}: unreadable or truncated Arrow/Parquet file ({err})") from err


def read_brainmarks_split(folder: str | Path) -> list[tuple[Path, pa.Table]]:
    """The shards of one split folder, each as ``(file, memory-mapped table)``, schema checked."""
    folder = Path(folder)
    files = _data_files(folder)
    if not files:
        raise InputError(f"{folder}: no data files (state.json, *.arrow or *.parquet)")
    out = []
    for f in files:
        table = _read_file(f)
        _check_schema(f, table.schema)
        out.append((f, table))
    return out


def _storage_type(t: pa.DataType) -> pa.DataType:
    return t.storage_type if isinstance(t, pa.ExtensionType) else t


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _declared_shape(field: pa.Field) -> list | None:
    """Shape of a ``datasets`` ``Array2D`` column, from its type or its extension metadata."""
    shape = getattr(field.type, "shape", None)
    if shape is not None:
        return list(shape)
    meta = (field.metadata or {}).get(b"ARROW:extension:metadata")
    try:
        return list(json.loads(meta)[0]) if meta else None
    except (ValueError, TypeError, IndexError):
        return None


def _check_schema(path: Path, schema: pa.Schema) -> None:
    names = schema.names
    for col in ("sub", "bold"):
        if col not in names:
            raise InputError(f"{path}: no column {col!r} (has {names}); not a Brainmarks dataset")
    for col in ("bold", "mean", "std"):
        if col not in names:
            continue
        field = schema.field(col)
        storage = _storage_type(field.type)
        if not (_is_list(storage) and _is_list(storage.value_type)):
            raise InputError(f"{path}: column {col!r} should be a 2D array (timepoints x regions), is {field.type}")
        shape = _declared_shape(field)
        if shape and len(shape) == 2 and shape[1] not in (None, A424_REGIONS):
            raise InputError(f"{path}: column {col!r} has {shape[1]} regions, the A424 atlas has {A424_REGIONS} "
                             f"(is this the a424 space of the dataset?)")


def _cell_2d(table: pa.Table, column: str, i: int) -> np.ndarray:
    cell = table.column(column).slice(i, 1).combine_chunks()
    if isinstance(cell, pa.ExtensionArray):  # the datasets package registers its Array2D type
        cell = cell.storage
    if cell.null_count:
        raise ValueError("the value is missing")
    rows = cell.flatten()
    if len(rows) == 0:
        return np.zeros((0, 0), np.float32)
    lengths = pc.list_value_length(rows).to_numpy(zero_copy_only=False)
    if rows.null_count or (lengths != lengths[0]).any():
        raise ValueError(f"ragged rows (lengths {sorted(set(lengths.tolist()))[:5]})")
    return rows.flatten().to_numpy(zero_copy_only=False).reshape(len(rows), int(lengths[0]))


# --------------------------------------------------------------------------- targets

def _dataset_prefix(root: Path) -> str:
    # "aabc.a424.arrow" -> "aabc"; "hcpya-rest1lr.a424.arrow" -> "hcpya"
    return re.split(r"[.\-]", root.name, maxsplit=1)[0].lower()


def read_target_maps(paths: Iterable[str | Path], *, prefix: str | None = None) -> dict[str, dict]:
    """Target maps (``{target: {key: label}}``) from JSON files or folders of them.

    A folder contributes its ``<prefix>_target_map_*.json`` files (all ``*_target_map_*.json``
    when ``prefix`` is None); a file is taken as given. The target name is the part of the file
    name after ``_target_map_`` (the stem when absent). Null labels are dropped.
    """
    start = f"{prefix.lower()}_target_map_" if prefix else None
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(q for q in p.iterdir() if q.is_file() and q.suffix == ".json" and (
                q.name.lower().startswith(start) if start else "_target_map_" in q.name))
        elif p.is_file():
            files.append(p)
        else:
            raise InputError(f"{p}: target map file or folder not found")
    maps: dict[str, dict] = {}
    for f in dict.fromkeys(files):
        name = f.stem.split("_target_map_", 1)[1] if "_target_map_" in f.stem else f.stem
        try:
            content = json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputError(f"{f}: unreadable target map ({type(err).__name__}: {err})") from err
        if not isinstance(content, dict):
            raise InputError(f"{f}: a target map must be a JSON object (subject ID -> label), got {type(content).__name__}")
        if name in maps:
            raise InputError(f"{f}: a second target map named {name!r}")
        maps[name] = {str(k): v for k, v in content.items()
                      if v is not None and not (isinstance(v, float) and np.isnan(v))}
    return maps


def _adni_key(sub: str, visit: str) -> str | None:
    # sub "168S6049" + visit "20201012" -> "168_S_6049_2020-10-12" (ADNI's target map keys)
    m, d = re.fullmatch(r"(\d+)S(\d+)", sub), re.fullmatch(r"(\d{4})(\d{2})(\d{2})", visit)
    return f"{m[1]}_S_{m[2]}_{d[1]}-{d[2]}-{d[3]}" if m and d else None


def _map_label(mapping: dict, sub: str, session: str):
    if sub in mapping:
        return mapping[sub]
    key = _adni_key(sub, session)
    return mapping.get(key) if key else None


# --------------------------------------------------------------------------- adapter

def _text(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v)


def _column_values(table: pa.Table, column: str) -> list:
    values = table.column(column).to_pylist()
    t = _storage_type(table.schema.field(column).type)
    if pa.types.is_float32(t) or pa.types.is_float16(t):  # 0.72 rather than 0.7200000286
        values = [None if v is None else float(str(np.float32(v))) for v in values]
    return values


def _scalar_columns(schema: pa.Schema) -> list[str]:
    return [f.name for f in schema if not _is_list(_storage_type(f.type))
            and not pa.types.is_struct(_storage_type(f.type))]


def brainmarks_recordings(inputs: Sequence[str | Path], *, targets: str | Path | Sequence[str | Path] | bool | None = None,
                          unscale: bool = True, tr: float | None = None,
                          ) -> tuple[Atlas, list[tuple[str, Callable[[], Recording]]], str]:
    """A424 atlas, one loader per Brainmarks sample, and the default normalisation.

    Args:
        inputs: Brainmarks A424 dataset folders (``<dataset>.a424.arrow``) or single split
            folders of them. All splits are read; each sample's Brainmarks split is kept as the
            ``brainmarks_split`` phenotype (the store still makes its own subject split).
        targets: where the JSON target maps are: folders (their ``<prefix>_target_map_*.json``
            files, ``<prefix>`` being the dataset name before the first ``.`` or ``-``, e.g.
            ``aabc``) and/or files. None: the ``targets`` folders next to and inside each
            dataset folder, when present. False: none. Each map becomes a phenotype named by
            the target (``sex``, ``age_open`` ...), looked up by ``sub`` (or ADNI's
            ``PTID_SCANDATE``); missing labels are None. Where a column of the same name
            exists, the column wins and the map's label is stored as ``<target>_map``.
        unscale: undo the per-sample z-scoring (``bold * std + mean``) and return
            ``"robust"`` as default normalisation; False keeps the stored z-scores and
            returns ``"none"``.
        tr: TR in seconds for data without a ``tr`` column (NaN when neither is given).

    Returns:
        ``(atlas, [(source, load), ...], default_normalization)``. ``source`` is
        ``<shard file>#<row>``. ``load()`` returns a ``Recording``: ``data`` ``(T, 424)``
        float32; ``subject_id`` = ``sub`` (text as stored, so leading zeros stay); ``session_id`` = ``ses`` or ``visit``; ``run_id`` =
        ``run``, with ``s<start>`` (or ``n<position>`` when that is not enough) appended
        when several samples share subject, session, task and run (clip datasets), so
        recording IDs are unique; ``task`` = ``task``; ``tr`` = ``tr``; ``phenotypes`` = the
        other scalar columns except ``path`` and ``n_frames`` (``path`` is the sample's
        source file in Brainmarks), the target maps, ``brainmarks_split`` and ``brainmarks_index``.

    Raises:
        InputError: a missing folder or data file, an unreadable file or target map, a
            missing ``sub``/``bold``/``mean``/``std`` column, a region count other than 424
            (checked from the schema here, and per sample in ``load()``), ragged or missing
            ``bold`` values. Messages start with the file or folder.
    """
    atlas = load_atlas("A424")
    if atlas.num_regions != A424_REGIONS:  # pragma: no cover - bundled file
        raise InputError(f"bundled A424 atlas has {atlas.num_regions} regions, expected {A424_REGIONS}")

    rows: list[dict] = []  # one entry per sample; IDs resolved before any loader runs
    for given in map(Path, inputs):
        splits = brainmarks_splits(given)
        root = given.parent if splits == {given.name: given} else given  # a single split folder was given
        maps = _target_maps(root, targets)
        for split, folder in splits.items():
            position = 0
            for file, table in read_brainmarks_split(folder):
                new = _sample_rows(file, table, split, maps, unscale, tr, start=position)
                position += len(new)
                rows += new
    _make_unique(rows)

    tasks = [(f"{r['file']}#{r['i']}", lambda r=r: _load(r, f"{r['file']}#{r['i']}", unscale)) for r in rows]
    return atlas, tasks, ("robust" if unscale else "none")


def _target_maps(root: Path, targets) -> dict:
    """The target maps of a dataset: ``targets`` as given, or the ``targets`` folders beside and inside it."""
    if targets is False:
        return {}
    if targets is None or targets is True:
        found = [d for d in (root.parent / "targets", root / "targets") if d.is_dir()]
        return read_target_maps(found, prefix=_dataset_prefix(root))
    items = [targets] if isinstance(targets, (str, Path)) else list(targets)
    return read_target_maps(items, prefix=_dataset_prefix(root))


def _sample_rows(file, table, split: str, maps: dict, unscale: bool, tr: float | None, start: int) -> list[dict]:
    """One entry per sample of a split file: its IDs, TR and phenotypes (the target maps', its split and
    its position in the split, counted from ``start``)."""
    if unscale:
        for col in ("mean", "std"):
            if col not in table.column_names:
                raise InputError(f"{file}: no column {col!r} to undo the z-scoring (has "
                                 f"{table.column_names}); pass unscale=False to keep the stored values")
    scalars = _scalar_columns(table.schema)
    values = {c: _column_values(table, c) for c in scalars}
    session_col = next((c for c in _SESSION_COLUMNS if c in values), None)
    rows = []
    for i in range(table.num_rows):
        sub = _text(values["sub"][i])
        if not sub:
            raise InputError(f"{file}#{i}: empty subject ID ('sub')")
        session = _text(values[session_col][i]) if session_col else ""
        pheno = {c: values[c][i] for c in scalars if c not in _NOT_PHENOTYPES}
        for name, mapping in maps.items():
            pheno[f"{name}_map" if name in pheno else name] = _map_label(mapping, sub, session)
        pheno[BRAINMARKS_SPLIT], pheno[BRAINMARKS_INDEX] = split, start + i
        row_tr = values["tr"][i] if "tr" in values else None
        rows.append({
            "file": file, "table": table, "i": i, "split": split, "subject_id": sub, "session_id": session,
            "task": _text(values["task"][i]) if "task" in values else "",
            "run_id": _text(values["run"][i]) if "run" in values else "",
            "start": values["start"][i] if "start" in values else None,
            "tr": float(row_tr) if row_tr is not None else (float(tr) if tr else float("nan")),
            "phenotypes": pheno,
        })
    return rows


def _key(r: dict) -> tuple:
    return r["subject_id"], r["session_id"], r["task"], r["run_id"]


def _make_unique(rows: list[dict]) -> None:
    """Extend ``run_id`` where samples would otherwise share a recording ID.

    First with the sample's start timepoint (``s<start>``), then, for any still shared, with
    its position among all samples (``n<k>``), which is unique.
    """
    counts = Counter(_key(r) for r in rows)
    for r in rows:
        if counts[_key(r)] > 1 and r["start"] is not None:
            r["run_id"] = f"{r['run_id']}s{_text(r['start'])}"
    counts = Counter(_key(r) for r in rows)
    for k, r in enumerate(rows):
        if counts[_key(r)] > 1:
            r["run_id"] = f"{r['run_id']}n{k}"


def _load(r: dict, source: str, unscale: bool) -> Recording:
    table, i = r["table"], r["i"]
    try:
        x = _cell_2d(table, "bold", i)
    except (pa.ArrowInvalid, ValueError) as err:
        raise InputError(f"{source}: cannot read 'bold' ({err})") from err
    if x.ndim != 2 or x.shape[0] == 0:
        raise InputError(f"{source}: 'bold' is empty (shape {x.shape})")
    if x.shape[1] != A424_REGIONS:
        raise InputError(f"{source}: 'bold' has {x.shape[1]} regions (shape {x.shape}, timepoints x regions), "
                         f"the A424 atlas has {A424_REGIONS}")
    x = x.astype(np.float32)
    if unscale:
        stats = {}
        for col in ("mean", "std"):
            try:
                stats[col] = _cell_2d(table, col, i).astype(np.float32)
            except (pa.ArrowInvalid, ValueError) as err:
                raise InputError(f"{source}: cannot read {col!r} ({err})") from err
            if stats[col].shape != (1, A424_REGIONS):
                raise InputError(f"{source}: {col!r} has shape {stats[col].shape}, expected (1, {A424_REGIONS})")
        x = x * stats["std"] + stats["mean"]
    return Recording(np.ascontiguousarray(x, np.float32), subject_id=r["subject_id"], session_id=r["session_id"],
                     run_id=r["run_id"], task=r["task"], tr=r["tr"], source=source, phenotypes=dict(r["phenotypes"]))
