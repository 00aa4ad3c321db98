"""Adapter for the original BrainLM Arrow datasets (``datasets.save_to_disk`` folders).

Their layout: one folder per split holding ``state.json`` and ``data-*.arrow`` (Arrow IPC
streams). Each row is a recording with one column per normalisation
(``Voxelwise_RobustScaler_Normalized_Recording``, ``Raw_Recording``, ...; nested lists,
timepoints x regions), ``Filename``, ``Patient ID`` and possibly phenotype columns; the region
centres are a separate ``Brain_Region_Coordinates`` dataset with ``Index``, ``X``, ``Y``, ``Z``.

The files are read with pyarrow alone (memory-mapped), so the ``datasets`` package is not
needed. The chosen recording column is taken as already normalised: the default
normalisation for these inputs is ``"none"``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from brainlm.errors import MissingInputError

from .atlas import Atlas
from .readers import InputError, Recording

__all__ = ["read_original_dataset", "read_original_coordinates", "original_recordings"]

_ID_COLUMNS = ("Patient ID", "eid", "Filename")


def read_original_dataset(folder: str | Path) -> pa.Table:
    """The rows of one ``save_to_disk`` folder as a (memory-mapped) Arrow table."""
    folder = Path(folder)
    state = folder / "state.json"
    try:
        files = [f["filename"] for f in json.loads(state.read_text())["_data_files"]]
    except FileNotFoundError:
        raise MissingInputError(f"{folder}: not a saved Arrow dataset (no state.json)") from None
    except (json.JSONDecodeError, KeyError) as err:
        raise InputError(f"{state}: unreadable dataset state ({err})") from err
    tables = []
    for name in files:
        try:
            tables.append(ipc.open_stream(pa.memory_map(str(folder / name), "r")).read_all())
        except (OSError, pa.ArrowInvalid) as err:
            raise InputError(f"{folder / name}: unreadable or truncated Arrow file ({err})") from err
    return pa.concat_tables(tables)


def read_original_coordinates(folder: str | Path) -> np.ndarray:
    """``(R, 3)`` float32 region centres from a ``Brain_Region_Coordinates`` dataset."""
    table = read_original_dataset(folder)
    missing = {"X", "Y", "Z"} - set(table.column_names)
    if missing:
        raise InputError(f"{folder}: coordinates dataset lacks columns {sorted(missing)}")
    return np.stack([table.column(c).to_numpy().astype(np.float32) for c in "XYZ"], axis=1)


def _row_array(table: pa.Table, column: str, i: int) -> np.ndarray:
    cell = table.column(column).slice(i, 1).combine_chunks()
    inner = cell.flatten()
    rows = len(inner)
    values = inner.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(rows, -1) if rows else values.reshape(0, 0)


def original_recordings(
    folders: list[Path],
    *,
    coords_dataset: str | Path | None = None,
    recording_column: str = "Voxelwise_RobustScaler_Normalized_Recording",
    tr: float | None = None,
) -> tuple[Atlas, list[tuple[str, Callable[[], Recording]]], str]:
    """Atlas (from the coordinates dataset), one loader per row, and normalisation ``"none"``.

    Args:
        folders: dataset folders (e.g. the original ``train``, ``val``, ``test``); recordings
            are re-split by subject in the store.
        coords_dataset: the coordinates folder; default ``Brain_Region_Coordinates`` next to
            the first dataset folder.
        recording_column: which stored normalisation to take.
        tr: repetition time of the recordings (UK Biobank: 0.735 s), NaN when not given.
    """
    coords_dataset = Path(coords_dataset) if coords_dataset else folders[0].parent / "Brain_Region_Coordinates"
    xyz = read_original_coordinates(coords_dataset)
    atlas = Atlas(name="A424" if len(xyz) == 424 else f"original{len(xyz)}", coords=xyz,
                  region_names=[str(i + 1) for i in range(len(xyz))])
    tasks = []
    for folder in folders:
        table = read_original_dataset(folder)
        if recording_column not in table.column_names:
            raise InputError(f"{folder}: no column {recording_column!r} (has {table.column_names})")
        scalar_cols = [f.name for f in table.schema
                       if not pa.types.is_list(f.type) and not pa.types.is_large_list(f.type)]
        for i in range(table.num_rows):
            tasks.append((f"{folder}#{i}", lambda table=table, i=i, folder=folder:
                          _load_row(table, i, folder, recording_column, scalar_cols, len(xyz), tr)))
    return atlas, tasks, "none"


def _load_row(table, i, folder, column, scalar_cols, num_regions, tr) -> Recording:
    source = f"{folder}#{i}"
    try:
        x = _row_array(table, column, i)
    except (pa.ArrowInvalid, ValueError) as err:
        raise InputError(f"{source}: cannot read {column!r} ({err})") from err
    if x.shape[1] != num_regions and x.shape[0] == num_regions:
        x = x.T  # some columns of the original were stored regions x timepoints
    row = {c: table.column(c)[i].as_py() for c in scalar_cols}
    subject = next((str(row[c]).removesuffix(".dat") for c in _ID_COLUMNS if c in row and row[c] not in (None, "")),
                   f"{folder.name}-{i}")
    phenotypes = {c: v for c, v in row.items() if c not in _ID_COLUMNS}
    return Recording(np.asarray(x, np.float32), subject_id=subject, tr=float(tr) if tr else float("nan"),
                     source=source, phenotypes=phenotypes)
