"""Masked reconstruction of a model next to the baseline ladder, on the same windows and masks.

Used by training (validation), the demo (held-out test subjects) and ``brainlm benchmark``.
The mask of window ``i`` is drawn from ``(seed, EVAL_MASK, i)`` (:mod:`brainlm.seeding`), so
results do not depend on batch size or process count. Under ``torchrun`` each rank takes
every world-size-th window (:class:`~brainlm.data.sampler.WindowSampler`) and the sums are
all-reduced.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from brainlm.data.loader import collate_windows
from brainlm.data.sampler import IndexedDataset, WindowSampler
from brainlm.distributed import all_reduce_sum, autocast_context, unwrap_model
from brainlm.seeding import EVAL_MASK, window_noise

from .baselines import BASELINE_LABELS, ReconstructionBaselines
from .metrics import SUMS, MaskedMetrics, metrics_from_sums
from .protocol import SubjectBootstrap
from .verdict import Verdict, compare

__all__ = ["ReconstructionEval", "evaluate_reconstruction", "best_baseline", "r2_statistic", "format_ladder",
           "ladder_verdict", "with_initial", "windows_with_initial"]


@dataclass
class ReconstructionEval:
    """Metrics of the model and every baseline on the same masked values.

    metrics: ``{"model_r2", "model_mse", "model_mae", "model_pearson", "conn_r2", ...,
        "loss", "num_windows"}``.
    examples: up to ``num_examples`` dicts of ``signal``, ``pred``, ``fill`` (the strongest
        baseline's), ``mask``, each (R, T), and ``index`` (rank 0 only).
    windows: with ``per_window=True``, one row per window: ``index``, ``subject_id`` and the
        sums of every method (``<method>_<sum>``), for subject bootstraps.
    """

    metrics: dict[str, float]
    examples: list[dict] = field(default_factory=list)
    windows: pd.DataFrame | None = None
    methods: tuple[str, ...] = ()


def windows_with_initial(windows: pd.DataFrame, initial: pd.DataFrame) -> pd.DataFrame:
    """Per-window sums of the model beside those of the same model at initialisation (``initial_*``
    columns), scored on the same windows with the same masks, so the ladder compares them paired."""
    if len(windows) != len(initial) or (windows["subject_id"].to_numpy() != initial["subject_id"].to_numpy()).any():
        raise RuntimeError("the model at initialisation was scored on other windows than the model")
    extra = {f"initial_{c[len('model_'):]}": initial[c].to_numpy() for c in initial.columns if c.startswith("model_")}
    return windows.assign(**extra)


def with_initial(ev: ReconstructionEval, initial: ReconstructionEval) -> ReconstructionEval:
    """``ev`` with the same model at initialisation as one more method (``initial``) of its ladder."""
    metrics = {**ev.metrics, **{f"initial_{k[len('model_'):]}": v for k, v in initial.metrics.items()
                                if k.startswith("model_")}}
    windows = windows_with_initial(ev.windows, initial.windows) if ev.windows is not None else None
    return ReconstructionEval(metrics, ev.examples, windows, (*ev.methods, "initial"))


def best_baseline(metrics: dict[str, float], methods) -> str:
    """The baseline with the highest R^2 in ``metrics``."""
    return max((m for m in methods if m != "model"), key=lambda m: metrics.get(f"{m}_r2", float("-inf")))


def r2_statistic(windows: pd.DataFrame, method: str):
    """``statistic(rows) -> R^2`` of ``method`` pooled over the given rows of ``ReconstructionEval.windows``
    (for ``SubjectBootstrap``)."""
    sse, syy = windows[f"{method}_sse"].to_numpy(), windows[f"{method}_syy"].to_numpy()
    return lambda idx: 1.0 - sse[idx].sum() / syy[idx].sum()


def ladder_verdict(metrics: dict[str, float], methods, windows: pd.DataFrame | None = None, *,
                   model_label: str = "BrainLM", n_boot: int = 1000, seed: int = 0) -> Verdict:
    """The model against the strongest baseline of a reconstruction ladder, with the paired
    subject-bootstrap interval when the per-window sums (``ReconstructionEval.windows``) are given."""
    best = best_baseline(metrics, methods)
    label = BASELINE_LABELS.get(best, best)
    if windows is None or not len(windows):
        return Verdict(model_label, metrics["model_r2"], label, metrics[f"{best}_r2"])
    boot = SubjectBootstrap(windows["subject_id"].to_numpy(), n_boot, seed)
    return compare(model_label, label, r2_statistic(windows, "model"), r2_statistic(windows, best), boot, len(windows))


@torch.no_grad()
def evaluate_reconstruction(
    model: nn.Module,
    dataset: Dataset,
    *,
    baselines: ReconstructionBaselines | None = None,
    batch_size: int = 16,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    mask_ratio: float | None = None,
    max_batches: int = 0,
    num_examples: int = 0,
    per_window: bool = False,
) -> ReconstructionEval:
    """Masked-value metrics of the model and the ladder (see the module docstring).

    Args:
        model: either model kind (``model.reconstruct``, ``model.num_tokens``).
        dataset: items with ``signal_vectors (R, T)`` and ``xyz_vectors (R, 3)``.
        baselines: the ladder (fit it on the training split for the connectivity fill).
        mask_ratio: fraction of tokens hidden (default: the model's own).
        max_batches: cap on batches per rank (0 = all).
    """
    device = torch.device(device)
    base = unwrap_model(model)
    baselines = baselines or ReconstructionBaselines()
    methods = ("model", *baselines.names)
    sampler = WindowSampler(len(dataset), batch_size)
    loader = DataLoader(IndexedDataset(dataset), batch_sampler=sampler, collate_fn=collate_windows)
    accs = {name: MaskedMetrics() for name in methods}
    examples, rows, seen = [], [], 0
    was_training = model.training
    model.eval()
    for b, batch in enumerate(loader):
        if max_batches and b >= max_batches:
            break
        idx = batch["index"]  # (B,), -1 = padding
        x = batch["signal_vectors"].to(device)  # (B, R, T)
        xyz = batch["xyz_vectors"].to(device)
        B, R, T = x.shape
        noise = window_noise([(seed, EVAL_MASK, max(int(i), 0)) for i in idx], base.num_tokens(R, T)).to(device)
        with autocast_context(device, dtype):
            out = base.reconstruct(x, xyz, noise=noise, mask_ratio=mask_ratio)
        x, pred, mask = x.float().cpu(), out.pred.float().cpu(), out.mask.cpu()
        weight = (idx >= 0).to(torch.float64)
        fills = baselines.predict(x, mask)
        sums = {name: accs[name].update(p, x, mask, weight) for name, p in (("model", pred), *fills.items())}
        seen += int(weight.sum())
        if per_window:
            rows += _window_rows(batch, idx, sums)
        strongest = "conn" if "conn" in fills else "interp"
        for j in range(B):
            if len(examples) < num_examples and idx[j] >= 0:
                examples.append({"signal": x[j], "pred": pred[j], "fill": fills[strongest][j], "mask": mask[j],
                                 "index": int(idx[j]), "fill_name": strongest})
    model.train(was_training)
    return ReconstructionEval(_reduce(accs, base, device, seen), examples,
                              pd.DataFrame(rows) if per_window else None, methods)


def _window_rows(batch: dict, idx: torch.Tensor, sums: dict[str, torch.Tensor]) -> list[dict]:
    rows = []
    for j, i in enumerate(idx.tolist()):
        if i < 0:
            continue
        row = {"index": i, "subject_id": batch["subject_id"][j] if "subject_id" in batch else str(i)}
        for name, s in sums.items():
            row.update({f"{name}_{k}": float(v) for k, v in zip(SUMS, s[j].tolist())})
        rows.append(row)
    return rows


def _reduce(accs: dict[str, MaskedMetrics], model: nn.Module, device: torch.device, seen: int) -> dict[str, float]:
    sums = torch.stack([a.sums for a in accs.values()])  # (methods, 8)
    count = torch.tensor([float(seen)], dtype=torch.float64)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        sums = all_reduce_sum(sums.to(device)).cpu()
        count = all_reduce_sum(count.to(device)).cpu()
    metrics: dict[str, float] = {}
    for k, name in enumerate(accs):
        for key, value in metrics_from_sums(sums[k].tolist()).items():
            if key != "n":
                metrics[f"{name}_{key}"] = value
    loss_fn = getattr(getattr(model, "config", None), "loss_fn", "mse")
    metrics["loss"] = metrics["model_mae"] if loss_fn == "mae" else metrics["model_mse"]
    metrics["num_windows"] = int(count.item())
    return metrics


def format_ladder(metrics: dict[str, float], methods, model_label: str = "BrainLM") -> str:
    """The model and every baseline, one row each: R^2, MSE, MAE, Pearson r (strongest baseline marked)."""
    best = best_baseline(metrics, methods)
    lines = [f"{'':<34}{'R^2':>8}{'MSE':>8}{'MAE':>8}{'r':>8}"]
    for name in methods:
        label = model_label if name == "model" else BASELINE_LABELS.get(name, name) + (" *" if name == best else "")
        row = [metrics[f"{name}_{m}"] for m in ("r2", "mse", "mae", "pearson")]
        lines.append(f"{label:<34}" + "".join(f"{v:>8.3f}" if v == v else f"{'-':>8}" for v in row))
    return "\n".join(lines)
