"""Windows of a store as model inputs: a PyTorch dataset and its collate function.

An item is one window of W timepoints of one recording; ``collate_windows`` stacks items into
``signal_vectors (B, R, W)`` and ``xyz_vectors (B, R, 3)`` float32, the model's inputs.

Modes:
    ``random``  one item per recording per epoch, the window start drawn from
                (seed, epoch, recording): deterministic, different every epoch (``set_epoch``).
    ``fixed``   one item per recording, the window at ``start`` (default 0).
    ``sliding`` every window ``start, start + stride, ...`` that fits in each recording.

Under ``torchrun`` (``torch.distributed`` initialised) each rank takes every
``world_size``-th item, padded by wrapping around so all ranks get the same count (in random
mode the items are permuted per epoch first, identically on all ranks); rank and world size can
also be given. DataLoader workers share nothing: each maps the shards itself.
"""

from __future__ import annotations

import numpy as np
import torch

from brainlm.errors import UserError

from .store import Store, open_store

__all__ = ["WindowDataset", "collate_windows"]


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


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
        rank, world_size: this process's share; default from ``torch.distributed``.
        label_columns: phenotype columns returned with each item (default: all).

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
        rank: int | None = None,
        world_size: int | None = None,
        label_columns: list[str] | None = None,
    ):
        if mode not in {"random", "fixed", "sliding"}:
            raise UserError(f"mode must be 'random', 'fixed' or 'sliding', not {mode!r}")
        self.store = open_store(store) if not isinstance(store, Store) else store
        self.split, self.window, self.mode = split, window, mode
        self.stride, self.start, self.seed = stride or window, start, seed
        self.epoch = 0
        d_rank, d_world = _dist_rank_world()
        self.rank = d_rank if rank is None else rank
        self.world_size = d_world if world_size is None else world_size
        self.label_columns = self.store.phenotype_columns if label_columns is None else list(label_columns)
        self.xyz = torch.from_numpy(self.store.coords.astype(np.float32))  # (R, 3)

        recs = self.store.split_index(split)
        lengths = self.store.recordings["num_timepoints"].to_numpy()[recs]
        if len(recs) and lengths.min() < start + window:
            short = self.store.recordings["recording_id"].iloc[recs[np.argmin(lengths)]]
            raise UserError(f"{self.store.path}: recording {short!r} has {lengths.min()} timepoints, fewer than start + window = {start + window}")
        if mode == "sliding":
            counts = (lengths - start - window) // self.stride + 1
            rec = np.repeat(recs, counts)
            offs = np.concatenate([np.arange(c) for c in counts]) if len(counts) else np.zeros(0, np.int64)
            starts = start + offs * self.stride
        else:
            rec, starts = recs, np.full(len(recs), start)
        self._all_rec, self._all_start = rec, starts
        self._assign()
        self._length = self.store.recordings["num_timepoints"].to_numpy()
        meta = self.store.recordings
        self._ids = {c: meta[c].astype(str).to_numpy() for c in ["recording_id", "subject_id", "session_id", "run_id"]}
        self._labels = {c: meta[c].to_numpy() for c in self.label_columns}

    def _assign(self) -> None:
        """This rank's items: every ``world_size``-th, padded by wrapping so all ranks get as many."""
        rec, starts = self._all_rec, self._all_start
        if self.mode == "random" and self.world_size > 1:
            # Ranks see a different subset of recordings each epoch, the same on every rank.
            order = np.random.default_rng((self.seed, self.epoch, 1)).permutation(len(rec))
            rec, starts = rec[order], starts[order]
        per_rank = -(-len(rec) // self.world_size) if len(rec) else 0
        take = np.arange(self.rank, per_rank * self.world_size, self.world_size) % max(len(rec), 1)
        self._rec, self._start = rec[take], starts[take]

    def set_epoch(self, epoch: int) -> None:
        """Choose this epoch's random windows (and, on several ranks, recordings per rank).

        Call before each epoch, as with ``DistributedSampler``; the same epoch gives the same
        windows. DataLoader workers receive a copy of the dataset when an epoch's iterator
        starts, so this reaches them unless ``persistent_workers=True``.
        """
        self.epoch = epoch
        self._assign()

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
    """Stack ``WindowDataset`` items into a batch.

    Returns:
        dict with ``signal_vectors (B, R, W)`` and ``xyz_vectors (B, R, 3)`` float32,
        ``window_start (B,)`` int64, ``recording_id`` / ``subject_id`` / ``session_id`` /
        ``run_id`` lists of str, and ``phenotypes``: column -> ``(B,)`` float32 tensor for
        numeric columns (NaN where missing) or a list for text columns.
    """
    batch = {
        "signal_vectors": torch.stack([it["signal_vectors"] for it in items]),  # (B, R, W)
        "xyz_vectors": torch.stack([it["xyz_vectors"] for it in items]),  # (B, R, 3)
        "window_start": torch.tensor([it["window_start"] for it in items], dtype=torch.int64),
    }
    for key in ("recording_id", "subject_id", "session_id", "run_id"):
        batch[key] = [it[key] for it in items]
    batch["phenotypes"] = {c: _stack_label([it["phenotypes"][c] for it in items]) for c in items[0]["phenotypes"]}
    return batch
