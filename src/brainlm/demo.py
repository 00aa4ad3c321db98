"""End-to-end smoke run: build a small model, train a few steps, show the loss falling."""

from __future__ import annotations

import torch
from tqdm import tqdm

from brainlm.model import BrainLMForPretraining, brainlm_tiny


def _synthetic_recordings(n: int, regions: int, timepoints: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums of slow sinusoids shared across regions, plus noise: structure a model can learn."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(timepoints, dtype=torch.float32)
    sources = torch.sin(t[None] * torch.rand(4, 1, generator=g) * 0.3 + torch.rand(4, 1, generator=g) * 6)  # (4, T)
    mixing = torch.randn(n, regions, 4, generator=g)  # (n, R, 4)
    x = mixing @ sources + 0.1 * torch.randn(n, regions, timepoints, generator=g)  # (n, R, T)
    xyz = torch.randn(regions, 3, generator=g) * 40
    return (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True), xyz.expand(n, regions, 3)


def run_demo(out_dir: str = "runs/demo", steps: int = 60, seed: int = 0) -> int:
    torch.manual_seed(seed)
    signal, xyz = _synthetic_recordings(64, regions=32, timepoints=200, seed=seed)
    model = BrainLMForPretraining(brainlm_tiny(mask_ratio=0.5)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in (bar := tqdm(range(steps), desc="smoke training")):
        idx = torch.randint(0, len(signal), (8,))
        loss = model(signal[idx], xyz[idx]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    print(f"masked-patch MSE: first 10 steps {first:.3f} -> last 10 steps {last:.3f}")
    return 0 if last < first else 1
