"""How much memory a device has, and refusing up front what will not fit."""

from __future__ import annotations

from pathlib import Path

import torch

from brainlm.errors import UserError

__all__ = ["available_memory", "check_memory"]


def available_memory(device: torch.device) -> int | None:
    """Bytes free for a new allocation on ``device`` (None when unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(needed: int, device: torch.device, what: str, hint: str) -> None:
    """Refuse up front (``UserError``) when ``needed`` bytes cannot fit on ``device``."""
    free = available_memory(device)
    if free is not None and needed > free:
        raise UserError(f"{what} needs about {needed / 2**30:.1f} GiB but {free / 2**30:.1f} GiB are free on "
                        f"{device}; {hint}")
