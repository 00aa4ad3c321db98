"""Shared test settings and fixtures."""

import os
import socket
import tempfile
from pathlib import Path

import pytest
import torch

# Keep the suite predictable on small machines.
torch.set_num_threads(min(2, os.cpu_count() or 1))
# Shard verifications are cached per machine; the tests keep theirs out of the user's home.
os.environ.setdefault("BRAINLM_CACHE", tempfile.mkdtemp(prefix="brainlm-cache-"))

DATA = Path(__file__).parent / "data"


@pytest.fixture
def golden_dir() -> Path:
    return DATA / "brainlm_original_tiny"


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails, as on a machine without network."""

    def refuse(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def empty_hub_cache(monkeypatch, tmp_path):
    """Offline mode and an empty Hugging Face cache under ``tmp_path/hf`` (``HF_HOME``).

    huggingface_hub reads its settings once, at import: the module constants are set too.
    """
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return tmp_path / "hf" / "hub"


def make_batch(B: int, R: int, T: int, seed: int = 0):
    """A seeded synthetic batch: smooth-ish signals and coordinates in MNI-like mm."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(T, dtype=torch.float32)
    freq = torch.rand(B, R, 1, generator=g) * 0.2 + 0.02
    phase = torch.rand(B, R, 1, generator=g) * 6.28
    signal = torch.sin(freq * t + phase) + 0.1 * torch.randn(B, R, T, generator=g)
    xyz = (torch.randn(R, 3, generator=g) * 40).expand(B, R, 3).contiguous()  # same atlas for every window
    return signal, xyz


@pytest.fixture(autouse=True)
def _single_threaded_integrate(request):
    """Run the integration tests with one BLAS/OpenMP/torch thread.

    Their matrices are tiny (tens of subjects); on a shared 2-core machine a second
    thread per operation only adds contention, which slowed these tests 10-100x.
    """
    if not request.module.__name__.split(".")[-1].startswith("test_integrate"):
        yield
        return
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(before)
