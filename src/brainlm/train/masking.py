"""The masks a pretraining run hides tokens with (``train_mask_scheme``).

Every window's noise is drawn from its own seed (:mod:`brainlm.seeding`), so a run resumes and
scales across processes with the same masks.
"""

from __future__ import annotations

import torch

from brainlm.model import masking_noise
from brainlm.seeding import MASK_SCHEME, window_noise

__all__ = ["training_noise", "structured_noise"]


def training_noise(scheme: str, keys: list[tuple[int, ...]], num_regions: int,
                   num_patches: int) -> tuple[torch.Tensor, float | None]:
    """(B, L) masking noise of training windows shaped by ``scheme``, and the mask ratio to use
    with it (None: the model's).

    ``"forecast"`` hides the last patch of every region with the visible tokens in
    region-major order, exactly what ``model.forecast`` does at test time (fine-tuning for
    forecasting, as the original paper does); ``"patch"``, ``"region"``, ``"time"`` and
    ``"mixed"`` are :func:`structured_noise` of each window's seeded noise.

    Args:
        keys: one seed key per window (``(seed, TRAIN_MASK, micro-batch, position)``).
    """
    if scheme == "forecast":
        masked = torch.zeros(len(keys), num_regions, num_patches, dtype=torch.bool)
        masked[:, :, -1] = True
        return masking_noise(masked.flatten(1))
    noise = window_noise(keys, num_regions * num_patches)
    if scheme == "patch":
        return noise, None
    choice = (window_noise([(*k, MASK_SCHEME) for k in keys], 1)[:, 0] * 3).long().clamp(max=2)
    return structured_noise(noise, num_regions, scheme, choice), None


def structured_noise(noise: torch.Tensor, num_regions: int, scheme: str, choice: torch.Tensor | None = None) -> torch.Tensor:
    """Turn (B, R * P) token noise into noise whose argsort masks whole groups of tokens.

    ``"patch"``: unchanged (every token on its own, the original). ``"region"``: all patches of
    a region get the rank of their region, so whole regions are kept or masked (the cut splits
    at most one region). ``"time"``: all regions of a patch index get the rank of that index,
    so whole patch columns are kept or masked across regions. ``"mixed"``: window b uses scheme
    ``choice[b]`` (0 patch, 1 region, 2 time). Within a group, token order stays random.
    """
    B, L = noise.shape
    x = noise.view(B, num_regions, L // num_regions)  # (B, R, P), values in [0, 1)

    def rank(v: torch.Tensor) -> torch.Tensor:
        return v.argsort(-1).argsort(-1).to(noise.dtype)

    if scheme == "patch":
        return noise
    region = (rank(x[:, :, 0])[:, :, None] + x).flatten(1)  # (B, L): integer part = region rank
    time = (rank(x[:, 0, :])[:, None, :] + x).flatten(1)  # (B, L): integer part = patch-index rank
    if scheme == "region":
        return region
    if scheme == "time":
        return time
    if scheme == "mixed":
        if choice is None or choice.shape != (B,):
            raise ValueError("scheme 'mixed' needs choice (B,) with values 0, 1, 2")
        return torch.where((choice == 2)[:, None], time, torch.where((choice == 1)[:, None], region, noise))
    raise ValueError(f"unknown mask scheme {scheme!r}")
