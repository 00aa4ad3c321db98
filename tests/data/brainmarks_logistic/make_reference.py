"""Record brainmarks 0.1.1's own ``main_logistic`` result on fixed features (see README.md).

Run with brainmarks installed (``.venv-brainmarks``, docs/brainmarks.md):

    python tests/data/brainmarks_logistic/make_reference.py

Writes ``features.npz`` (the features, class ids and splits, in Brainmarks' sample order) and
``eval_table.csv`` (what ``main_logistic`` wrote) beside this file.
"""

import shutil
import tempfile
from pathlib import Path

import datasets as hfds
import numpy as np
import torch
from omegaconf import OmegaConf

import brainmarks.main_logistic as main_logistic
from brainmarks.datasets.base import HFDataset
from brainmarks.datasets.registry import register_dataset
from brainmarks.models.registry import register_model

HERE = Path(__file__).parent
COUNTS = {"train": 90, "validation": 24, "test": 36}
N_TRIALS = 3


def make_features(seed: int = 0):
    """Three classes, 6 features; the class shifts the first two (overlapping classes, so every
    C converges quickly)."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in COUNTS.items():
        y = rng.integers(0, 3, n)
        X = rng.normal(size=(n, 6)).astype(np.float32)
        X[:, :2] += 0.8 * (y[:, None] - 1)
        out[split] = (X, y)
    return out


class FixedFeatures(torch.nn.Module):
    __space__ = "fixed"

    def forward(self, batch):
        return batch["feat"][:, None, :], None, None


@register_model
def fixed_features(**kwargs):
    return FixedFeatures()


@register_dataset
def fixed_features_dataset(space: str, **kwargs):
    return {split: HFDataset(hfds.Dataset.from_dict({"feat": X, "label": y}), target_key="label")
            for split, (X, y) in make_features().items()}


def main():
    data = make_features()
    np.savez(HERE / "features.npz", **{f"{s}_X": X for s, (X, _) in data.items()},
             **{f"{s}_y": y for s, (_, y) in data.items()})
    with tempfile.TemporaryDirectory() as tmp:
        cfg = OmegaConf.load(main_logistic.DEFAULT_CONFIG)
        cfg = OmegaConf.unsafe_merge(cfg, OmegaConf.create({
            "model": "fixed_features", "representation": "cls", "dataset": "fixed_features_dataset",
            "device": "cpu", "amp": False, "num_workers": 1, "n_trials": N_TRIALS, "output_root": tmp}))
        main_logistic.main(cfg)
        table = next(Path(tmp).rglob("eval_table.csv"))
        shutil.copy(table, HERE / "eval_table.csv")


if __name__ == "__main__":
    main()
