"""The dataset store: sharded Arrow IPC files, readable with pyarrow alone.

Layout of a store folder (the full schema is in ``docs/store.md``)::

    manifest.json          format, counts, splits, normalisation, file names, shards with sha256
    regions-<fingerprint>.parquet     one row per region: region_index, name, x, y, z
    recordings-<fingerprint>.parquet  one row per recording: IDs, split, shard, row, length, TR, phenotypes
    shards/<split>-<fingerprint>-<n>.arrow
                           Arrow IPC files; column "timeseries" is
                           list<fixed_size_list<float16|float32, R>> (timepoints x regions)

Shards are uncompressed Arrow IPC files so they are memory-mapped: opening a store reads only
the small tables, and a window read touches only its own bytes. Every file is written under a
temporary name and renamed, and the manifest last, so a reader never sees a half-written store.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from brainlm.errors import MissingInputError, UserError

__all__ = ["Store", "open_store", "STORE_FORMAT"]

STORE_FORMAT = "brainlm-store/1"
_ID_COLUMNS = ["recording_id", "subject_id", "session_id", "run_id", "task"]


def _atomic_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def _write_json(path: Path, obj) -> None:
    tmp = _atomic_path(path)
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False))
    os.replace(tmp, path)


def _write_parquet(path: Path, table: pa.Table) -> None:
    tmp = _atomic_path(path)
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _shard_schema(num_regions: int, dtype: str, phenotype_types: dict[str, pa.DataType]) -> pa.Schema:
    value = pa.float16() if dtype == "float16" else pa.float32()
    fields = [pa.field(c, pa.string()) for c in _ID_COLUMNS]
    fields += [
        pa.field("tr", pa.float32()),
        pa.field("num_timepoints", pa.int32()),
        pa.field("atlas", pa.string()),
        pa.field("normalization", pa.string()),
        pa.field("timeseries", pa.list_(pa.list_(value, num_regions))),
    ]
    fields += [pa.field(name, typ) for name, typ in phenotype_types.items()]
    return pa.schema(fields)


class _ShardWriter:
    """Streams recordings of one split into shards of about ``max_bytes`` each.

    Each shard is written to a hidden temporary name and renamed when complete.
    """

    def __init__(self, shard_dir: Path, prefix: str, schema: pa.Schema, *, max_bytes: int, batch_size: int = 32):
        self.shard_dir, self.prefix, self.schema = shard_dir, prefix, schema
        self.max_bytes, self.batch_size = max_bytes, batch_size
        self.value_type = schema.field("timeseries").type.value_type.value_type
        self.num_regions = schema.field("timeseries").type.value_type.list_size
        self.shards: list[dict] = []  # manifest entries of finished shards
        self._rows: list[dict] = []
        self._writer = None
        self._bytes = 0
        self._count = 0

    def add(self, meta: dict, data: np.ndarray) -> tuple[str, int]:
        """Queue one ``(T, R)`` recording; returns ``(shard file name, row in shard)``."""
        if self._writer is None:
            index = len(self.shards)
            self._name = f"{self.prefix}-{index:05d}.arrow"
            self._tmp = _atomic_path(self.shard_dir / self._name)
            self._writer = ipc.new_file(self._tmp, self.schema)
            self._count = 0
            self._bytes = 0
        self._rows.append({**meta, "timeseries": data})
        row = self._count
        self._count += 1
        self._bytes += data.size * (2 if self.value_type == pa.float16() else 4)
        name = self._name
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
            np.float16 if self.value_type == pa.float16() else np.float32
        )
        lengths = np.array([len(s) for s in series])
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        inner = pa.FixedSizeListArray.from_arrays(pa.array(flat), self.num_regions)
        columns = {}
        for f in self.schema:
            if f.name == "timeseries":
                columns[f.name] = pa.ListArray.from_arrays(pa.array(offsets), inner, type=f.type)
            else:
                columns[f.name] = pa.array([r.get(f.name) for r in self._rows], type=f.type)
        self._writer.write_batch(pa.RecordBatch.from_pydict(columns, schema=self.schema))
        self._rows = []

    def _close_shard(self) -> None:
        self._flush()
        self._writer.close()
        final = self.shard_dir / self._name
        os.replace(self._tmp, final)
        self.shards.append(
            {"file": f"shards/{self._name}", "num_recordings": self._count, "bytes": final.stat().st_size, "sha256": _sha256(final)}
        )
        self._writer = None

    def close(self) -> list[dict]:
        if self._writer is not None:
            self._close_shard()
        return self.shards


class _ShardReader:
    """Memory-mapped view of one shard: ``(T, R)`` arrays without copying the file."""

    def __init__(self, path: Path, num_regions: int):
        self._file = pa.memory_map(str(path), "r")
        reader = ipc.open_file(self._file)
        self.values, self.offsets = [], []  # per record batch: flat values, timepoint offsets
        self.locate = []  # row -> (batch, row in batch)
        for b in range(reader.num_record_batches):
            col = reader.get_batch(b).column("timeseries")
            inner = col.values
            # ``.values`` ignores slice offsets, so shift the list offsets by the inner one.
            self.values.append(inner.values.to_numpy(zero_copy_only=True))
            self.offsets.append(col.offsets.to_numpy().astype(np.int64) + inner.offset)
            self.locate += [(b, i) for i in range(len(col))]
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

    def __init__(self, path: str | Path):
        self.path = Path(path)
        manifest_path = self.path / "manifest.json"
        if not manifest_path.is_file():
            raise MissingInputError(f"{self.path}: not a brainlm store (no manifest.json)")
        self.manifest = json.loads(manifest_path.read_text())
        if self.manifest.get("format") != STORE_FORMAT:
            raise UserError(f"{self.path}: unknown store format {self.manifest.get('format')!r}")
        regions = pd.read_parquet(self.path / self.manifest["files"]["regions"])
        self.coords = regions[["x", "y", "z"]].to_numpy(np.float32)
        self.region_names = regions["name"].astype(str).tolist()
        self.recordings = pd.read_parquet(self.path / self.manifest["files"]["recordings"])
        self.normalization = self.manifest["normalization"]
        self.phenotype_columns = list(self.manifest.get("phenotype_columns", []))
        self._shard_of = self.recordings["shard"].to_numpy()
        self._row_of = self.recordings["row"].to_numpy()
        self._readers: dict[str, _ShardReader] = {}
        self._pid = os.getpid()

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
            raise UserError(f"{self.path}: no split {split!r}; has {list(self.manifest['splits'])}")
        return np.flatnonzero(self.recordings["split"].to_numpy() == split)

    def _reader(self, shard: str) -> _ShardReader:
        if os.getpid() != self._pid:  # a forked DataLoader worker maps the files anew
            self._readers, self._pid = {}, os.getpid()
        if shard not in self._readers:
            self._readers[shard] = _ShardReader(self.path / shard, self.num_regions)
        return self._readers[shard]

    def window(self, index: int, start: int, length: int) -> np.ndarray:
        """``(length, R)`` read-only view of recording ``index`` (position in ``recordings``)."""
        return self._reader(self._shard_of[index]).window(int(self._row_of[index]), start, length)

    def get(self, index: int | str) -> np.ndarray:
        """A whole recording as ``(T, R)`` float32, by position or ``recording_id``."""
        if isinstance(index, str):
            hits = np.flatnonzero(self.recordings["recording_id"].to_numpy() == index)
            if len(hits) == 0:
                raise KeyError(index)
            index = int(hits[0])
        return self._reader(self._shard_of[index]).recording(int(self._row_of[index])).astype(np.float32)

    def iter_recordings(self, split: str | None = None):
        """Yield ``(metadata row, (T, R) float32)`` one at a time (streamed, bounded memory)."""
        for i in self.split_index(split):
            yield self.recordings.iloc[i], self.get(int(i))

    def verify(self) -> None:
        """Check every shard against the manifest's sha256; raises ``RuntimeError`` on mismatch."""
        for shard in self.manifest["shards"]:
            if _sha256(self.path / shard["file"]) != shard["sha256"]:
                raise RuntimeError(f"{self.path / shard['file']}: checksum does not match the manifest")

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


def open_store(path: str | Path) -> Store:
    """Open a store written by ``prepare`` (reads only the small tables; shards are mapped lazily)."""
    return Store(path)
