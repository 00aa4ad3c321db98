"""Every random draw of training and evaluation comes from a generator seeded by its position.

The masking noise of a window is drawn from ``(seed, stream, ...)``: the micro-batch and the
window's place in the global batch while training, the window's index when evaluating. So
results do not depend on batch size, process count or where a run was resumed.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["TRAIN_MASK", "DROPOUT", "EVAL_MASK", "MASK_SCHEME", "seed_of", "window_noise"]

# Tags that keep the seeded streams apart.
TRAIN_MASK, DROPOUT, EVAL_MASK, MASK_SCHEME = 0, 1, 2, 3


def seed_of(*parts: int) -> int:
    """A 63-bit seed from a tuple of non-negative integers (SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


def window_noise(keys: list[tuple[int, ...]], num_tokens: int) -> torch.Tensor:
    """(B, L) uniform masking noise; row i depends only on ``keys[i]``."""
    rows = [torch.rand(num_tokens, generator=torch.Generator().manual_seed(seed_of(*k))) for k in keys]
    return torch.stack(rows)  # (B, L)
