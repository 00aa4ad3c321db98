"""The pretraining loop: ``pretrain(config) -> RunResult``, and ``evaluate``.

Data protocol: any map-style ``torch.utils.data.Dataset`` whose items are dicts with
``signal_vectors (R, T)`` and ``xyz_vectors (R, 3)`` float32 tensors, plus optional IDs
(``subject_id``, ``recording_id``, ...). Given ``config.data``, the train and validation
splits of a ``brainlm.data`` store are used.

Reproducibility. Every random draw comes from a generator seeded by its position:
window order from (seed, epoch), the masking noise of a window from (seed, micro-batch,
position of the window in the global batch), dropout from (seed, micro-batch, rank). A run
therefore resumes exactly from (epoch, samples consumed in the epoch), and N processes with
batch b see the same windows and masks as one process with batch N x b.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from brainlm.errors import MissingInputError, UserError
from brainlm.model import BrainLMConfig, BrainLMForPretraining
from brainlm.train import checkpointing as ckpt
from brainlm.train.config import TrainConfig, resolve_config
from brainlm.train.distributed import (
    DistInfo,
    all_reduce_sum,
    autocast_context,
    barrier,
    destroy_distributed,
    init_distributed,
    no_sync,
    resolve_device,
    resolve_precision,
    unwrap_model,
    wrap_model,
)
from brainlm.train.metrics import BASELINES, MaskedMetrics, baseline_predictions
from brainlm.train.optim import build_optimizer, build_scheduler, scaled_lr

__all__ = ["pretrain", "run_pretrain", "evaluate", "RunResult", "NonFiniteLossError", "build_datasets"]

_ID_KEYS = ("subject_id", "recording_id", "session_id", "run_id", "window_start")
# Tags that keep the seeded streams apart.
_TRAIN_MASK, _DROPOUT, _EVAL_MASK = 0, 1, 2


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message names the step and the batch."""


@dataclass
class RunResult:
    """What ``pretrain`` returns (on every rank)."""

    run_dir: Path
    step: int  # optimiser steps done
    checkpoint: Path | None  # the last checkpoint folder
    best: Path | None  # folder of the model with the best validation loss
    metrics: dict[str, Any]  # the last validation metrics
    metrics_file: Path
    plots: list[Path] = field(default_factory=list)
    train_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss) logged by this call


# ---------------------------------------------------------------------------------------------
# Seeds, batches, noise
# ---------------------------------------------------------------------------------------------


def _seed_of(*parts: int) -> int:
    """A 63-bit seed from a tuple of non-negative integers (SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _noise(keys: list[tuple[int, ...]], num_tokens: int) -> torch.Tensor:
    """(B, L) masking noise; row i depends only on ``keys[i]``."""
    rows = [torch.rand(num_tokens, generator=torch.Generator().manual_seed(_seed_of(*k))) for k in keys]
    return torch.stack(rows)  # (B, L)


class _Indexed(Dataset):
    """Adds the dataset index to every item, so batches can be named in error messages."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        return {**self.dataset[i], "index": int(i)}


def _collate(items: list[dict]) -> dict:
    """Stack tensors, turn numbers into tensors, keep everything else as lists."""
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if torch.is_tensor(values[0]):
            out[key] = torch.stack(values)
        elif isinstance(values[0], (int, float, np.integer, np.floating)) and not isinstance(values[0], bool):
            out[key] = torch.tensor(np.asarray(values))
        else:
            out[key] = values
    return out


def _set_epoch(dataset: Dataset, epoch: int) -> None:
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)


@dataclass
class _Position:
    """Where the train data stream is: epoch, and micro-batches of it already consumed."""

    epoch: int = 0
    batch_in_epoch: int = 0


def _train_batches(dataset: Dataset, pos: _Position, *, seed: int, batch: int, rank: int, world: int,
                   num_workers: int) -> Iterator[dict]:
    """Micro-batches forever; ``pos`` is advanced as they are handed out.

    Each epoch is a permutation of the dataset seeded by (seed, epoch) and cut into global
    micro-batches of ``batch x world`` windows (the incomplete tail is dropped); rank r takes
    the r-th slice of ``batch`` windows of each.
    """
    n = len(dataset)
    global_batch = batch * world
    per_epoch = n // global_batch
    indexed = _Indexed(dataset)
    while True:
        _set_epoch(dataset, pos.epoch)
        order = np.random.default_rng((seed, pos.epoch)).permutation(n)
        slices = [order[b * global_batch + rank * batch: b * global_batch + (rank + 1) * batch].tolist()
                  for b in range(pos.batch_in_epoch, per_epoch)]
        loader = DataLoader(indexed, batch_sampler=slices, collate_fn=_collate, num_workers=num_workers)
        for item in loader:
            pos.batch_in_epoch += 1
            yield item
        pos.epoch, pos.batch_in_epoch = pos.epoch + 1, 0


def _batch_ids(batch: dict) -> str:
    parts = [f"index={list(map(int, batch['index']))}"]
    for key in _ID_KEYS:
        if key in batch:
            values = batch[key].tolist() if torch.is_tensor(batch[key]) else list(batch[key])
            parts.append(f"{key}={values}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def build_datasets(config: TrainConfig, splits: tuple[str, ...] = ("train", "validation")) -> list[Dataset]:
    """Window datasets of ``config.data`` (a ``brainlm.data`` store) for the given splits.

    Training windows follow ``train_mode``; validation and test windows are fixed or sliding,
    never random. Sharding over processes is done by the training loop, not the dataset.
    """
    if config.data is None:
        raise UserError("no data: pass a store folder (--data STORE) or datasets")
    from brainlm.data import WindowDataset, open_store

    store = open_store(config.data)
    out = []
    for split in splits:
        mode = config.train_mode if split == "train" else config.eval_mode
        stride = (config.train_stride if split == "train" else config.eval_stride) or None
        out.append(WindowDataset(store, split, window=config.window, mode=mode, stride=stride, seed=config.seed))
    return out


def _check_dataset(dataset: Dataset | None, split: str, window: int) -> int:
    """The region count R of a dataset; clear errors for empty splits and wrong shapes."""
    if dataset is None or len(dataset) == 0:
        raise UserError(f"the {split} split is empty: it has no windows of {window} timepoints")
    item = dataset[0]
    if not isinstance(item, dict) or "signal_vectors" not in item or "xyz_vectors" not in item:
        raise UserError(f"{split} items must be dicts with 'signal_vectors' (R, T) and 'xyz_vectors' (R, 3)")
    R, T = item["signal_vectors"].shape
    if T != window:
        raise UserError(f"{split} windows have {T} timepoints but the config says window={window}")
    if tuple(item["xyz_vectors"].shape) != (R, 3):
        raise UserError(f"{split} xyz_vectors has shape {tuple(item['xyz_vectors'].shape)}, expected ({R}, 3)")
    return R


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 16,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    max_batches: int = 0,
    num_examples: int = 0,
    dist_info: DistInfo | None = None,
) -> tuple[dict[str, float], list[dict]]:
    """Masked-patch metrics of the model and the baselines on the same masks.

    The mask of window i is drawn from (seed, i), so results do not depend on batch size or
    process count. Under torchrun each rank takes every world-size-th window and the sums are
    all-reduced.

    Returns:
        ``({"loss", "model_mse", "model_r2", ..., "interp_r2", ..., "num_windows"}, examples)``
        where examples are up to ``num_examples`` dicts of ``signal (R, T)``, ``pred (R, P, W)``,
        ``mask (R, P)`` (rank 0 only).
    """
    info = dist_info or DistInfo()
    device = torch.device(device)
    base = unwrap_model(model)
    cfg: BrainLMConfig = base.config
    W = cfg.timepoint_patching_size
    n = len(dataset)
    mine = list(range(info.rank, n, info.world_size))
    per_rank = -(-n // info.world_size)
    padded = mine + [-1] * (per_rank - len(mine))  # -1: padding so every rank runs as many batches
    batches = [padded[i:i + batch_size] for i in range(0, len(padded), batch_size)]
    if max_batches:
        batches = batches[:max_batches]
    accs = {name: MaskedMetrics() for name in ("model", *BASELINES)}
    examples: list[dict] = []
    was_training = model.training
    model.eval()
    for idx in batches:
        items = [dataset[max(i, 0)] for i in idx]
        batch = _collate(items)
        x = batch["signal_vectors"].to(device)  # (B, R, T)
        xyz = batch["xyz_vectors"].to(device)
        B, R, T = x.shape
        noise = _noise([(seed, _EVAL_MASK, max(i, 0)) for i in idx], R * (T // W)).to(device)
        with autocast_context(device, dtype):
            out = model(x, xyz, noise=noise)
        target = x.view(B, R, T // W, W).float()  # (B, R, P, W)
        weight = torch.tensor([i >= 0 for i in idx], dtype=torch.float64)
        pred = out.logits.float()
        accs["model"].update(pred, target, out.mask, weight)
        for name, base_pred in baseline_predictions(target, out.mask).items():
            accs[name].update(base_pred, target, out.mask, weight)
        for j in range(B):
            if len(examples) < num_examples and idx[j] >= 0:
                examples.append({"signal": x[j].float().cpu(), "pred": pred[j].cpu(), "mask": out.mask[j].cpu(),
                                 "index": idx[j]})
    model.train(was_training)
    sums = torch.stack([a.sums for a in accs.values()])  # (4, 8)
    if info.world_size > 1:
        sums = all_reduce_sum(sums.to(device)).cpu()
    metrics: dict[str, float] = {}
    for k, name in enumerate(accs):
        acc = MaskedMetrics()
        acc.merge(sums[k])
        for key, value in acc.compute().items():
            if key != "n":
                metrics[f"{name}_{key}"] = value
    metrics["loss"] = metrics["model_mse"] if cfg.loss_fn == "mse" else metrics["model_mae"]
    metrics["num_windows"] = n if not max_batches else min(n, max_batches * batch_size * info.world_size)
    return metrics, examples


# ---------------------------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------------------------


class _Loggers:
    """metrics.jsonl (always), metrics.csv, and TensorBoard / W&B when installed and asked for."""

    def __init__(self, run_dir: Path, config: TrainConfig, active: bool, keep_until: int | None):
        self.path = run_dir / "metrics.jsonl"
        self.active = active
        self.tb = self.wandb = None
        if not active:
            return
        if keep_until is not None and self.path.exists():
            # A resumed run repeats the steps after its checkpoint: drop their old records.
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= keep_until]
            self.path.write_text("".join(line + "\n" for line in kept))
        if config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                warnings.warn("tensorboard=true but TensorBoard is not installed; logging to metrics.jsonl only")
        if config.wandb:
            try:
                import wandb

                self.wandb = wandb.init(project=config.wandb_project, dir=str(run_dir), config=config.to_dict(),
                                        name=run_dir.name, resume="allow")
            except ImportError:
                warnings.warn("wandb=true but wandb is not installed; logging to metrics.jsonl only")

    def log(self, record: dict[str, Any]) -> None:
        if not self.active:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        split, step = record.get("split", "train"), record["step"]
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k not in ("step",)}
        if self.tb is not None:
            for k, v in numbers.items():
                self.tb.add_scalar(f"{split}/{k}", v, step)
        if self.wandb is not None:
            self.wandb.log({f"{split}/{k}": v for k, v in numbers.items()}, step=step)

    def write_csv(self) -> Path | None:
        if not self.active or not self.path.exists():
            return None
        import pandas as pd

        records = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        csv = self.path.with_suffix(".csv")
        pd.DataFrame.from_records(records).to_csv(csv, index=False)
        return csv

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``RUN/metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


# ---------------------------------------------------------------------------------------------
# The run folder
# ---------------------------------------------------------------------------------------------


def _diff(a: dict, b: dict) -> list[str]:
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _check_run_dir(config: TrainConfig, run_dir: Path, resume: bool, model_config: BrainLMConfig) -> dict | None:
    """Refuse to overwrite a run; on resume, check compatibility and load the latest checkpoint."""
    saved_cfg_path = run_dir / "train_config.json"
    if not resume:
        if saved_cfg_path.exists() or ckpt.find_checkpoints(run_dir):
            raise UserError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --out")
        return None
    if not saved_cfg_path.exists():
        raise MissingInputError(f"{run_dir} is not a run folder: no train_config.json")
    saved = TrainConfig.load(saved_cfg_path)
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is None:
        saved_model = saved.model_config(model_config.num_brain_voxels).to_dict()
    else:
        saved_model = json.loads((latest / "config.json").read_text())
    new_model = model_config.to_dict()
    if saved_model.get("num_brain_voxels") != new_model["num_brain_voxels"]:
        raise UserError(
            f"the data have {new_model['num_brain_voxels']} regions but the checkpoint in {run_dir} was trained on "
            f"{saved_model.get('num_brain_voxels')}; use a store of the same atlas"
        )
    differences = _diff(saved_model, new_model)
    if differences:
        raise UserError(f"{run_dir} was trained with an incompatible model config:\n  " + "\n  ".join(differences))
    return ckpt.load_checkpoint(latest) if latest is not None else None


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------
# pretrain
# ---------------------------------------------------------------------------------------------


def pretrain(
    config: TrainConfig,
    *,
    resume: bool = False,
    train_dataset: Dataset | None = None,
    val_dataset: Dataset | None = None,
) -> RunResult:
    """Pretrain BrainLM with masked-patch reconstruction; the same call on 1 or N processes.

    Args:
        config: training settings; ``config.out_dir`` is the run folder.
        resume: continue the run in ``config.out_dir`` from its latest checkpoint.
        train_dataset, val_dataset: datasets following the protocol of the module docstring;
            default: the splits of the store ``config.data``.

    Returns:
        A :class:`RunResult`.

    Raises:
        ValueError: bad input (empty split, batch larger than the data, wrong region count,
            incompatible or existing run folder, corrupt checkpoint); nothing is written then.
        NonFiniteLossError: the loss became NaN / inf; the last good checkpoint is kept.
    """
    info = init_distributed(config.device)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = resolve_device(config.device, info.local_rank)
    dtype = resolve_precision(config.precision, device)
    run_dir = Path(config.out_dir)

    # -- data and every check, before anything is written -------------------------------------
    if train_dataset is None or val_dataset is None:
        built = build_datasets(config)
        train_dataset = train_dataset if train_dataset is not None else built[0]
        val_dataset = val_dataset if val_dataset is not None else built[1]
    R = _check_dataset(train_dataset, "train", config.window)
    R_val = _check_dataset(val_dataset, "validation", config.window)
    if R_val != R:
        raise UserError(f"train windows have {R} regions but validation windows have {R_val}")
    micro_global = config.batch_size * info.world_size
    if micro_global > len(train_dataset):
        raise UserError(
            f"batch of {micro_global} windows ({config.batch_size} x {info.world_size} processes) is larger than the "
            f"train split ({len(train_dataset)} windows); lower batch_size"
        )
    model_config = config.model_config(num_regions=R)
    if config.init_from:
        from brainlm.checkpoint import read_config

        raw, _ = read_config(config.init_from)
        if raw.get("num_brain_voxels") != R:
            raise UserError(f"the data have {R} regions but the checkpoint {config.init_from} was trained on "
                             f"{raw.get('num_brain_voxels')}; use a store of the same atlas")
    state = _check_run_dir(config, run_dir, resume, model_config)
    barrier()

    # -- model, optimiser --------------------------------------------------------------------------
    torch.manual_seed(config.seed)  # identical initial weights on every rank
    model = BrainLMForPretraining(model_config)
    if config.init_from and state is None:
        source = BrainLMForPretraining.from_pretrained(config.init_from)
        try:
            model.load_state_dict(source.state_dict())
        except RuntimeError as err:
            raise UserError(f"the weights in {config.init_from} do not fit the configured model "
                             f"(set --model to the same size): {str(err).splitlines()[0]}") from err
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model = model.to(device).train()
    mode = "fsdp" if config.fsdp and info.is_distributed else ("ddp" if info.is_distributed else "none")
    if config.fsdp and not info.is_distributed:
        warnings.warn("fsdp=true on a single process: nothing to shard, training unsharded")
    model = wrap_model(model, mode, device)
    global_batch = micro_global * config.grad_accum_steps
    peak_lr = config.lr if config.lr is not None else scaled_lr(config.base_lr, global_batch)
    optimizer = build_optimizer(model, peak_lr, config.weight_decay, (config.beta1, config.beta2))
    warmup = config.warmup_steps if config.warmup_steps is not None else round(config.warmup_ratio * config.max_steps)
    scheduler = build_scheduler(optimizer, config.max_steps, warmup, config.min_lr_ratio)
    if config.compile:
        model = torch.compile(model)

    # -- resume ------------------------------------------------------------------------------------
    step, pos, best_loss, best_step = 0, _Position(), math.inf, None
    if state is not None:
        ckpt.restore_checkpoint(state, unwrap_model(model), optimizer, scheduler)
        ts = state["trainer_state"]
        step = ts["step"]
        pos = _Position(ts["epoch"], ts["samples_in_epoch"] // micro_global)
        if ts["samples_in_epoch"] % micro_global:
            warnings.warn("the global batch changed since the checkpoint; resuming at the nearest batch boundary")
        best_loss, best_step = ts.get("best_loss", math.inf), ts.get("best_step")
        if len(state["rng"]) > info.rank:
            ckpt.restore_rng(state["rng"][info.rank])
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.clean_partial(run_dir)
        _write_text_atomic(run_dir / "train_config.json", json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
    barrier()
    config_json = json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"
    loggers = _Loggers(run_dir, config, info.is_main, keep_until=step if resume else None)

    # -- the loop ----------------------------------------------------------------------------------
    batches = _train_batches(train_dataset, pos, seed=config.seed, batch=config.batch_size, rank=info.rank,
                             world=info.world_size, num_workers=config.num_workers)
    W = model_config.timepoint_patching_size
    eval_bs = config.eval_batch_size or config.batch_size
    last_ckpt = ckpt.latest_checkpoint(run_dir)
    metrics: dict[str, Any] = {}
    examples: list[dict] = []
    train_losses: list[tuple[int, float]] = []
    bar = None
    if info.is_main and config.progress:
        from tqdm import tqdm

        bar = tqdm(total=config.max_steps, initial=step, desc="pretrain", unit="step", dynamic_ncols=True)

    def run_eval() -> None:
        nonlocal metrics, examples, best_loss, best_step
        metrics, examples = evaluate(model, val_dataset, batch_size=eval_bs, seed=config.seed, device=device,
                                     dtype=dtype, max_batches=config.eval_max_batches, num_examples=4, dist_info=info)
        loggers.log({"step": step, "split": "validation", **metrics})
        if metrics["loss"] < best_loss:
            best_loss, best_step = metrics["loss"], step
            ckpt.save_best(run_dir, model, {"step": step, **metrics})

    def save() -> Path:
        trainer_state = {
            "step": step, "epoch": pos.epoch, "samples_in_epoch": pos.batch_in_epoch * micro_global,
            "world_size": info.world_size, "global_batch": global_batch, "best_loss": best_loss,
            "best_step": best_step, "num_regions": R,
        }
        return ckpt.save_checkpoint(run_dir, step, model, optimizer, scheduler, trainer_state, config_json,
                                    config.keep_last)

    t_last, windows_since = time.perf_counter(), 0
    stop = min(config.stop_at_step or config.max_steps, config.max_steps)
    try:
        while step < stop:
            loss_sum = torch.zeros((), dtype=torch.float64)
            for micro in range(config.grad_accum_steps):
                batch = next(batches)
                g = step * config.grad_accum_steps + micro  # global micro-batch number
                x = batch["signal_vectors"].to(device, non_blocking=True)  # (B, R, T)
                xyz = batch["xyz_vectors"].to(device, non_blocking=True)  # (B, R, 3)
                B, _, T = x.shape
                noise = _noise([(config.seed, _TRAIN_MASK, g, info.rank * config.batch_size + j) for j in range(B)],
                               R * (T // W)).to(device)
                torch.manual_seed(_seed_of(config.seed, _DROPOUT, g, info.rank))
                with no_sync(model, skip=micro < config.grad_accum_steps - 1):
                    with autocast_context(device, dtype):
                        # Only masked patches enter the loss: the decoder skips visible queries.
                        out = model(x, xyz, noise=noise, decode_visible=False)
                    loss = out.loss
                    bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=device)
                    if info.world_size > 1:
                        all_reduce_sum(bad)
                    if bad.item():
                        _raise_non_finite(loss, step, micro, batch, info, last_ckpt)
                    (loss / config.grad_accum_steps).backward()
                loss_sum += loss.detach().double().cpu()
            grad_norm = float("nan")
            if config.max_grad_norm > 0:
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
            lr_now = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            windows_since += global_batch

            if config.log_every and (step % config.log_every == 0 or step == stop):
                loss_mean = loss_sum / config.grad_accum_steps
                if info.world_size > 1:
                    loss_mean = all_reduce_sum(loss_mean.to(device)).cpu() / info.world_size
                now = time.perf_counter()
                speed = windows_since / max(now - t_last, 1e-9)
                t_last, windows_since = now, 0
                train_losses.append((step, float(loss_mean)))
                loggers.log({"step": step, "split": "train", "loss": float(loss_mean), "lr": lr_now,
                             "grad_norm": grad_norm, "windows_per_s": speed, "epoch": pos.epoch})
                if bar is not None:
                    bar.set_postfix(loss=f"{float(loss_mean):.4f}", win_s=f"{speed:.0f}")
            if bar is not None:
                bar.update(1)
            final = step == stop
            if final or (config.eval_every and step % config.eval_every == 0):
                run_eval()
                loggers.write_csv()
            if final or (config.save_every and step % config.save_every == 0):
                last_ckpt = save()
    finally:
        if bar is not None:
            bar.close()
        loggers.close()

    if not metrics:  # resumed a run that had already finished
        run_eval()
    plots: list[Path] = []
    if info.is_main and config.plots:
        from brainlm.train.plots import plot_curves, plot_reconstructions

        plots = [plot_curves(read_metrics(run_dir), run_dir / "plots" / "curves.png"),
                 plot_reconstructions(examples, W, run_dir / "plots" / "reconstructions.png")]
    loggers.write_csv()
    best = run_dir / "best"
    return RunResult(run_dir=run_dir, step=step, checkpoint=last_ckpt, best=best if best.exists() else None,
                     metrics=metrics, metrics_file=run_dir / "metrics.jsonl", plots=plots, train_losses=train_losses)


def _raise_non_finite(loss, step: int, micro: int, batch: dict, info: DistInfo, last_ckpt: Path | None) -> None:
    ids = _batch_ids(batch)
    if info.world_size > 1:
        import torch.distributed as dist

        gathered: list[Any] = [None] * info.world_size
        dist.all_gather_object(gathered, ids)
        ids = "; ".join(f"rank {r}: {s}" for r, s in enumerate(gathered))
    kept = f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
    raise NonFiniteLossError(
        f"non-finite loss ({float(loss.detach())}) at step {step + 1} (micro-batch {micro}); batch: {ids}; {kept}"
    )


def run_pretrain(
    preset: str | None = None,
    *,
    data: str | None = None,
    out: str | None = None,
    resume: str | None = None,
    fsdp: bool = False,
    overrides: dict[str, Any] | None = None,
) -> RunResult:
    """``brainlm pretrain``: resolve the settings, train, print where the results are."""
    changes = dict(overrides or {})
    if data is not None:
        changes["data"] = data
    if out is not None:
        changes["out_dir"] = out
    if fsdp:
        changes["fsdp"] = True
    config = resolve_config(preset, changes, resume=resume)
    result = pretrain(config, resume=resume is not None)
    if init_distributed().is_main:
        m = result.metrics
        print(f"step {result.step}: validation masked-patch R^2 model {m['model_r2']:.3f} | interp "
              f"{m['interp_r2']:.3f} | mean {m['mean_r2']:.3f} | zero {m['zero_r2']:.3f}")
        print(f"checkpoint: {result.checkpoint}\nbest: {result.best}\nmetrics: {result.metrics_file}")
        for p in result.plots:
            print(f"plot: {p}")
    destroy_distributed()
    return result
