"""Which windows each process sees, batch by batch: one sampler for training, evaluation and inference.

:class:`WindowSampler` is a PyTorch batch sampler (``DataLoader(dataset, batch_sampler=...)``)
over the items of a map-style dataset:

- ``shuffle=True`` (training): epoch ``e`` is a permutation of the items seeded by
  ``(seed, e)``, cut into *global* batches of ``batch_size x world_size`` items (an incomplete
  tail is dropped); rank ``r`` takes the ``r``-th slice of ``batch_size`` items of each. So N
  processes with batch ``b`` see exactly the windows one process sees with batch ``N x b``,
  and a run resumes exactly from ``(epoch, batches consumed)`` (``start_batch``).
- ``shuffle=False`` (evaluation, embedding): items in order; rank ``r`` takes items ``r,
  r + world_size, ...``, padded with ``-1`` so every rank runs the same number of batches
  (collective operations need that); :class:`IndexedDataset` turns ``-1`` into a padding item
  whose ``index`` is ``-1``.

Rank and world size default to those of ``torch.distributed`` when it is initialised.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from brainlm.errors import UserError

__all__ = ["WindowSampler", "IndexedDataset", "dist_rank_world"]


def dist_rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of ``torch.distributed``, or ``(0, 1)``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class WindowSampler(Sampler[list[int]]):
    """Batches of item indices for one process (see the module docstring).

    Args:
        num_items: length of the dataset.
        batch_size: items per batch on this process.
        rank, world_size: this process's place; default from ``torch.distributed``.
        shuffle: training order (seeded permutation per epoch, tail dropped) or evaluation
            order (in order, padded with -1).
        seed: seed of the permutations.
        epoch, start_batch: where to start (``set_epoch`` moves on).
    """

    def __init__(self, num_items: int, batch_size: int, *, rank: int | None = None, world_size: int | None = None,
                 shuffle: bool = False, seed: int = 0, epoch: int = 0, start_batch: int = 0):
        d_rank, d_world = dist_rank_world()
        self.rank = d_rank if rank is None else rank
        self.world_size = d_world if world_size is None else world_size
        if batch_size < 1 or not 0 <= self.rank < self.world_size:
            raise UserError(f"batch size {batch_size} and rank {self.rank} of {self.world_size} are not usable")
        self.num_items, self.batch_size, self.shuffle, self.seed = num_items, batch_size, shuffle, seed
        self.set_epoch(epoch, start_batch)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Start epoch ``epoch`` at its ``start_batch``-th batch."""
        self.epoch, self.start_batch = epoch, start_batch

    @property
    def batches_per_epoch(self) -> int:
        if self.shuffle:
            return self.num_items // (self.batch_size * self.world_size)
        per_rank = -(-self.num_items // self.world_size)
        return -(-per_rank // self.batch_size)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start_batch)

    def __iter__(self) -> Iterator[list[int]]:
        b, w, r = self.batch_size, self.world_size, self.rank
        if self.shuffle:
            order = np.random.default_rng((self.seed, self.epoch)).permutation(self.num_items)
            for k in range(self.start_batch, self.batches_per_epoch):
                yield order[k * b * w + r * b: k * b * w + (r + 1) * b].tolist()
            return
        per_rank = -(-self.num_items // w)
        mine = list(range(r, self.num_items, w))
        mine += [-1] * (per_rank - len(mine))  # padding: every rank runs as many batches
        for k in range(self.start_batch, self.batches_per_epoch):
            yield mine[k * b:(k + 1) * b]


class IndexedDataset(Dataset):
    """Adds ``index`` to every item; index ``-1`` (sampler padding) gives item 0 marked ``index = -1``."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        return {**self.dataset[max(int(i), 0)], "index": int(i)}

    def __getattr__(self, name):
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)
