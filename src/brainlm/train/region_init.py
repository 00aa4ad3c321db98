"""``region_embedding_init="connectivity"``: learned region tables that start at the train
split's connectivity structure."""

from __future__ import annotations

import torch

from brainlm.model import BrainLMForPretraining

__all__ = ["connectivity_embedding", "init_region_embedding"]


def connectivity_embedding(covariance, dim: int) -> torch.Tensor:
    """(R, dim) region vectors whose inner products reproduce a region covariance (up to one factor).

    Rows are the regions' coordinates on the leading principal axes, scaled by the square root
    of their variance (``e_i . e_j = cov_ij`` exactly when dim >= R); the table is scaled to an
    RMS of 1, and columns beyond R are 0.
    """
    cov = torch.as_tensor(covariance, dtype=torch.float64)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    evals, evecs = evals.flip(0).clamp(min=0), evecs.flip(1)
    k = min(dim, cov.shape[0])
    table = torch.zeros(cov.shape[0], dim, dtype=torch.float64)
    table[:, :k] = evecs[:, :k] * evals[:k].sqrt()
    return (table / table.pow(2).mean().sqrt().clamp(min=1e-12)).float()


@torch.no_grad()
def init_region_embedding(model: BrainLMForPretraining, covariance) -> None:
    """``region_embedding_init="connectivity"``: the learned region tables of the encoder and the
    decoder start at :func:`connectivity_embedding` of the train split's covariance, and both
    coordinate projections at 0, so at first region identity is the covariance structure alone
    (everything still learns)."""
    for part in (model.encoder, model.decoder):
        part.region_embedding.copy_(connectivity_embedding(covariance, part.region_embedding.shape[1]))
        part.xyz_proj.weight.zero_()
        part.xyz_proj.bias.zero_()
