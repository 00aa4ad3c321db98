"""Seeded synthetic brain/genetic cohorts with a planted shared latent factor.

Generative model, for subject i (all latent variables standard normal, independent)::

    z_i   (n_shared,)  shared factor, seen by both modalities
    u_i   (1,)         brain-only factor      v_i (1,)  genetic-only factor
    c_i                covariates: age, sex, site

    brain_i   = shared_strength  * z_i @ W_b + private_strength * u_i @ P_b
                + covariate_strength * c_i @ G_b + e_i,       e_i ~ N(0, I_{brain_dim})
    genetic_i = shared_strength  * z_i @ W_g + private_strength * v_i @ P_g
                + covariate_strength * c_i @ G_g + f_i,       f_i ~ N(0, I_{genetic_dim})

Loadings W, P, G are i.i.d. N(0, 1), so ``shared_strength`` is the per-feature
signal-to-noise amplitude of the shared factor; ``shared_strength=0`` gives a null
cohort in which the two modalities are independent given the covariates.

The target (for late fusion) reads the private factors::

    score_i = target_brain * u_i + target_genetic * v_i + N(0, 1)

``target="binary"`` thresholds the score at its median (balanced classes);
``target="continuous"`` keeps it. Making the target depend on the *private* factors is
what lets "fusion beats single modalities only when both carry signal" be tested: with
``target_genetic=0`` the genetic features add nothing the brain features lack.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from brainlm.errors import UserError


@dataclass
class SyntheticCohort:
    """One synthetic cohort.

    Attributes:
        ids: (N,) subject IDs ``sub-0000`` ...
        brain: (N, brain_dim) float32. genetic: (N, genetic_dim) float32.
        covariates: (N, 3) frame indexed by ID: ``age`` (years), ``sex`` (0/1), ``site`` (0..2).
        target: (N,) float (0/1 for binary targets).
        shared: (N, n_shared) the planted shared factor z.
    """

    ids: np.ndarray
    brain: np.ndarray
    genetic: np.ndarray
    covariates: pd.DataFrame
    target: np.ndarray
    shared: np.ndarray


def make_synthetic_cohort(
    n_subjects: int = 200,
    brain_dim: int = 32,
    genetic_dim: int = 16,
    n_shared: int = 1,
    shared_strength: float = 0.5,
    private_strength: float = 0.5,
    covariate_strength: float = 0.3,
    target: str = "binary",
    target_brain: float = 1.0,
    target_genetic: float = 1.0,
    seed: int = 0,
) -> SyntheticCohort:
    """Draw a cohort from the model in the module docstring.

    Args:
        n_subjects: N. brain_dim, genetic_dim: feature counts.
        n_shared: dimensions of the planted shared factor.
        shared_strength: loading amplitude of the shared factor (0 = null cohort).
        private_strength: loading amplitude of each modality's private factor.
        covariate_strength: loading amplitude of the (standardised) covariates.
        target: ``"binary"`` or ``"continuous"``.
        target_brain, target_genetic: weights of the private factors in the target.
        seed: everything is drawn from ``numpy.random.default_rng(seed)``.

    Returns:
        A :class:`SyntheticCohort`.
    """
    if target not in ("binary", "continuous"):
        raise UserError(f"target must be 'binary' or 'continuous', got {target!r}")
    rng = np.random.default_rng(seed)
    n = n_subjects
    z = rng.standard_normal((n, n_shared))
    u = rng.standard_normal((n, 1))
    v = rng.standard_normal((n, 1))
    age = rng.uniform(20, 80, n)
    sex = rng.integers(0, 2, n)
    site = rng.integers(0, 3, n)
    c = np.column_stack([(age - 50) / 17.3, sex - 0.5, site == 1, site == 2]).astype(float)

    def modality(dim: int, private: np.ndarray) -> np.ndarray:
        W = rng.standard_normal((n_shared, dim))
        P = rng.standard_normal((1, dim))
        G = rng.standard_normal((c.shape[1], dim))
        noise = rng.standard_normal((n, dim))
        return shared_strength * z @ W + private_strength * private @ P + covariate_strength * c @ G + noise

    brain = modality(brain_dim, u)
    genetic = modality(genetic_dim, v)
    score = target_brain * u[:, 0] + target_genetic * v[:, 0] + rng.standard_normal(n)
    y = (score > np.median(score)).astype(float) if target == "binary" else score
    ids = np.array([f"sub-{i:04d}" for i in range(n)])
    cov = pd.DataFrame({"age": age, "sex": sex.astype(float), "site": site.astype(str)}, index=ids)
    cov.index.name = "subject_id"
    return SyntheticCohort(ids, brain.astype(np.float32), genetic.astype(np.float32), cov, y, z)


def make_null_cohort(**kwargs) -> SyntheticCohort:
    """:func:`make_synthetic_cohort` with ``shared_strength=0``: no brain-genetic association."""
    kwargs["shared_strength"] = 0.0
    return make_synthetic_cohort(**kwargs)
