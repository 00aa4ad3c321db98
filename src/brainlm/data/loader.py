"""Windows of a store as model inputs: a PyTorch dataset and its collate function.

An item is one window of W timepoints of one recording; ``collate_windows`` stacks items into
``signal_vectors (B, R, W)`` and ``xyz_vectors (B, R, 3)`` float32, the model's inputs.

Modes:
    ``random``  one item per recording per epoch, the window start drawn from
                (seed, epoch, recording): deterministic, different every epoch (``set_epoch``).
    ``fixed``   one item per recording, the window at ``start`` (default 0).
    ``sliding`` every window ``start, start + stride, ...`` that fits in each recording.

Balance (sliding mode): ``"window"`` keeps every window once, so a recording counts in
proportion to its length; ``"recording"`` repeats the windows of shorter recordings (in order,
cyclically) until every recording has as many as the longest, so each recording weighs the
same in an epoch. Cohorts scanned with different lengths (1200 against 355 timepoints in the
demo) otherwise train a model mostly on the longer one.

Which items each process sees, in which order, is the job of
:class:`~brainlm.data.sampler.WindowSampler` (rank-aware and resumable), used by training,
evaluation and inference alike. DataLoader workers share nothing: each maps the shards itself.
"""

from __future__ import annotations

import numpy as np
import torch

from brainlm.errors import UserError

from .store import Store, open_store

__all__ = ["WindowDataset", "collate_windows"]


class WindowDataset(torch.utils.data.Dataset):
    """Windows of one split of a store.

    Args:
        store: a ``Store`` or a store path.
        split: ``"train"``, ``"validation"``, ``"test"``, or None for all recordings.
        window: W, timepoints per window (default 200).
        mode: ``"random"``, ``"fixed"`` or ``"sliding"`` (see the module docstring).
        stride: step between sliding windows (default ``window``).
        start: first timepoint of fixed / sliding windows.
        seed: seed of the random window starts.
        label_columns: phenotype columns returned with each item (default: all).
        balance: ``"window"`` or ``"recording"`` (sliding mode; see the module docstring).

    An item is a dict: ``signal_vectors (R, W)`` and ``xyz_vectors (R, 3)`` float32 tensors,
    ``recording_id``, ``subject_id``, ``session_id``, ``run_id`` (str), ``window_start`` (int),
    ``phenotypes`` (dict column -> value).
    """

    def __init__(
        self,
        store: Store | str,
        split: str | None = "train",
        *,
        window: int = 200,
        mode: str = "random",
        stride: int | None = None,
        start: int = 0,
        seed: int = 0,
        label_columns: list[str] | None = None,
        balance: str = "window",
    ):
        if mode not in {"random", "fixed", "sliding"}:
            raise UserError(f"mode must be 'random', 'fixed' or 'sliding', not {mode!r}")
        if balance not in {"window", "recording"}:
            raise UserError(f"balance must be 'window' or 'recording', not {balance!r}")
        self.store = open_store(store) if not isinstance(store, Store) else store
        self.split, self.window, self.mode = split, window, mode
        self.stride, self.start, self.seed = stride or window, start, seed
        self.epoch = 0
        self.label_columns = self.store.phenotype_columns if label_columns is None else list(label_columns)
        self.xyz = torch.from_numpy(self.store.coords.astype(np.float32))  # (R, 3)

        recs = self.store.split_index(split)
        lengths = self.store.recordings["num_timepoints"].to_numpy()[recs]
        if len(recs) and lengths.min() < start + window:
            short = self.store.recordings["recording_id"].iloc[recs[np.argmin(lengths)]]
            raise UserError(f"{self.store.path}: recording {short!r} has {lengths.min()} timepoints, fewer than start + window = {start + window}")
        if mode == "sliding":
            counts = (lengths - start - window) // self.stride + 1
            repeats = np.full(len(counts), counts.max()) if balance == "recording" and len(counts) else counts
            rec = np.repeat(recs, repeats)
            # the windows of each recording in order, cycled up to its number of repeats
            offs = (np.concatenate([np.arange(n) % c for n, c in zip(repeats, counts)]) if len(counts)
                    else np.zeros(0, np.int64))
            starts = start + offs * self.stride
        else:
            rec, starts = recs, np.full(len(recs), start)
        self._rec, self._start = rec, starts
        self._length = self.store.recordings["num_timepoints"].to_numpy()
        meta = self.store.recordings
        self._ids = {c: meta[c].astype(str).to_numpy() for c in ["recording_id", "subject_id", "session_id", "run_id"]}
        self._labels = {c: meta[c].to_numpy() for c in self.label_columns}

    def set_epoch(self, epoch: int) -> None:
        """Choose this epoch's random windows.

        Call before each epoch; the same epoch gives the same windows. DataLoader workers
        receive a copy of the dataset when an epoch's iterator starts, so this reaches them
        unless ``persistent_workers=True``.
        """
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self._rec)

    def _window_start(self, i: int, rec: int) -> int:
        if self.mode != "random":
            return int(self._start[i])
        high = int(self._length[rec]) - self.window
        return int(np.random.default_rng((self.seed, self.epoch, int(rec))).integers(0, high + 1))

    def __getitem__(self, i: int) -> dict:
        rec = int(self._rec[i])
        t0 = self._window_start(i, rec)
        x = self.store.window(rec, t0, self.window)  # (W, R) view of the memory-mapped shard
        # Copy out of the read-only map, then widen and transpose in torch (faster than numpy for float16).
        signal = torch.from_numpy(np.array(x)).to(torch.float32).T.contiguous()  # (R, W)
        item = {"signal_vectors": signal, "xyz_vectors": self.xyz, "window_start": t0}
        item.update({c: v[rec] for c, v in self._ids.items()})
        item["phenotypes"] = {c: v[rec] for c, v in self._labels.items()}
        return item


def _stack_label(values: list):
    try:
        return torch.tensor(np.asarray(values, dtype=np.float64), dtype=torch.float32)
    except (TypeError, ValueError):
        return list(values)


def collate_windows(items: list[dict]) -> dict:
    """Stack dataset items into a batch.

    Tensors are stacked (``signal_vectors (B, R, W)``, ``xyz_vectors (B, R, 3)``), integers
    become int64 tensors (``window_start (B,)``, ``index (B,)``), text stays a list
    (``recording_id``, ``subject_id`` ...), and ``phenotypes`` becomes column -> ``(B,)``
    float32 tensor for numeric columns (NaN where missing) or a list for text columns.
    Works for any dataset following the training data protocol (``brainlm.train``).
    """
    out: dict = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if torch.is_tensor(values[0]):
            out[key] = torch.stack(values)
        elif key == "phenotypes":
            out[key] = {c: _stack_label([v[c] for v in values]) for c in values[0]}
        elif isinstance(values[0], (int, np.integer)) and not isinstance(values[0], bool):
            out[key] = torch.tensor(values, dtype=torch.int64)
        elif isinstance(values[0], (float, np.floating)):
            out[key] = torch.tensor(values, dtype=torch.float32)
        else:
            out[key] = values
    return out
