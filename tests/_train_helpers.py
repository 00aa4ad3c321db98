"""Small seeded datasets and configs for the training tests (also used by subprocess runs)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from brainlm.train import TrainConfig


class ToyWindows(Dataset):
    """Windows of shared slow sources mixed into R regions, plus noise: learnable structure."""

    def __init__(self, n: int = 32, regions: int = 6, timepoints: int = 40, seed: int = 0, nan_at: int | None = None):
        # float64 arithmetic rounded once to float32: the same values in every process, whatever
        # float32 kernel (vectorised or scalar, 1 or 2 threads) the machine would pick for sin and @
        g = torch.Generator().manual_seed(seed)
        t = torch.arange(timepoints, dtype=torch.float64)
        freq = torch.rand(n, 2, 1, generator=g).double() * 0.3 + 0.05
        phase = torch.rand(n, 2, 1, generator=g).double() * 6.28
        sources = torch.sin(freq * t + phase)  # (n, 2, T)
        mixing = torch.randn(regions, 2, generator=g).double()
        noise = torch.randn(n, regions, timepoints, generator=g).double()
        self.signal = (mixing @ sources + 0.1 * noise).float()  # (n, R, T)
        if nan_at is not None:
            self.signal[nan_at, 0, 0] = float("nan")
        self.xyz = torch.randn(regions, 3, generator=g) * 40

    def __len__(self) -> int:
        return len(self.signal)

    def __getitem__(self, i: int) -> dict:
        return {"signal_vectors": self.signal[i], "xyz_vectors": self.xyz, "subject_id": f"sub{i % 5}",
                "recording_id": f"rec{i}"}


def tiny_config(out_dir, **changes) -> TrainConfig:
    """A tiny model on 6 regions x 40 timepoints; fp32 on one CPU thread for exact comparisons."""
    base = dict(
        model="tiny", model_overrides=dict(timepoint_patching_size=10, mask_ratio=0.5, time_encoding_dropout=0.0),
        window=40, batch_size=4, max_steps=12, eval_every=6, save_every=4, keep_last=2, log_every=1, base_lr=0.05,
        warmup_steps=2, precision="fp32", device="cpu", num_threads=1, progress=False, plots=False, seed=3,
        out_dir=str(out_dir),
    )
    base.update(changes)
    return TrainConfig(**base)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dist_worker(rank: int, world: int, port: int, config_kwargs: dict, resume: bool = False) -> None:
    """One process of a gloo group on CPU running ``pretrain`` on the toy data."""
    import os

    from brainlm.distributed import destroy_distributed
    from brainlm.train import pretrain

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    try:
        pretrain(tiny_config(**config_kwargs), resume=resume, train_dataset=ToyWindows(), val_dataset=ToyWindows(8, seed=1))
    finally:
        destroy_distributed()


def cli_worker(rank: int, world: int, port: int, argv: list[str]) -> None:
    """One process of a gloo group running a ``brainlm`` command, as torchrun would start it."""
    import os

    from brainlm.cli import main

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    assert main(argv) == 0
