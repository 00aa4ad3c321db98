"""One way in for every kind of model folder, and the data it is applied to.

``load_model(path_or_id)`` accepts the folders below and returns a model with the interface
both model kinds share (``num_regions``, ``window_length``, ``num_tokens``, ``embed``,
``reconstruct``, ``forecast``, ``cls_attention``), so nothing downstream asks which kind it has:

- our checkpoint folders (``config.json`` with ``model_type: brainlm`` + ``model.safetensors``),
  including fine-tuned folders written by :func:`brainlm.downstream.save_finetuned` (the
  encoder is loaded, with a LoRA ``adapter/`` folded into its weights; the head is read by
  :func:`brainlm.downstream.load_finetuned`);
- original BrainLM checkpoint folders (``model_type: brainlm_mae``);
- released ViT-MAE folders (``model_type: vit_mae``);
- Hugging Face hub ids of any of these, such as ``vandijklab/brainlm/vitmae_111M`` (they need
  the network or the local hub cache; :func:`brainlm.hub.resolve_checkpoint`);
- training run folders: ``RUN/best/`` when present, else the newest ``RUN/checkpoints/step_*``.

``open_recordings(data, ...)`` accepts a store (path or ``Store``), a list of parcellated
time-series files (those ``prepare`` reads, with a coordinate file), or arrays in memory
(``(N, T, R)``, or a list of ``(T, R)`` of any lengths, with coordinates). Files and arrays are
used as given: they must already be normalised the way the model's training data was (run
``brainlm prepare`` to get the same normalisation as a store). They pass the checks ``prepare``
makes (:mod:`brainlm.data.validate`: real, finite, no constant region, the coordinates' region
count, unique recording IDs): a bad file is skipped with one line naming it, or stops the
command with ``on_error="raise"``; a bad array always stops it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from brainlm.errors import MissingInputError, UserError
from brainlm.hub import find_initial, open_model, resolve_model_folder

__all__ = [
    "load_model",
    "Initial",
    "load_initial",
    "match_store_tr",
    "RESAMPLE_HELP",
    "resolve_model_folder",
    "check_regions",
    "check_layout",
    "Recordings",
    "open_recordings",
    "training_recordings",
]

def _as_tensor(a) -> torch.Tensor:
    """A float32 tensor from a tensor or array; arrays are copied (store views are read-only)."""
    if torch.is_tensor(a):
        return a.detach().float()
    return torch.from_numpy(np.array(a, dtype=np.float32))


def load_model(path_or_id: str | os.PathLike, map_location: str | torch.device = "cpu", *,
               trust_unverified: bool = False) -> nn.Module:
    """Load any supported model folder, run or hub id, in eval mode: :func:`brainlm.hub.open_model`.

    Args:
        trust_unverified: use a folder that no complete ``manifest.json`` verifies (``--trust-unverified``).

    Returns:
        ``BrainLMForPretraining`` (ours, original, fine-tuned encoder, run folder) or
        ``BrainLMViTMAE`` (released ViT-MAE).
    """
    return open_model(path_or_id, map_location=map_location, trust_unverified=trust_unverified)


def check_finite(model: nn.Module, values: torch.Tensor, what: str) -> None:
    """Stop with one line when a model's outputs hold NaN or inf (checked on every batch, so the
    first one stops it): damaged weights, a config that breaks the model, or a precision it overflows."""
    if not bool(torch.isfinite(values).all()):
        raise UserError(f"{getattr(model, 'source', 'the model')}: the model's {what} hold NaN or inf values (its "
                        "weights or config.json are broken, or the precision overflows: try --precision fp32)")


@dataclass
class Initial:
    """The same model before any training step, and how it was initialised.

    Attributes:
        model: the model at initialisation, in eval mode on the trained model's device.
        kind: ``connectivity``, ``normal``, ``checkpoint`` (the run's ``RUN/init``), or
            ``unknown`` (no training record: the same architecture freshly initialised).
        description: how reports name it.
        path: ``RUN/init`` when the run kept it.
    """

    model: nn.Module
    kind: str
    description: str
    path: Path | None = None

    def to_dict(self) -> dict:
        return {"kind": self.kind, "description": self.description, "path": str(self.path) if self.path else None}


_INIT_KINDS = {
    "connectivity": "region tables from the training split's covariance (region_embedding_init=connectivity), "
                    "everything else at random",
    "normal": "the model's random initialisation (region_embedding_init=normal)",
}


def load_initial(path_or_id: str | os.PathLike, model: nn.Module, *, seed: int = 0) -> Initial:
    """The model ``path_or_id`` holds, as it was before training: what initialisation alone gives.

    A training run keeps it in ``RUN/init/`` (:func:`brainlm.hub.find_initial`); a folder outside
    a run (a saved, released or fine-tuned model) has no record of its initialisation, so the same
    architecture is initialised afresh (seeded) and named as such.
    """
    device = next(model.parameters()).device
    folder, record = find_initial(path_or_id) if Path(path_or_id).exists() else (None, {})
    if folder is not None:
        kind = str(record.get("kind", "unknown"))
        text = _INIT_KINDS.get(kind) or (f"the checkpoint it was fine-tuned from ({record.get('source')})"
                                         if kind == "checkpoint" else f"initialisation {kind!r}")
        return Initial(load_model(folder, map_location=device).eval(), kind,
                       f"{text}, seed {record.get('seed')} ({folder})", folder)
    torch.manual_seed(seed)
    fresh = type(model).from_config(model.config) if hasattr(type(model), "from_config") else type(model)(model.config)
    return Initial(fresh.to(device).eval(), "unknown",
                   f"no training record beside {path_or_id}: the same architecture at a fresh random "
                   f"initialisation (seed {seed}), which need not be how it was initialised")


def check_regions(model: nn.Module, num_regions: int, what: str = "the data") -> None:
    """Raise ``ValueError`` naming both counts when the model and the data disagree on R."""
    expected = int(model.num_regions)
    if expected != int(num_regions):
        raise UserError(
            f"region mismatch: the model was trained on {expected} regions but {what} has {num_regions}; "
            "use data parcellated with the model's atlas"
        )


@dataclass
class Recordings:
    """Recordings to run a model on, from a store or from files.

    Attributes:
        coords: ``(R, 3)`` float32 region centres.
        meta: one dict per recording (``recording_id``, ``subject_id``, ``session_id``, ``run_id``).
        load: ``load(i)`` returns recording ``i`` as ``(T, R)`` float32.
        source: where they come from, for messages.
    """

    coords: np.ndarray
    meta: list[dict]
    load: Callable[[int], np.ndarray]
    source: str
    region_names: list[str] | None = None
    skipped: list[dict] = field(default_factory=list)  # files not used: source and reason
    trs: list[float] | None = None  # repetition time of each recording (s; NaN unknown), when known

    @property
    def num_regions(self) -> int:
        return len(self.coords)

    def __len__(self) -> int:
        return len(self.meta)

    def __iter__(self) -> Iterator[tuple[dict, np.ndarray]]:
        for i, m in enumerate(self.meta):
            yield m, self.load(i)

    def subset(self, subject_ids) -> "Recordings":
        """The recordings of the given subjects only (in the original order)."""
        wanted = {str(s) for s in subject_ids}
        return self.rows([i for i, m in enumerate(self.meta) if m["subject_id"] in wanted])

    def rows(self, indices) -> "Recordings":
        """The recordings at ``indices``, in that order."""
        keep, load = [int(i) for i in indices], self.load
        return Recordings(self.coords, [self.meta[i] for i in keep], lambda i: load(keep[i]),
                          f"{self.source} ({len(keep)} recordings)", self.region_names,
                          trs=None if self.trs is None else [self.trs[i] for i in keep])


def open_recordings(
    data, split: str | None = None, coords: str | os.PathLike | np.ndarray | None = None, *,
    on_error: str = "skip", max_abs: float | None = None, orientation: str = "auto", mat_key: str | None = None,
    subject_id: str | None = None,
) -> Recordings:
    """Recordings of a store (optionally one split) or of parcellated time-series files.

    Args:
        data: a ``Recordings`` (returned as is), a ``Store``, a store folder, a list of files (``.npy``/``.csv``/``.tsv``/``.mat``/
            ``.parquet``, timepoints x regions or regions x timepoints), or arrays: ``(N, T, R)``
            or a list of ``(T, R)`` (recording ``i`` gets the id ``str(i)``).
        split: store split (``train``/``validation``/``test``); None for all. Not used for files.
        coords: for files and arrays: a coordinate file (as ``prepare --coords``) or an ``(R, 3)`` array.
        on_error: a file that fails the checks of ``prepare`` is skipped (``"skip"``, listed in
            ``Recordings.skipped``) or stops (``"raise"``); arrays always raise.
        max_abs: the largest magnitude a value may have (float16 inference: 65504).
        orientation, mat_key, subject_id: how a file is read, as ``prepare``'s ``--orientation``,
            ``--mat-key`` and ``--subject-id``.

    Returns:
        ``Recordings``.

    Raises:
        MissingInputError: a store folder or file that does not exist.
        UserError / InputError: no coordinates for files or arrays, a bad array, no usable file.
    """
    from brainlm.data import Store, open_store

    if isinstance(data, Recordings):
        return data
    if isinstance(data, (str, os.PathLike)) and Path(data).is_dir():
        data = open_store(data)
    if isinstance(data, Store):
        return _store_recordings(data, split)
    arrays = isinstance(data, np.ndarray) or (isinstance(data, (list, tuple)) and len(data) > 0
                                              and all(isinstance(a, np.ndarray) for a in data))
    files = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    if not files:
        raise UserError("no recordings given")
    if not arrays:
        for f in files:
            if not Path(f).exists():
                raise MissingInputError(f"{f}: no such store folder or time-series file")
    xyz = _coordinates(coords)
    if arrays:
        return _array_recordings(list(data) if isinstance(data, np.ndarray) else data, xyz, max_abs)
    from brainlm.data import InputOptions

    return _file_recordings(files, xyz, on_error, max_abs, InputOptions(orientation=orientation, mat_key=mat_key,
                                                                                subject_id=subject_id))


def _store_recordings(store, split: str | None) -> Recordings:
    idx = store.split_index(split)
    cols = ["recording_id", "subject_id", "session_id", "run_id"]
    meta = [{c: str(v) for c, v in row.items()} for row in store.recordings.iloc[idx][cols].to_dict("records")]
    return Recordings(store.coords.astype(np.float32), meta, lambda i: store.get(int(idx[i])), str(store.path),
                      list(store.region_names), trs=[float(t) for t in store.recordings["tr"].iloc[idx]])


def _coordinates(coords) -> np.ndarray:
    """``(R, 3)`` float32 region centres from ``--coords`` (a file) or an array; required for files and arrays."""
    if coords is None:
        raise UserError("time-series files need region coordinates: pass --coords")
    if isinstance(coords, (str, os.PathLike)):
        from brainlm.data import read_coordinates

        coords = read_coordinates(coords)[0]
    xyz = np.asarray(coords, dtype=np.float32)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise UserError(f"--coords must give (R, 3) coordinates, got shape {xyz.shape}")
    if not np.isfinite(xyz).all():
        raise UserError(f"--coords: {int((~np.isfinite(xyz).all(1)).sum())} regions have non-finite coordinates")
    return xyz


def check_layout(arrays: Sequence[np.ndarray], num_regions: int, what: str = "the coordinates") -> None:
    """Raise ``UserError`` unless every array is ``(T, num_regions)``; say so when one looks transposed."""
    for i, a in enumerate(arrays):
        if a.ndim != 2 or a.shape[1] != num_regions:
            hint = "; it looks like (R, T): transpose it to (T, R)" if a.ndim == 2 and a.shape[0] == num_regions else ""
            raise UserError(f"recording {i} has shape {a.shape}, but {what} expect (T, {num_regions}) "
                            f"(timepoints x regions){hint}")


def _array_recordings(arrays: list[np.ndarray], xyz: np.ndarray, max_abs: float | None) -> Recordings:
    from brainlm.data.validate import check_recording

    check_layout(arrays, len(xyz))
    for i, a in enumerate(arrays):
        check_recording(a, f"recording {i}", num_regions=len(xyz), max_abs=max_abs)
    meta = [{"recording_id": str(i), "subject_id": str(i), "session_id": "", "run_id": ""} for i in range(len(arrays))]
    return Recordings(xyz, meta, lambda i: np.asarray(arrays[i], dtype=np.float32), f"{len(arrays)} arrays")


def _file_recordings(files: Sequence, xyz: np.ndarray, on_error: str, max_abs: float | None, options) -> Recordings:
    """The files that pass the checks of ``prepare`` (one reading of each); they are read again when used."""
    from brainlm.data import Atlas
    from brainlm.data.sources import timeseries_source
    from brainlm.data.validate import no_usable_recordings, read_checked

    atlas = Atlas(name="coords", coords=xyz, region_names=[str(i) for i in range(len(xyz))])
    source = timeseries_source(list(files), atlas, options)
    skipped: list[dict] = []
    kept = [(k, rec) for k, rec, _ in read_checked(source, skipped, on_error=on_error, max_abs=max_abs, unique=True)]
    if not kept:
        raise no_usable_recordings(len(source.items), skipped)
    meta = [{"recording_id": rec.recording_id, "subject_id": rec.subject_id, "session_id": rec.session_id,
             "run_id": rec.run_id} for _, rec in kept]
    loads = [source.items[k][1] for k, _ in kept]
    return Recordings(xyz, meta, lambda i: np.ascontiguousarray(loads[i]().data, dtype=np.float32),
                      f"{len(kept)} files", skipped=skipped, trs=[float(rec.tr) for _, rec in kept])


TR_TOLERANCE = 0.10  # a recording's TR further than this from the model's (relative) is said, or resampled
# --resample-to-model-tr, on every command that runs a model on recordings
RESAMPLE_HELP = ("resample recordings whose TR is more than 10% from the TR the model was trained on to that TR "
                 "(polyphase, as prepare --target-tr); said either way")


def model_trs(model) -> list[float]:
    """The repetition times (s) the model was trained on, as training records them in its config
    (``training_tr``); empty for models that do not record them (the released checkpoints)."""
    extra = getattr(getattr(model, "config", None), "extra", None) or {}
    return [float(t) for t in extra.get("training_tr", []) if np.isfinite(float(t))]


def _tr_plan(model, trs, source: str, resample: bool) -> tuple[float | None, np.ndarray, list[str]]:
    """What :func:`match_model_tr` and :func:`match_store_tr` do: the model's TR (None when it
    records none), the positions more than 10% off it (to resample), and the lines to say."""
    trs = np.asarray(trs, float)
    known = trs[np.isfinite(trs)]
    lines = []
    distinct = np.unique(np.round(known, 4))
    if len(distinct) > 1:
        lines.append(f"{source}: recordings of {len(distinct)} TRs ({', '.join(f'{t:g}' for t in distinct[:6])} "
                     "s) mixed")
    target = model_trs(model)
    none = np.zeros(0, np.int64)
    if not target or not len(known):
        if target and len(known) < len(trs):
            lines.append(f"{len(trs) - len(known)} recordings have no TR; the model was trained at "
                         f"{', '.join(f'{t:g}' for t in target)} s")
        return None, none, lines
    goal = float(np.median(target))
    off = np.flatnonzero(np.isfinite(trs) & (np.abs(trs - goal) > TR_TOLERANCE * goal))
    if not len(off):
        return goal, none, lines
    shown = ", ".join(f"{t:g}" for t in np.unique(np.round(trs[off], 4))[:6])
    if not resample:
        lines.append(f"{len(off)} of {len(trs)} recordings have TR {shown} s, more than 10% from the TR the model was "
                     f"trained on ({goal:g} s); --resample-to-model-tr resamples them")
        return goal, none, lines
    lines.append(f"resampled {len(off)} of {len(trs)} recordings from TR {shown} s to the model's {goal:g} s "
                 "(polyphase, --resample-to-model-tr)")
    return goal, off, lines


def match_model_tr(model, recordings: Recordings, resample: bool = False) -> tuple[Recordings, list[str]]:
    """Compare the recordings' TRs with the model's: returns the recordings (resampled to the model's TR,
    polyphase as ``prepare --target-tr``, where ``resample`` and they differ by more than 10%) and the
    lines to say. Mixed TRs are never silent: recordings of several TRs are said even when the model
    records none.
    """
    from brainlm.data.normalize import resample_tr

    trs = np.asarray(recordings.trs if recordings.trs is not None else [np.nan] * len(recordings), float)
    goal, off, lines = _tr_plan(model, trs, recordings.source, resample)
    if not len(off):
        return recordings, lines
    load, wrong = recordings.load, set(off.tolist())

    def resampled(i: int) -> np.ndarray:
        x = load(i)
        return resample_tr(x, float(trs[i]), goal).astype(np.float32) if i in wrong else x

    new_trs = [goal if i in wrong else float(t) for i, t in enumerate(trs)]
    return Recordings(recordings.coords, recordings.meta, resampled, recordings.source, recordings.region_names,
                      recordings.skipped, new_trs), lines


def match_store_tr(model, store, resample: bool = False):
    """:func:`match_model_tr` for a whole store (every split): returns the store, read resampled to
    the model's TR where ``resample`` and a recording's TR is more than 10% off
    (:meth:`brainlm.data.Store.retimed`), and the lines to say."""
    trs = pd.to_numeric(store.recordings["tr"], errors="coerce").to_numpy(float) if "tr" in store.recordings \
        else np.full(len(store.recordings), np.nan)
    goal, off, lines = _tr_plan(model, trs, str(store.path), resample)
    return (store.retimed(goal, off) if len(off) else store), lines


def training_recordings(data) -> Recordings | None:
    """The train split of ``data`` when it is a store (what baselines may be fitted on), else None."""
    from brainlm.data import Store, open_store

    if isinstance(data, Recordings):
        return None
    if isinstance(data, (str, os.PathLike)) and Path(data).is_dir():
        data = open_store(data)
    if isinstance(data, Store) and "train" in data.manifest["splits"] and len(data.split_index("train")):
        return open_recordings(data, "train")
    return None
