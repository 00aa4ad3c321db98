"""What a pretraining run trains on: window datasets of a store, the baseline ladder fitted on
them, and the identity of the data (checked on resume).

Data protocol: any map-style ``torch.utils.data.Dataset`` whose items are dicts with
``signal_vectors (R, T)`` and ``xyz_vectors (R, 3)`` float32 tensors, plus optional IDs
(``subject_id``, ``recording_id``, ...). Given ``config.data``, the train and validation splits
of a ``brainlm.data`` store are used.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from brainlm.data import WindowDataset, open_store
from brainlm.errors import InputError, UserError
from brainlm.evaluate.baselines import ReconstructionBaselines

from .config import TrainConfig

__all__ = ["build_datasets", "fit_baselines", "data_identity", "training_trs", "check_dataset"]


def build_datasets(config: TrainConfig, splits: tuple[str, ...] = ("train", "validation"), store=None) -> list[Dataset]:
    """Window datasets of ``config.data`` (a ``brainlm.data`` store), or of an opened ``store``
    (a cross-validation fold's ``Store.resplit``), for the given splits.

    Training windows follow ``train_mode``; validation and test windows are fixed or sliding,
    never random. Which windows a process sees is the sampler's job.
    """
    if store is None:
        if config.data is None:
            raise UserError("no data: pass a store folder (--data STORE)")
        store = open_store(config.data)
    out = []
    for split in splits:
        mode = config.train_mode if split == "train" else config.eval_mode
        stride = (config.train_stride if split == "train" else config.eval_stride) or None
        balance = config.train_balance if split == "train" else "window"
        out.append(WindowDataset(store, split, window=config.window, mode=mode, stride=stride, seed=config.seed,
                                 balance=balance))
    return out


def fit_baselines(train_dataset: Dataset, max_windows: int = 4096) -> ReconstructionBaselines:
    """The baseline ladder fitted on the training data: whole recordings of a store's train
    split, or (any other dataset) up to ``max_windows`` of its windows."""
    store, split = getattr(train_dataset, "store", None), getattr(train_dataset, "split", None)
    if store is not None:
        return ReconstructionBaselines().fit(x for _, x in store.iter_recordings(split))
    n = min(len(train_dataset), max_windows)
    return ReconstructionBaselines().fit(train_dataset[i]["signal_vectors"].numpy().T for i in range(n))


def data_identity(dataset: Dataset) -> dict | None:
    """What a run trains on, to recognise other data on resume: the store folder, its
    fingerprint (which changes with its inputs and options, normalisation included) and the
    train subjects (a cross-validation fold's); None for datasets that are not a store's."""
    store = getattr(dataset, "store", None)
    fingerprint = getattr(store, "manifest", {}).get("fingerprint") if store is not None else None
    if fingerprint is None:
        return None
    return {"store": str(store.path), "fingerprint": fingerprint, "train_subjects": sorted(map(str, store.splits["train"]))}


def training_trs(dataset: Dataset) -> list[float]:
    """The distinct repetition times (s) of a store's training recordings (empty when unknown)."""
    store = getattr(dataset, "store", None)
    if store is None or "tr" not in getattr(store, "recordings", {}):
        return []
    rows = store.recordings.iloc[store.split_index("train")]["tr"].astype(float)
    return sorted({round(float(t), 4) for t in rows if np.isfinite(t)})


def check_dataset(dataset: Dataset | None, split: str, window: int) -> int:
    """The region count R of a dataset; clear errors for empty splits and wrong shapes."""
    if dataset is None or len(dataset) == 0:
        raise UserError(f"the {split} split is empty: it has no windows of {window} timepoints (--window)")
    item = dataset[0]
    if not isinstance(item, dict) or "signal_vectors" not in item or "xyz_vectors" not in item:
        raise UserError(f"{split} items must be dicts with 'signal_vectors' (R, T) and 'xyz_vectors' (R, 3)")
    R, T = item["signal_vectors"].shape
    if T != window:
        raise UserError(f"{split} windows have {T} timepoints but the config says window={window}")
    xyz = item["xyz_vectors"]
    if tuple(xyz.shape) != (R, 3):
        raise UserError(f"{split} xyz_vectors has shape {tuple(xyz.shape)}, expected ({R}, 3)")
    if not torch.isfinite(torch.as_tensor(xyz)).all():
        raise InputError(f"{split} region coordinates contain NaN or Inf; fix the store's coordinates")
    return R
