import os
from pathlib import Path

import pytest
import torch

# Keep the suite predictable on small machines.
torch.set_num_threads(min(2, os.cpu_count() or 1))

DATA = Path(__file__).parent / "data"


@pytest.fixture
def golden_dir() -> Path:
    return DATA / "brainlm_original_tiny"


def make_batch(B: int, R: int, T: int, seed: int = 0):
    """A seeded synthetic batch: smooth-ish signals and coordinates in MNI-like mm."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(T, dtype=torch.float32)
    freq = torch.rand(B, R, 1, generator=g) * 0.2 + 0.02
    phase = torch.rand(B, R, 1, generator=g) * 6.28
    signal = torch.sin(freq * t + phase) + 0.1 * torch.randn(B, R, T, generator=g)
    xyz = torch.randn(B, 1, 3, generator=g).expand(B, R, 3) * 0 + torch.randn(1, R, 3, generator=g) * 40
    return signal, xyz.contiguous()
