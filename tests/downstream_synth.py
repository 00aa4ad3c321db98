"""Small seeded synthetic stores and models for the downstream tests."""

from __future__ import annotations

import numpy as np
import torch

from brainlm.data import Atlas, Recording, Source, StoreOptions, write_store
from brainlm.model import BrainLMForPretraining, brainlm_tiny

R, T_REC, WINDOW, PATCH = 6, 120, 20, 5


def tiny_model(num_regions: int = R, window: int = WINDOW, seed: int = 0) -> BrainLMForPretraining:
    torch.manual_seed(seed)
    config = brainlm_tiny(num_brain_voxels=num_regions, num_timepoints_per_voxel=window, timepoint_patching_size=PATCH,
                          hidden_size=16, intermediate_size=32, decoder_hidden_size=16, decoder_intermediate_size=32,
                          time_encoding_dropout=0.0)
    return BrainLMForPretraining(config).eval()


def subject_series(i: int, label: int, T: int = T_REC, seed: int = 0) -> np.ndarray:
    """(T, R): a subject-specific mixing of smooth sources, plus a strong source shared by regions 0
    and 1: in phase for label 1, in opposite phase for label 0; label 1 also shifts every region by +2."""
    rng = np.random.default_rng((seed, i))
    t = np.arange(T)
    sources = np.stack([np.sin(2 * np.pi * f * t + p) for f, p in zip(rng.uniform(0.02, 0.15, 4), rng.uniform(0, 6, 4))])
    mix = rng.normal(size=(R, 4))  # subject-specific: a fingerprint in FC
    x = (mix @ sources).T + 0.3 * rng.normal(size=(T, R))  # (T, R)
    shared = np.sin(2 * np.pi * 0.05 * t + rng.uniform(0, 6))
    x[:, 0] += 5 * shared
    x[:, 1] += 5 * shared if label else -5 * shared
    x += 2.0 * label
    return x.astype(np.float32)


def synthetic_store(out, n_subjects: int = 12, split=(8, 2, 2), seed: int = 0, T: int = T_REC):
    """A store of one recording per subject; phenotypes: ``group`` ("a"/"b" = label), ``score``
    (float = label + noise), ``constant`` ("x"), ``partial`` (NaN for subjects 0 and 1)."""
    rng = np.random.default_rng(seed)
    coords = rng.normal(size=(R, 3)).astype(np.float32) * 40
    atlas = Atlas(name="SYN", coords=coords, region_names=[f"r{i}" for i in range(R)])
    tasks = []
    for i in range(n_subjects):
        label = i % 2

        def load(i=i, label=label):
            return Recording(subject_series(i, label, T, seed), subject_id=f"s{i:02d}", run_id="1", tr=1.0,
                             source=f"syn{i}",
                             phenotypes={"group": "ab"[label], "score": label + 0.1 * i / n_subjects,
                                         "constant": "x", "partial": np.nan if i < 2 else float(label)})

        tasks.append((f"syn{i}", load))
    options = StoreOptions(split=split, seed=seed, dtype="float32", normalization="none", window=WINDOW, progress=False)
    return write_store(Source("synthetic", atlas, tasks), out, options)
