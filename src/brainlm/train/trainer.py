"""The pretraining loop as a small trainer: build, restore, train step, evaluate, save.

Data protocol: any map-style ``torch.utils.data.Dataset`` whose items are dicts with
``signal_vectors (R, T)`` and ``xyz_vectors (R, 3)`` float32 tensors, plus optional IDs
(``subject_id``, ``recording_id``, ...). Given ``config.data``, the train and validation
splits of a ``brainlm.data`` store are used. Batches come from the tested loader:
:class:`~brainlm.data.sampler.WindowSampler` (which windows each process sees, resumable)
and :func:`~brainlm.data.loader.collate_windows`.

Reproducibility. Every random draw comes from a generator seeded by its position
(:mod:`brainlm.seeding`): window order from (seed, epoch), the masking noise of a window from
(seed, micro-batch, position of the window in the global batch), dropout from (seed,
micro-batch, rank). A run therefore resumes exactly from (epoch, batches consumed in the
epoch), and N processes with batch b see the same windows and masks as one process with
batch N x b.

The run folder is locked while a run writes it (:class:`brainlm.io.OutputLock`): a second
``pretrain`` into the same ``--out`` is refused. Validation scores the model next to the
baseline ladder (:mod:`brainlm.evaluate`), whose connectivity fill is fitted on the train split.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from brainlm.hub import find_checkpoints, newest_checkpoint, read_model_config
from brainlm.data.loader import collate_windows
from brainlm.data.sampler import IndexedDataset, WindowSampler
from brainlm.distributed import (
    DistInfo,
    all_reduce_sum,
    autocast_context,
    barrier,
    broadcast_object,
    init_distributed,
    no_sync,
    resolve_device,
    resolve_precision,
    unwrap_model,
    wrap_model,
)
from brainlm.errors import InputError, MissingInputError, OutputLockedError, UserError
from brainlm.evaluate.baselines import ReconstructionBaselines
from brainlm.evaluate.reconstruction import evaluate_reconstruction
from brainlm.memory import check_memory
from brainlm.io import OutputLock, atomic_write_json, atomic_write_text, json_line, read_json, write_csv
from brainlm.model import BrainLMForPretraining, masking_noise
from brainlm.progress import progress
from brainlm.seeding import DROPOUT, MASK_SCHEME, TRAIN_MASK, seed_of, window_noise
from brainlm.train import checkpointing as ckpt
from brainlm.train.config import TrainConfig
from brainlm.train.optim import build_optimizer, build_scheduler, scaled_lr

__all__ = ["Trainer", "pretrain", "RunResult", "NonFiniteLossError", "build_datasets", "fit_baselines", "read_metrics",
           "structured_noise", "connectivity_embedding", "init_region_embedding"]

_ID_KEYS = ("subject_id", "recording_id", "session_id", "run_id", "window_start")


class NonFiniteLossError(UserError, RuntimeError):
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
    # per-window sums of the last validation by this call (single process), for the verdict's interval
    validation_windows: Any = None


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def build_datasets(config: TrainConfig, splits: tuple[str, ...] = ("train", "validation"), store=None) -> list[Dataset]:
    """Window datasets of ``config.data`` (a ``brainlm.data`` store), or of an opened ``store``
    (a cross-validation fold's ``Store.resplit``), for the given splits.

    Training windows follow ``train_mode``; validation and test windows are fixed or sliding,
    never random. Which windows a process sees is the sampler's job.
    """
    from brainlm.data import WindowDataset, open_store

    if store is None:
        if config.data is None:
            raise UserError("no data: pass a store folder (--data STORE)")
        store = open_store(config.data)
    out = []
    for split in splits:
        mode = config.train_mode if split == "train" else config.eval_mode
        stride = (config.train_stride if split == "train" else config.eval_stride) or None
        balance = config.train_balance if split == "train" else "window"
        out.append(WindowDataset(store, split, window=config.window, mode=mode, stride=stride, seed=config.seed,
                                 balance=balance))
    return out


def fit_baselines(train_dataset: Dataset, max_windows: int = 4096) -> ReconstructionBaselines:
    """The baseline ladder fitted on the training data: whole recordings of a store's train
    split, or (any other dataset) up to ``max_windows`` of its windows."""
    store, split = getattr(train_dataset, "store", None), getattr(train_dataset, "split", None)
    if store is not None:
        return ReconstructionBaselines().fit(x for _, x in store.iter_recordings(split))
    n = min(len(train_dataset), max_windows)
    return ReconstructionBaselines().fit(train_dataset[i]["signal_vectors"].numpy().T for i in range(n))


def data_identity(dataset: Dataset) -> dict | None:
    """What a run trains on, to recognise other data on resume: the store folder, its
    fingerprint (which changes with its inputs and options, normalisation included) and the
    train subjects (a cross-validation fold's); None for datasets that are not a store's."""
    store = getattr(dataset, "store", None)
    fingerprint = getattr(store, "manifest", {}).get("fingerprint") if store is not None else None
    if fingerprint is None:
        return None
    return {"store": str(store.path), "fingerprint": fingerprint, "train_subjects": sorted(map(str, store.splits["train"]))}


def _check_dataset(dataset: Dataset | None, split: str, window: int) -> int:
    """The region count R of a dataset; clear errors for empty splits and wrong shapes."""
    if dataset is None or len(dataset) == 0:
        raise UserError(f"the {split} split is empty: it has no windows of {window} timepoints (--window)")
    item = dataset[0]
    if not isinstance(item, dict) or "signal_vectors" not in item or "xyz_vectors" not in item:
        raise UserError(f"{split} items must be dicts with 'signal_vectors' (R, T) and 'xyz_vectors' (R, 3)")
    R, T = item["signal_vectors"].shape
    if T != window:
        raise UserError(f"{split} windows have {T} timepoints but the config says window={window}")
    xyz = item["xyz_vectors"]
    if tuple(xyz.shape) != (R, 3):
        raise UserError(f"{split} xyz_vectors has shape {tuple(xyz.shape)}, expected ({R}, 3)")
    if not torch.isfinite(torch.as_tensor(xyz)).all():
        raise InputError(f"{split} region coordinates contain NaN or Inf; fix the store's coordinates")
    return R


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``RUN/metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def structured_noise(noise: torch.Tensor, num_regions: int, scheme: str, choice: torch.Tensor | None = None) -> torch.Tensor:
    """Turn (B, R * P) token noise into noise whose argsort masks whole groups of tokens.

    ``"patch"``: unchanged (every token on its own, the original). ``"region"``: all patches of
    a region get the rank of their region, so whole regions are kept or masked (the cut splits
    at most one region). ``"time"``: all regions of a patch index get the rank of that index,
    so whole patch columns are kept or masked across regions. ``"mixed"``: window b uses scheme
    ``choice[b]`` (0 patch, 1 region, 2 time). Within a group, token order stays random.
    """
    B, L = noise.shape
    x = noise.view(B, num_regions, L // num_regions)  # (B, R, P), values in [0, 1)

    def rank(v: torch.Tensor) -> torch.Tensor:
        return v.argsort(-1).argsort(-1).to(noise.dtype)

    if scheme == "patch":
        return noise
    region = (rank(x[:, :, 0])[:, :, None] + x).flatten(1)  # (B, L): integer part = region rank
    time = (rank(x[:, 0, :])[:, None, :] + x).flatten(1)  # (B, L): integer part = patch-index rank
    if scheme == "region":
        return region
    if scheme == "time":
        return time
    if scheme == "mixed":
        if choice is None or choice.shape != (B,):
            raise ValueError("scheme 'mixed' needs choice (B,) with values 0, 1, 2")
        return torch.where((choice == 2)[:, None], time, torch.where((choice == 1)[:, None], region, noise))
    raise ValueError(f"unknown mask scheme {scheme!r}")


def connectivity_embedding(covariance, dim: int) -> torch.Tensor:
    """(R, dim) region vectors whose inner products reproduce a region covariance (up to one factor).

    Rows are the regions' coordinates on the leading principal axes, scaled by the square root
    of their variance (``e_i . e_j = cov_ij`` exactly when dim >= R); the table is scaled to an
    RMS of 1, and columns beyond R are 0.
    """
    cov = torch.as_tensor(covariance, dtype=torch.float64)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    evals, evecs = evals.flip(0).clamp(min=0), evecs.flip(1)
    k = min(dim, cov.shape[0])
    table = torch.zeros(cov.shape[0], dim, dtype=torch.float64)
    table[:, :k] = evecs[:, :k] * evals[:k].sqrt()
    return (table / table.pow(2).mean().sqrt().clamp(min=1e-12)).float()


@torch.no_grad()
def init_region_embedding(model: BrainLMForPretraining, covariance) -> None:
    """``region_embedding_init="connectivity"``: the learned region tables of the encoder and the
    decoder start at :func:`connectivity_embedding` of the train split's covariance, and both
    coordinate projections at 0, so at first region identity is the covariance structure alone
    (everything still learns)."""
    for part in (model.encoder, model.decoder):
        part.region_embedding.copy_(connectivity_embedding(covariance, part.region_embedding.shape[1]))
        part.xyz_proj.weight.zero_()
        part.xyz_proj.bias.zero_()


# ---------------------------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------------------------


class _Loggers:
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

    def write_csv(self) -> None:
        if self.active and self.path.exists():
            import pandas as pd

            write_csv(pd.DataFrame.from_records(read_metrics(self.path.parent)), self.path.with_suffix(".csv"))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------


def _diff(a: dict, b: dict) -> list[str]:
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


class Trainer:
    """One pretraining run: ``Trainer(config).fit()`` (the same call on 1 or N processes).

    Args:
        config: training settings; ``config.out_dir`` is the run folder.
        resume: continue the run in ``config.out_dir`` from its latest checkpoint.
        train_dataset, val_dataset: datasets following the module's data protocol; default:
            the splits of the store ``config.data``.
    """

    def __init__(self, config: TrainConfig, *, resume: bool = False, train_dataset: Dataset | None = None,
                 val_dataset: Dataset | None = None):
        self.config, self.resume = config, resume
        self.train_dataset, self.val_dataset = train_dataset, val_dataset
        self.run_dir = Path(config.out_dir)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.best_loss, self.best_step = math.inf, None
        self.metrics: dict[str, Any] = {}
        self.examples: list[dict] = []
        self.last_ckpt: Path | None = None
        self.lock: OutputLock | None = None
        self.val_windows = None

    # -- build -----------------------------------------------------------------------------------

    def build(self) -> None:
        """Data, every check, the lock, the model and the optimiser; nothing is written before the checks pass."""
        c = self.config
        self.info: DistInfo = init_distributed(c.device)
        if c.num_threads:
            torch.set_num_threads(c.num_threads)
        self.device = resolve_device(c.device, self.info.local_rank)
        self.dtype = resolve_precision(c.precision, self.device)
        self._build_data()
        self.model_config = c.model_config(num_regions=self.num_regions)
        self.micro_global = c.batch_size * self.info.world_size
        check_memory(16 * self.model_config.num_parameters() +
                     4 * self.model_config.activation_elements(c.batch_size, self.num_regions, c.window),
                     self.device, f"training this model ({self.model_config.num_parameters() / 1e6:.0f}M parameters, "
                     f"batch {c.batch_size})", "use a smaller --model.* size or --batch_size")
        self._check_init_from()
        self._take_lock()
        self.state = self._check_run_dir()
        self.baselines = fit_baselines(self.train_dataset)
        torch.manual_seed(c.seed)  # identical initial weights on every rank
        model = BrainLMForPretraining(self.model_config)
        if c.init_from and self.state is None:
            self._load_init(model)
        elif c.region_embedding_init == "connectivity" and self.state is None:
            init_region_embedding(model, self.baselines.covariance_)
        if c.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        mode = "fsdp" if c.fsdp and self.info.is_distributed else ("ddp" if self.info.is_distributed else "none")
        if c.fsdp and not self.info.is_distributed:
            warnings.warn("--fsdp=true on a single process: nothing to shard, training unsharded")
        self.model = wrap_model(model.to(self.device).train(), mode, self.device)
        self.global_batch = self.micro_global * c.grad_accum_steps
        peak_lr = c.lr if c.lr is not None else scaled_lr(c.base_lr, self.global_batch)
        self.optimizer = build_optimizer(self.model, peak_lr, c.weight_decay, (c.beta1, c.beta2))
        warmup = c.warmup_steps if c.warmup_steps is not None else round(c.warmup_ratio * c.max_steps)
        self.scheduler = build_scheduler(self.optimizer, c.max_steps, warmup, c.min_lr_ratio)
        if c.compile:
            self.model = torch.compile(self.model)

    def _build_data(self) -> None:
        c = self.config
        if self.train_dataset is None or self.val_dataset is None:
            built = build_datasets(c)
            self.train_dataset = self.train_dataset if self.train_dataset is not None else built[0]
            self.val_dataset = self.val_dataset if self.val_dataset is not None else built[1]
        self.num_regions = _check_dataset(self.train_dataset, "train", c.window)
        if _check_dataset(self.val_dataset, "validation", c.window) != self.num_regions:
            raise UserError("train and validation windows have different region counts")
        micro_global = c.batch_size * self.info.world_size
        if micro_global > len(self.train_dataset):
            raise UserError(f"batch of {micro_global} windows ({c.batch_size} x {self.info.world_size} processes) is "
                            f"larger than the train split ({len(self.train_dataset)} windows); lower --batch_size")

    def _check_init_from(self) -> None:
        if self.config.init_from:
            raw = read_model_config(self.config.init_from)
            if raw.get("num_brain_voxels") != self.num_regions:
                raise UserError(f"the data have {self.num_regions} regions but the checkpoint {self.config.init_from} "
                                f"was trained on {raw.get('num_brain_voxels')}; use a store of the same atlas")

    def _take_lock(self) -> None:
        """Rank 0 locks the run folder; every rank learns whether it could."""
        error = None
        if self.info.is_main:
            self.lock = OutputLock(self.run_dir, what="run folder")
            try:
                self.lock.acquire()
            except OutputLockedError as err:
                error = str(err)
        error = broadcast_object(error)
        if error:
            raise OutputLockedError(error)

    def _check_run_dir(self) -> dict | None:
        """Refuse to overwrite a run; on resume, check compatibility and load the latest checkpoint."""
        saved_cfg_path = self.run_dir / "train_config.json"
        if not self.resume:
            if saved_cfg_path.exists() or find_checkpoints(self.run_dir):
                raise UserError(f"{self.run_dir} already holds a run; continue it with --resume {self.run_dir} "
                                "or choose another --out")
            return None
        if not saved_cfg_path.exists():
            raise MissingInputError(f"{self.run_dir} is not a run folder: no train_config.json")
        latest = newest_checkpoint(self.run_dir)
        new = self.model_config.to_dict()
        saved = (json.loads((latest / "config.json").read_text()) if latest is not None else
                 TrainConfig.load(saved_cfg_path).model_config(self.num_regions).to_dict())
        if saved.get("num_brain_voxels") != new["num_brain_voxels"]:
            raise UserError(f"the data have {new['num_brain_voxels']} regions but the checkpoint in {self.run_dir} was "
                            f"trained on {saved.get('num_brain_voxels')}; use a store of the same atlas")
        differences = _diff(saved, new)
        if differences:
            raise UserError(f"{self.run_dir} was trained with an incompatible model config:\n  " + "\n  ".join(differences))
        self._check_same_data()
        return ckpt.load_checkpoint(latest) if latest is not None else None

    def _check_same_data(self) -> None:
        """On resume: the data must be those the run started on (``data.json``)."""
        path, now = self.run_dir / "data.json", data_identity(self.train_dataset)
        if now is None:
            return
        if not path.exists():
            warnings.warn(f"{self.run_dir} does not record the data it was trained on (a run of an earlier version); "
                          f"continuing on {now['store']} without being able to check that they are the same")
            return
        saved = read_json(path, "the run's data record")
        if saved.get("fingerprint") != now["fingerprint"] or saved.get("train_subjects") != now["train_subjects"]:
            what = ("other train subjects" if saved.get("fingerprint") == now["fingerprint"] else
                    f"other data (store fingerprint {now['fingerprint']}, the run's {saved.get('fingerprint')})")
            raise UserError(f"{path}: {self.run_dir} was trained on {saved.get('store')}, but {now['store']} now holds "
                            f"{what}; start a new run with another --out (or delete {self.run_dir})")

    def _load_init(self, model: BrainLMForPretraining) -> None:
        try:
            model.load_state_dict(BrainLMForPretraining.from_pretrained(self.config.init_from).state_dict())
        except RuntimeError as err:
            raise UserError(f"the weights in {self.config.init_from} do not fit the configured model "
                            f"(set --model.* to the same size): {str(err).splitlines()[0]}") from err

    # -- restore ---------------------------------------------------------------------------------

    def restore(self) -> None:
        """Continue from the checkpoint found by ``build`` (model, optimiser, schedule, data position, RNG)."""
        if self.state is None:
            return
        ckpt.restore_checkpoint(self.state, unwrap_model(self.model), self.optimizer, self.scheduler)
        ts = self.state["trainer_state"]
        self.step, self.epoch = ts["step"], ts["epoch"]
        self.batch_in_epoch = ts["samples_in_epoch"] // self.micro_global
        if ts["samples_in_epoch"] % self.micro_global:
            warnings.warn("the global batch changed since the checkpoint; resuming at the nearest batch boundary")
        self.best_loss, self.best_step = ts.get("best_loss", math.inf), ts.get("best_step")
        if len(self.state["rng"]) > self.info.rank:
            ckpt.restore_rng(self.state["rng"][self.info.rank])
        self.last_ckpt = self.state["path"]

    # -- training --------------------------------------------------------------------------------

    def batches(self) -> Iterator[dict]:
        """Micro-batches forever, from the current data position, advancing it as they are handed out."""
        c = self.config
        while True:
            if hasattr(self.train_dataset, "set_epoch"):
                self.train_dataset.set_epoch(self.epoch)
            sampler = WindowSampler(len(self.train_dataset), c.batch_size, rank=self.info.rank,
                                    world_size=self.info.world_size, shuffle=True, seed=c.seed, epoch=self.epoch,
                                    start_batch=self.batch_in_epoch)
            loader = DataLoader(IndexedDataset(self.train_dataset), batch_sampler=sampler, collate_fn=collate_windows,
                                num_workers=c.num_workers)
            for batch in loader:
                self.batch_in_epoch += 1
                yield batch
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def train_step(self, batches: Iterator[dict]) -> dict[str, float]:
        """One optimiser step over ``grad_accum_steps`` micro-batches; the mean loss, lr and gradient norm."""
        c = self.config
        loss_sum = torch.zeros((), dtype=torch.float64)
        W = self.model_config.timepoint_patching_size
        for micro in range(c.grad_accum_steps):
            batch = next(batches)
            g = self.step * c.grad_accum_steps + micro  # global micro-batch number
            x = batch["signal_vectors"].to(self.device, non_blocking=True)  # (B, R, T)
            xyz = batch["xyz_vectors"].to(self.device, non_blocking=True)  # (B, R, 3)
            B, R, T = x.shape
            keys = [(c.seed, TRAIN_MASK, g, self.info.rank * c.batch_size + j) for j in range(B)]
            noise, ratio = self._training_noise(keys, R, T // W)
            noise = noise.to(self.device)
            torch.manual_seed(seed_of(c.seed, DROPOUT, g, self.info.rank))
            with no_sync(self.model, skip=micro < c.grad_accum_steps - 1):
                with autocast_context(self.device, self.dtype):
                    # Only masked patches enter the loss: the decoder skips visible queries.
                    out = self.model(x, xyz, noise=noise, mask_ratio=ratio, decode_visible=False)
                self._check_finite(out.loss, micro, batch)
                (out.loss / c.grad_accum_steps).backward()
            loss_sum += out.loss.detach().double().cpu()
        grad_norm = float("nan")
        if c.max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.max_grad_norm)
            grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {"loss": float(loss_sum) / c.grad_accum_steps, "lr": lr, "grad_norm": grad_norm}

    def _training_noise(self, keys: list[tuple[int, ...]], num_regions: int,
                        num_patches: int) -> tuple[torch.Tensor, float | None]:
        """(B, L) masking noise of the training windows, shaped by ``train_mask_scheme``, and the
        mask ratio to use with it (None: the model's).

        ``"forecast"`` hides the last patch of every region with the visible tokens in
        region-major order, exactly what ``model.forecast`` does at test time (fine-tuning for
        forecasting, as the original paper does).
        """
        scheme = self.config.train_mask_scheme
        if scheme == "forecast":
            masked = torch.zeros(len(keys), num_regions, num_patches, dtype=torch.bool)
            masked[:, :, -1] = True
            return masking_noise(masked.flatten(1))
        noise = window_noise(keys, num_regions * num_patches)
        if scheme == "patch":
            return noise, None
        choice = (window_noise([(*k, MASK_SCHEME) for k in keys], 1)[:, 0] * 3).long().clamp(max=2)
        return structured_noise(noise, num_regions, scheme, choice), None

    def _check_finite(self, loss: torch.Tensor, micro: int, batch: dict) -> None:
        bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=self.device)
        if self.info.world_size > 1:
            all_reduce_sum(bad)
        if not bad.item():
            return
        ids = ", ".join(f"{k}={batch[k].tolist() if torch.is_tensor(batch[k]) else list(batch[k])}"
                        for k in ("index", *_ID_KEYS) if k in batch)
        if self.info.world_size > 1:
            import torch.distributed as dist

            gathered: list[Any] = [None] * self.info.world_size
            dist.all_gather_object(gathered, ids)
            ids = "; ".join(f"rank {r}: {s}" for r, s in enumerate(gathered))
        kept = f"the last good checkpoint is {self.last_ckpt}" if self.last_ckpt else "no checkpoint was written yet"
        raise NonFiniteLossError(f"non-finite loss ({float(loss.detach())}) at step {self.step + 1} "
                                 f"(micro-batch {micro}); batch: {ids}; {kept}")

    # -- evaluate and save -----------------------------------------------------------------------

    def evaluate(self) -> dict[str, Any]:
        """Validation metrics next to the baselines; keeps ``RUN/best`` up to date."""
        c = self.config
        result = evaluate_reconstruction(
            self.model, self.val_dataset, baselines=self.baselines, batch_size=c.eval_batch_size or c.batch_size,
            seed=c.seed, device=self.device, dtype=self.dtype, mask_ratio=c.eval_mask_ratio,
            max_batches=c.eval_max_batches, num_examples=4, per_window=self.info.world_size == 1)
        self.metrics, self.examples, self.val_windows = result.metrics, result.examples, result.windows
        self.loggers.log({"step": self.step, "split": "validation", **self.metrics})
        if self.metrics["loss"] < self.best_loss:
            self.best_loss, self.best_step = self.metrics["loss"], self.step
            ckpt.save_best(self.run_dir, self.model, {"step": self.step, **self.metrics})
        return self.metrics

    def save(self) -> Path:
        trainer_state = {
            "step": self.step, "epoch": self.epoch, "samples_in_epoch": self.batch_in_epoch * self.micro_global,
            "world_size": self.info.world_size, "global_batch": self.global_batch, "best_loss": self.best_loss,
            "best_step": self.best_step, "num_regions": self.num_regions,
        }
        self.last_ckpt = ckpt.save_checkpoint(self.run_dir, self.step, self.model, self.optimizer, self.scheduler,
                                              trainer_state, self.config_json, self.config.keep_last)
        return self.last_ckpt

    # -- the run ---------------------------------------------------------------------------------

    def fit(self) -> RunResult:
        """Build, restore, train to ``max_steps`` (or ``stop_at_step``), evaluate and save on schedule."""
        try:
            self.build()
            self.restore()
            return self._run()
        finally:
            if self.lock is not None:
                self.lock.release()

    def _run(self) -> RunResult:
        c = self.config
        stop = min(c.stop_at_step or c.max_steps, c.max_steps)
        if self.resume and self.step >= stop:  # nothing left to do: a finished run stays as it is
            return self._result([])
        self.config_json = json.dumps(c.to_dict(), indent=2, sort_keys=True) + "\n"
        if self.info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.clean_partial(self.run_dir)
            atomic_write_text(self.run_dir / "train_config.json", self.config_json)
            identity = data_identity(self.train_dataset)
            if identity is not None:
                atomic_write_json(self.run_dir / "data.json", identity)
        barrier()
        self.loggers = _Loggers(self.run_dir, c, self.info.is_main, keep_until=self.step if self.resume else None)
        bar = progress(total=c.max_steps, initial=self.step, desc="fine-tune" if c.init_from else "pretrain", unit="step",
                       enabled=self.info.is_main and c.progress)
        losses, batches, t_last, windows = [], self.batches(), time.perf_counter(), 0
        try:
            while self.step < stop:
                record = self.train_step(batches)
                windows += self.global_batch
                if c.log_every and (self.step % c.log_every == 0 or self.step == stop):
                    record = self._log_train(record, windows / max(time.perf_counter() - t_last, 1e-9))
                    losses.append((self.step, record["loss"]))
                    t_last, windows = time.perf_counter(), 0
                    bar.set_postfix(loss=f"{record['loss']:.4f}", win_s=f"{record['windows_per_s']:.0f}", refresh=False)
                bar.update(1)
                if self.step == stop or (c.eval_every and self.step % c.eval_every == 0):
                    self.evaluate()
                    self.loggers.write_csv()
                if self.step == stop or (c.save_every and self.step % c.save_every == 0):
                    self.save()
        finally:
            bar.close()
            self.loggers.close()
        return self._result(losses, plots=True)

    def _log_train(self, record: dict, speed: float) -> dict:
        loss = torch.tensor(record["loss"], dtype=torch.float64)
        if self.info.world_size > 1:
            loss = all_reduce_sum(loss.to(self.device)).cpu() / self.info.world_size
        record = {**record, "loss": float(loss), "windows_per_s": speed, "epoch": self.epoch}
        self.loggers.log({"step": self.step, "split": "train", **record})
        return record

    def _result(self, losses: list, plots: bool = False) -> RunResult:
        paths: list[Path] = []
        if plots and self.info.is_main and self.config.plots:
            from brainlm.train.plots import plot_curves, plot_reconstructions

            paths = [plot_curves(read_metrics(self.run_dir), self.run_dir / "plots" / "curves.png"),
                     plot_reconstructions(self.examples, self.run_dir / "plots" / "reconstructions.png")]
        metrics = self.metrics or next((r for r in reversed(read_metrics(self.run_dir))
                                        if r.get("split") == "validation"), {})
        best = self.run_dir / "best"
        return RunResult(run_dir=self.run_dir, step=self.step, checkpoint=self.last_ckpt or
                         newest_checkpoint(self.run_dir), best=best if best.exists() else None, metrics=metrics,
                         metrics_file=self.run_dir / "metrics.jsonl", plots=paths, train_losses=losses,
                         validation_windows=self.val_windows)


def pretrain(config: TrainConfig, *, resume: bool = False, train_dataset: Dataset | None = None,
             val_dataset: Dataset | None = None) -> RunResult:
    """Pretrain BrainLM with masked-patch reconstruction; the same call on 1 or N processes.

    Raises:
        UserError: bad input (empty split, batch larger than the data, wrong region count,
            incompatible or existing run folder, corrupt checkpoint, a run folder locked by
            another run); nothing is written then.
        NonFiniteLossError: the loss became NaN / inf; the last good checkpoint is kept.
    """
    return Trainer(config, resume=resume, train_dataset=train_dataset, val_dataset=val_dataset).fit()

