"""The dataset store: sharded Arrow IPC files, readable with pyarrow alone.

Layout of a store folder (the full schema is in ``docs/store.md``)::

    manifest.json          format, counts, splits, normalisation, files, shards with size and sha256
    regions-<fingerprint>.parquet     one row per region: region_index, name, x, y, z
    recordings-<fingerprint>.parquet  one row per recording: IDs, split, shard, row, length, TR, phenotypes
    shards/<split>-<fingerprint>-<n>.arrow
                           Arrow IPC files; column "timeseries" is
                           list<fixed_size_list<float16|float32, R>> (timepoints x regions)

Shards are uncompressed Arrow IPC files so they are memory-mapped: opening a store reads only
the small tables, and a window read touches only its own bytes.

**Integrity.** Every file the manifest lists carries its size and SHA-256, and only files it
lists are read, by paths inside the store (:func:`store_file`, the one rule of the readers and
of ``verify``): a shard the recordings table names but the manifest does not list, or a path
that leads out of the store (``../x``, an absolute path), is refused as corrupt. Each shard is
checked the first time a process opens it: its size always, and its SHA-256 unless this
machine has already verified the same file (same path, size, modification time and inode; the
cache is ``$BRAINLM_CACHE/verified.json``, default ``~/.cache/brainlm``). A damaged, truncated
or replaced file stops the reader with one line naming it. ``Store.verify()`` (``brainlm
verify STORE``) checks every file, ignoring the cache.

The columns of the store are spelled once, in :data:`META_COLUMNS` and :data:`TABLE_COLUMNS`.
"""

from __future__ import annotations

import copy

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc as ipc

from brainlm.errors import CorruptFileError, MissingInputError, UserError
from brainlm.io import atomic_write, read_json, sha256_file, temporary_path, verify_file

__all__ = ["Store", "open_store", "store_file", "listed_files", "STORE_FORMAT", "META_COLUMNS", "TABLE_COLUMNS",
           "ShardWriter", "shard_schema"]

STORE_FORMAT = "brainlm-store/1"
_REBUILD = "rebuild the store with brainlm prepare"
ID_COLUMNS = ("recording_id", "subject_id", "session_id", "run_id", "task")
# Per-recording metadata, in every shard and in the recordings table: name -> Arrow type.
META_COLUMNS: dict[str, pa.DataType] = {
    **{c: pa.string() for c in ID_COLUMNS},
    "tr": pa.float32(),
    "num_timepoints": pa.int32(),
    "atlas": pa.string(),
    "normalization": pa.string(),
}
# The recordings table: the metadata plus where each recording is and where it came from.
TABLE_COLUMNS = [*ID_COLUMNS, "split", "shard", "row", "num_timepoints", "tr", "atlas", "normalization", "source"]
# Names a phenotype column may not take (they get a ``phenotype_`` prefix).
RESERVED_COLUMNS = set(META_COLUMNS) | set(TABLE_COLUMNS) | {"timeseries"}


def shard_schema(num_regions: int, dtype: str, phenotype_types: dict[str, pa.DataType] | None = None,
                 meta: bool = True) -> pa.Schema:
    """Schema of a shard: the metadata columns, ``timeseries`` and the phenotype columns."""
    value = pa.float16() if dtype == "float16" else pa.float32()
    fields = [pa.field(c, t) for c, t in META_COLUMNS.items()] if meta else []
    fields.append(pa.field("timeseries", pa.list_(pa.list_(value, num_regions))))
    fields += [pa.field(name, typ) for name, typ in (phenotype_types or {}).items()]
    return pa.schema(fields)


class ShardWriter:
    """Streams ``(T, R)`` recordings into Arrow IPC shards of about ``max_bytes`` each.

    Each shard is written under a hidden temporary name and renamed when complete;
    :attr:`written` lists the complete files (to remove them if a later step fails).
    """

    def __init__(self, shard_dir: Path, prefix: str, schema: pa.Schema, *, max_bytes: int, batch_size: int = 32):
        self.shard_dir, self.prefix, self.schema = Path(shard_dir), prefix, schema
        self.max_bytes, self.batch_size = max_bytes, batch_size
        self.value_type = schema.field("timeseries").type.value_type.value_type
        self.num_regions = schema.field("timeseries").type.value_type.list_size
        self.shards: list[dict] = []  # manifest entries of finished shards
        self.written: list[Path] = []
        self._rows: list[dict] = []
        self._writer = None
        self._bytes = self._count = 0

    def add(self, meta: dict, data: np.ndarray) -> tuple[str, int]:
        """Queue one ``(T, R)`` recording; returns ``(shard file name, row in shard)``."""
        if self._writer is None:
            self._name = f"{self.prefix}-{len(self.shards):05d}.arrow"
            self._tmp = temporary_path(self.shard_dir / self._name)
            self._writer = ipc.new_file(self._tmp, self.schema)
            self._count = self._bytes = 0
        self._rows.append({**meta, "timeseries": data})
        row, name = self._count, self._name
        self._count += 1
        self._bytes += data.size * (2 if self.value_type == pa.float16() else 4)
        if len(self._rows) >= self.batch_size:
            self._flush()
        if self._bytes >= self.max_bytes:
            self._close_shard()
        return name, row

    def _flush(self) -> None:
        if not self._rows:
            return
        series = [r.pop("timeseries") for r in self._rows]
        flat = np.concatenate([s.reshape(-1) for s in series]).astype(
            np.float16 if self.value_type == pa.float16() else np.float32)
        offsets = np.concatenate([[0], np.cumsum([len(s) for s in series])]).astype(np.int32)
        inner = pa.FixedSizeListArray.from_arrays(pa.array(flat), self.num_regions)
        columns = {f.name: (pa.ListArray.from_arrays(pa.array(offsets), inner, type=f.type) if f.name == "timeseries"
                            else pa.array([r.get(f.name) for r in self._rows], type=f.type)) for f in self.schema}
        self._writer.write_batch(pa.RecordBatch.from_pydict(columns, schema=self.schema))
        self._rows = []

    def _close_shard(self) -> None:
        self._flush()
        self._writer.close()
        final = self.shard_dir / self._name
        os.replace(self._tmp, final)
        self.written.append(final)
        self.shards.append({"file": f"{self.shard_dir.name}/{self._name}", "num_recordings": self._count,
                            "bytes": final.stat().st_size, "sha256": sha256_file(final)})
        self._writer = None

    def close(self) -> list[dict]:
        if self._writer is not None:
            self._close_shard()
        return self.shards

    def abort(self) -> None:
        """Remove everything written so far (a later step failed)."""
        if self._writer is not None:
            self._writer.close()
            self._tmp.unlink(missing_ok=True)
            self._writer = None
        for path in self.written:
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------


def store_file(root: Path, rel: str, entries: dict[str, dict], what: str = "file") -> tuple[Path, dict]:
    """The path of a file of the store ``root`` and its manifest entry: the one rule for reading one.

    A file is read only when the manifest lists it (``entries``: relative path -> ``bytes``,
    ``sha256``) and its relative path stays inside the store.

    Raises:
        CorruptFileError: not listed, or a path that leads out of the store.
    """
    parts = Path(str(rel)).parts
    if not parts or Path(str(rel)).is_absolute() or any(part in ("..", "") for part in parts):
        raise CorruptFileError(f"{root}/manifest.json: the path {rel!r} of a {what} leads out of the store; "
                               "the manifest is damaged or altered")
    if rel not in entries:
        raise CorruptFileError(f"{root / rel}: this {what} is not listed in {root}/manifest.json (damaged or "
                               "altered manifest); rebuild the store with brainlm prepare")
    return root / rel, entries[rel]


def listed_files(manifest: dict) -> dict[str, dict]:
    """Every file a store manifest lists (tables and shards): relative path -> ``bytes``, ``sha256``."""
    entries = {rel: meta for rel, meta in (manifest.get("checksums") or {}).items()}
    entries.update({s["file"]: s for s in manifest.get("shards") or [] if isinstance(s, dict) and "file" in s})
    return entries


class _ShardReader:
    """Memory-mapped view of one verified shard: ``(T, R)`` arrays without copying the file."""

    def __init__(self, path: Path, num_regions: int):
        try:
            self._file = pa.memory_map(str(path), "r")
            reader = ipc.open_file(self._file)
            self.values, self.offsets, self.locate = [], [], []  # per record batch; row -> (batch, row in batch)
            for b in range(reader.num_record_batches):
                col = reader.get_batch(b).column("timeseries")
                inner = col.values
                # ``.values`` ignores slice offsets, so shift the list offsets by the inner one.
                self.values.append(inner.values.to_numpy(zero_copy_only=True))
                self.offsets.append(col.offsets.to_numpy().astype(np.int64) + inner.offset)
                self.locate += [(b, i) for i in range(len(col))]
        except (OSError, pa.ArrowException, KeyError) as err:
            raise CorruptFileError(f"{path}: not a readable store shard ({type(err).__name__}: {err})") from err
        self.num_regions = num_regions

    def window(self, row: int, start: int, length: int) -> np.ndarray:
        """Timepoints ``start:start+length`` of recording ``row``: a ``(length, R)`` view."""
        b, i = self.locate[row]
        t0 = self.offsets[b][i] + start
        R = self.num_regions
        return self.values[b][t0 * R:(t0 + length) * R].reshape(length, R)

    def recording(self, row: int) -> np.ndarray:
        b, i = self.locate[row]
        t0, t1 = self.offsets[b][i], self.offsets[b][i + 1]
        return self.values[b][t0 * self.num_regions:t1 * self.num_regions].reshape(t1 - t0, self.num_regions)


# ---------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------


class Store:
    """A prepared dataset (see ``docs/store.md``). Open with ``open_store(path)``.

    Attributes:
        path: the store folder.
        manifest: the parsed ``manifest.json``.
        recordings: ``pandas.DataFrame``, one row per recording (IDs, ``split``, ``shard``,
            ``row``, ``num_timepoints``, ``tr``, phenotype columns), in store order.
        coords: ``(R, 3)`` float32 region centres (MNI mm).
        region_names: ``R`` names.
        normalization: the fitted normaliser's state (``Normalizer.from_state`` rebuilds it).
        phenotype_columns: names of the phenotype columns of ``recordings``.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        manifest_path = self.path / "manifest.json"
        if not manifest_path.is_file():
            raise MissingInputError(f"{self.path}: not a brainlm store (no manifest.json); build one with brainlm prepare")
        self.manifest = read_json(manifest_path)
        if not isinstance(self.manifest, dict) or self.manifest.get("format") != STORE_FORMAT:
            found = self.manifest.get("format") if isinstance(self.manifest, dict) else None
            raise UserError(f"{self.path}: unknown store format {found!r}")
        missing = [k for k in ("files", "shards", "splits", "normalization") if k not in self.manifest]
        if missing or not all(k in (self.manifest["files"] or {}) for k in ("recordings", "regions")):
            raise CorruptFileError(f"{manifest_path}: incomplete store manifest (no {(missing or ['files'])[0]!r}); "
                                   "rebuild the store with brainlm prepare")
        regions = self._table("regions")
        self.coords = regions[["x", "y", "z"]].to_numpy(np.float32)
        self.region_names = regions["name"].astype(str).tolist()
        self.recordings = self._table("recordings")
        self.normalization = self.manifest["normalization"]
        self.phenotype_columns = list(self.manifest.get("phenotype_columns", []))
        self._shard_of = self.recordings["shard"].to_numpy()
        self._row_of = self.recordings["row"].to_numpy()
        self._entries = {s["file"]: s for s in self.manifest["shards"]}
        for shard in sorted(set(map(str, self._shard_of))):
            store_file(self.path, shard, self._entries, "shard")
        self._readers: dict[str, _ShardReader] = {}
        self._pid = os.getpid()
        self._retime: dict[int, tuple[float, float]] = {}  # recording -> (its TR, the TR it is read at)
        self._last: tuple[int, np.ndarray] | None = None  # the last retimed recording windows were read from

    def _table(self, name: str) -> pd.DataFrame:
        rel = self.manifest["files"][name]
        path, entry = store_file(self.path, rel, self.manifest.get("checksums", {}), f"{name} table")
        verify_file(path, entry, what=f"{name} table", remedy=_REBUILD)
        try:
            return pd.read_parquet(path)
        except Exception as err:  # pyarrow raises several types for damaged files
            raise CorruptFileError(f"{path}: unreadable {name} table ({type(err).__name__}: {err})") from err

    @property
    def num_regions(self) -> int:
        return len(self.region_names)

    @property
    def splits(self) -> dict[str, list[str]]:
        """Split name -> subject IDs (train / validation / test)."""
        return {name: info["subjects"] for name, info in self.manifest["splits"].items()}

    @property
    def atlas(self) -> str:
        return self.manifest["atlas"]

    @property
    def phenotypes(self) -> pd.DataFrame:
        """Phenotype columns per recording, indexed by ``recording_id``."""
        return self.recordings.set_index("recording_id")[self.phenotype_columns]

    def split_index(self, split: str | None) -> np.ndarray:
        """Positions (in ``recordings``) of the recordings of one split (all when None)."""
        if split is None:
            return np.arange(len(self.recordings))
        if split not in self.manifest["splits"]:
            raise UserError(f"{self.path}: no split {split!r} (--split); has {list(self.manifest['splits'])}")
        return np.flatnonzero(self.recordings["split"].to_numpy() == split)

    def resplit(self, assignment: dict[str, str]) -> "Store":
        """The same recordings with subjects reassigned to splits (``subject_id -> split``), in
        memory only (cross-validation folds); every subject of the store must be assigned."""
        subjects = self.recordings["subject_id"].astype(str)
        missing = sorted(set(subjects) - set(assignment))
        if missing:
            raise UserError(f"{self.path}: no split given for subjects {missing[:5]}")
        view = copy.copy(self)
        view.recordings = self.recordings.assign(split=subjects.map(assignment).to_numpy())
        names = sorted(set(assignment.values()) | {"train", "validation", "test"})
        view.manifest = {**self.manifest, "splits": {
            name: {"subjects": sorted({s for s in subjects if assignment[s] == name}),
                   "num_recordings": int((view.recordings["split"] == name).sum())} for name in names}}
        view._readers = {}
        return view

    def retimed(self, target_tr: float, indices) -> "Store":
        """The same store with recordings ``indices`` (positions in ``recordings``) read resampled to
        ``target_tr`` (polyphase, as ``prepare --target-tr``), in memory only; their ``tr`` and
        ``num_timepoints`` say what is read (``--resample-to-model-tr``)."""
        from .normalize import resample_tr

        view = copy.copy(self)
        view.recordings = self.recordings.copy()
        view._retime = dict(self._retime)
        for i in map(int, indices):
            tr = float(self.recordings["tr"].iloc[i])
            view._retime[i] = (tr, float(target_tr))
            length = len(resample_tr(np.zeros((int(self.recordings["num_timepoints"].iloc[i]), 1), np.float32), tr,
                                     target_tr))
            view.recordings.iloc[i, view.recordings.columns.get_loc("tr")] = float(target_tr)
            view.recordings.iloc[i, view.recordings.columns.get_loc("num_timepoints")] = length
        view._readers, view._last = {}, None
        return view

    def _reader(self, shard: str) -> _ShardReader:
        if os.getpid() != self._pid:  # a forked DataLoader worker maps the files anew
            self._readers, self._pid = {}, os.getpid()
        if shard not in self._readers:
            path, entry = store_file(self.path, shard, self._entries, "shard")
            verify_file(path, entry, what="shard", remedy=_REBUILD)
            self._readers[shard] = _ShardReader(path, self.num_regions)
        return self._readers[shard]

    def window(self, index: int, start: int, length: int) -> np.ndarray:
        """``(length, R)`` read-only view of recording ``index`` (position in ``recordings``)."""
        if int(index) in self._retime:  # windows come in order: the last resampled recording is kept
            if self._last is None or self._last[0] != int(index):
                self._last = (int(index), self.get(int(index)))
            return self._last[1][start : start + length]
        return self._reader(self._shard_of[index]).window(int(self._row_of[index]), start, length)

    def get(self, index: int | str) -> np.ndarray:
        """A whole recording as ``(T, R)`` float32, by position or ``recording_id``."""
        if isinstance(index, str):
            hits = np.flatnonzero(self.recordings["recording_id"].to_numpy() == index)
            if len(hits) == 0:
                raise KeyError(index)
            index = int(hits[0])
        x = self._reader(self._shard_of[index]).recording(int(self._row_of[index])).astype(np.float32)
        if int(index) in self._retime:
            from .normalize import resample_tr

            x = resample_tr(x, *self._retime[int(index)])
        return x

    def iter_recordings(self, split: str | None = None):
        """Yield ``(metadata row, (T, R) float32)`` one at a time (streamed, bounded memory)."""
        for i in self.split_index(split):
            yield self.recordings.iloc[i], self.get(int(i))

    def verify(self, progress: bool = False) -> dict:
        """Check every file of the store against the manifest (SHA-256, no cache).

        Returns:
            ``{"files": n, "bytes": total}``. Raises ``CorruptFileError`` naming the first bad file.
        """
        from brainlm.progress import progress as progress_bar

        tables = self.manifest.get("checksums", {})
        entries = [(*store_file(self.path, rel, tables, "table"), "table") for rel in tables]
        entries += [(*store_file(self.path, rel, self._entries, "shard"), "shard") for rel in self._entries]
        for path, meta, what in progress_bar(entries, enabled=progress, desc="verify", unit="file"):
            verify_file(path, meta, use_cache=False, what=what, remedy=_REBUILD)
            if what == "shard":
                _ShardReader(path, self.num_regions)
        return {"files": len(entries), "bytes": sum(int(m.get("bytes", 0)) for _, m, _ in entries)}

    def __len__(self) -> int:
        return len(self.recordings)

    def __getstate__(self):
        # Memory maps are not picklable: DataLoader workers (spawn) reopen them.
        state = self.__dict__.copy()
        state["_readers"] = {}
        return state

    def __repr__(self) -> str:
        counts = {k: v["num_recordings"] for k, v in self.manifest["splits"].items()}
        return f"Store({str(self.path)!r}, atlas={self.atlas!r}, regions={self.num_regions}, recordings={counts})"


def open_store(path: str | os.PathLike) -> Store:
    """Open a store written by ``prepare`` (reads only the small tables; shards are mapped lazily)."""
    return Store(path)


def write_parquet(path: Path, frame: pd.DataFrame) -> dict:
    """Write a table atomically; returns its manifest entry (``bytes``, ``sha256``)."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    import pyarrow.parquet as pq

    atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
