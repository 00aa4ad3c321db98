"""Where a run's numbers go: ``metrics.jsonl`` (strict JSON, always), ``metrics.csv``, and
TensorBoard / Weights & Biases when installed and asked for."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from brainlm.io import atomic_write_text, json_line, write_csv

from .config import TrainConfig

__all__ = ["Loggers", "read_metrics"]


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``RUN/metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


class Loggers:
    """metrics.jsonl (strict JSON, always), metrics.csv, and TensorBoard / W&B when installed and asked for."""

    def __init__(self, run_dir: Path, config: TrainConfig, active: bool, keep_until: int | None):
        self.path, self.active, self.tb, self.wandb = run_dir / "metrics.jsonl", active, None, None
        if not active:
            return
        if keep_until is not None and self.path.exists():
            # A resumed run repeats the steps after its checkpoint: drop their old records.
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= keep_until]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        if config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                warnings.warn("--tensorboard=true but TensorBoard is not installed; logging to metrics.jsonl only")
        if config.wandb:
            try:
                import wandb

                self.wandb = wandb.init(project=config.wandb_project, dir=str(run_dir), config=config.to_dict(),
                                        name=run_dir.name, resume="allow")
            except ImportError:
                warnings.warn("--wandb=true but wandb is not installed; logging to metrics.jsonl only")

    def log(self, record: dict[str, Any]) -> None:
        if not self.active:
            return
        with open(self.path, "a") as f:
            f.write(json_line(record) + "\n")
        split, step = record.get("split", "train"), record["step"]
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if self.tb is not None:
            for k, v in numbers.items():
                self.tb.add_scalar(f"{split}/{k}", v, step)
        if self.wandb is not None:
            self.wandb.log({f"{split}/{k}": v for k, v in numbers.items()}, step=step)

    def log_train(self, step: int, epoch: int, record: dict, speed: float) -> dict:
        """Log a training record with its speed (windows/s) and epoch; returns it as logged."""
        record = {**record, "windows_per_s": speed, "epoch": epoch}
        self.log({"step": step, "split": "train", **record})
        return record

    def write_csv(self) -> None:
        if self.active and self.path.exists():
            import pandas as pd

            write_csv(pd.DataFrame.from_records(read_metrics(self.path.parent)), self.path.with_suffix(".csv"))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
