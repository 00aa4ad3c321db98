"""The pretraining loop as a small trainer: build, restore, train step, evaluate, save.

What it trains on is :mod:`brainlm.train.data`'s, the masks :mod:`brainlm.train.masking`'s;
numbers go to :mod:`brainlm.train.loggers`, checkpoints to :mod:`brainlm.train.checkpointing`.
Batches come from :class:`~brainlm.data.sampler.WindowSampler` (which windows each process
sees, resumable) and :func:`~brainlm.data.loader.collate_windows`.

Every random draw is seeded by its position (:mod:`brainlm.seeding`): window order by (seed,
epoch), a window's mask by (seed, micro-batch, its place in the global batch), dropout by
(seed, micro-batch, rank). A run therefore resumes exactly, and N processes with batch b see
the windows and masks of one process with batch N x b.

The run folder is claimed (:func:`brainlm.io.claim_folder`) and locked while a run writes it:
a second ``pretrain`` into the same ``--out`` is refused. Validation scores the model next to
the baseline ladder, whose connectivity fill is fitted on the train split.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from brainlm.data.loader import collate_windows
from brainlm.data.sampler import IndexedDataset, WindowSampler
from brainlm.distributed import (DistInfo, all_gather, all_reduce_sum, autocast_context, barrier, broadcast_object,
                                 init_distributed, no_sync, resolve_device, resolve_precision, unwrap_model, wrap_model)
from brainlm.errors import OutputLockedError, UserError
from brainlm.evaluate.baselines import ReconstructionBaselines
from brainlm.evaluate.reconstruction import evaluate_reconstruction
from brainlm.hub import newest_checkpoint, read_model_config, resolve_model_folder
from brainlm.io import atomic_write_json, atomic_write_text, output_folder
from brainlm.memory import check_memory
from brainlm.model import BrainLMConfig, BrainLMForPretraining
from brainlm.progress import progress
from brainlm.seeding import DROPOUT, TRAIN_MASK, seed_of

from . import checkpointing as ckpt
from .config import TrainConfig, absolute_paths
from .data import build_datasets, check_dataset, data_identity, fit_baselines, training_trs
from .loggers import Loggers, read_metrics
from .masking import training_noise
from .optim import build_optimization
from .region_init import init_region_embedding

__all__ = ["Trainer", "pretrain", "RunResult", "NonFiniteLossError"]

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


class Trainer:
    """One pretraining run: ``Trainer(config).fit()`` (the same call on 1 or N processes).

    Args:
        config: training settings; ``config.out_dir`` is the run folder.
        resume: continue the run in ``config.out_dir`` from its latest checkpoint.
        train_dataset, val_dataset: datasets following :mod:`brainlm.train.data`'s protocol;
            default: the splits of the store ``config.data``.
    """

    # Set by build(): where and how it runs, what it trains, and how.
    info: DistInfo  # rank and world size
    device: torch.device
    dtype: torch.dtype  # autocast dtype (float32: none)
    num_regions: int  # R of the data
    model_config: BrainLMConfig
    micro_global: int  # windows per micro-batch over all processes
    global_batch: int  # windows per optimiser step over all processes
    resume_from: Path | None  # the checkpoint restore() continues from
    baselines: ReconstructionBaselines  # the ladder validation scores the model against
    model: torch.nn.Module  # wrapped for DDP / FSDP as configured
    optimizer: torch.optim.Optimizer
    scheduler: Any
    # Set by _run(): the run's settings as written, and its loggers.
    config_json: str
    loggers: Loggers

    def __init__(self, config: TrainConfig, *, resume: bool = False, train_dataset: Dataset | None = None,
                 val_dataset: Dataset | None = None, trust_unverified: bool = False):
        self.config, self.resume = config, resume
        self.trust_unverified = trust_unverified  # for init_from: a model folder no complete manifest verifies
        self.train_dataset, self.val_dataset = train_dataset, val_dataset
        self.run_dir = Path(config.out_dir)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0  # the data position
        self.best_loss, self.best_step = math.inf, None
        self.metrics: dict[str, Any] = {}  # the last validation metrics
        self.examples: list[dict] = []  # reconstructions of the last validation, for the plots
        self.val_windows = None  # per-window sums of the last validation, for the verdict's interval
        self.last_ckpt: Path | None = None
        self._claim = ExitStack()  # rank 0's claim and lock of the run folder, held until fit() ends
        self._flag = "--resume" if resume else "--out"

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
        trs = training_trs(self.train_dataset)
        if trs:  # the model records the TRs it was trained on (downstream commands compare them)
            self.model_config.extra["training_tr"] = trs
        self.micro_global = c.batch_size * self.info.world_size
        check_memory(16 * self.model_config.num_parameters() +
                     4 * self.model_config.activation_elements(c.batch_size, self.num_regions, c.window),
                     self.device, f"training this model ({self.model_config.num_parameters() / 1e6:.0f}M parameters, "
                     f"batch {c.batch_size})", "use a smaller --model.* size or --batch_size")
        self._take_lock()
        self.resume_from = ckpt.check_run_folder(self.run_dir, self.resume, self.model_config,
                                                 data_identity(self.train_dataset))
        self.baselines = fit_baselines(self.train_dataset)
        torch.manual_seed(c.seed)  # identical initial weights on every rank
        model = BrainLMForPretraining(self.model_config)
        if c.init_from and not self.resume:
            self._load_init(model)
        elif c.region_embedding_init == "connectivity" and not self.resume:
            init_region_embedding(model, self.baselines.covariance_)
        if c.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        mode = "fsdp" if c.fsdp and self.info.is_distributed else ("ddp" if self.info.is_distributed else "none")
        if c.fsdp and not self.info.is_distributed:
            warnings.warn("--fsdp=true on a single process: nothing to shard, training unsharded")
        self.model = wrap_model(model.to(self.device).train(), mode, self.device)
        self.global_batch = self.micro_global * c.grad_accum_steps
        self.optimizer, self.scheduler = build_optimization(self.model, c, self.global_batch)
        if c.compile:
            self.model = torch.compile(self.model)

    def _build_data(self) -> None:
        c = self.config
        if self.train_dataset is None or self.val_dataset is None:
            built = build_datasets(c)
            self.train_dataset = self.train_dataset if self.train_dataset is not None else built[0]
            self.val_dataset = self.val_dataset if self.val_dataset is not None else built[1]
        self.num_regions = check_dataset(self.train_dataset, "train", c.window)
        if check_dataset(self.val_dataset, "validation", c.window) != self.num_regions:
            raise UserError("train and validation windows have different region counts")
        micro_global = c.batch_size * self.info.world_size
        if micro_global > len(self.train_dataset):
            raise UserError(f"batch of {micro_global} windows ({c.batch_size} x {self.info.world_size} processes) is "
                            f"larger than the train split ({len(self.train_dataset)} windows); lower --batch_size")

    def _take_lock(self) -> None:
        """Rank 0 claims and locks the run folder (:func:`brainlm.io.output_folder`: a new or empty
        folder, or a run; released when ``fit`` ends, removed again if nothing was written); every
        rank learns whether it could."""
        error = None
        if self.info.is_main:
            try:
                self._claim.enter_context(output_folder(self.run_dir, kind="run", what="run folder", flag=self._flag))
            except UserError as err:
                error = (isinstance(err, OutputLockedError), str(err))
        error = broadcast_object(error)
        if error:
            raise (OutputLockedError if error[0] else UserError)(error[1])

    def initialisation(self) -> dict[str, Any]:
        """How the model was initialised, as ``RUN/init/initialisation.json`` records it: ``kind`` is
        ``checkpoint`` (``init_from``), ``connectivity`` (region tables from the train split's
        covariance) or ``normal`` (the model's own random initialisation)."""
        c = self.config
        kind = "checkpoint" if c.init_from else c.region_embedding_init
        return {"kind": kind, "source": str(c.init_from) if c.init_from else None, "seed": c.seed,
                "model": c.model, "train_mask_scheme": c.train_mask_scheme}

    def _load_init(self, model: BrainLMForPretraining) -> None:
        """``init_from``: start from the weights of a model folder of the same size and atlas."""
        source = self.config.init_from
        regions = read_model_config(resolve_model_folder(source)).get("num_brain_voxels")
        if regions != self.num_regions:
            raise UserError(f"the data have {self.num_regions} regions but the checkpoint {source} was trained on "
                            f"{regions}; use a store of the same atlas")
        try:
            model.load_state_dict(BrainLMForPretraining.from_pretrained(
                source, trust_unverified=self.trust_unverified).state_dict())
        except RuntimeError as err:
            raise UserError(f"the weights in {source} do not fit the configured model "
                            f"(set --model.* to the same size): {str(err).splitlines()[0]}") from err

    # -- restore ---------------------------------------------------------------------------------

    def restore(self) -> None:
        """Continue from the checkpoint found by ``build`` (model, optimiser, schedule, data position, RNG),
        verified against its manifest before anything is written."""
        if self.resume_from is None:
            return
        state = ckpt.load_checkpoint(self.resume_from)
        ckpt.restore_checkpoint(state, unwrap_model(self.model), self.optimizer, self.scheduler)
        ts = state["trainer_state"]
        self.step, self.epoch = ts["step"], ts["epoch"]
        self.batch_in_epoch = ts["samples_in_epoch"] // self.micro_global
        if ts["samples_in_epoch"] % self.micro_global:
            warnings.warn("the global batch changed since the checkpoint; resuming at the nearest batch boundary")
        best = ts.get("best_loss")  # strict JSON writes an infinite loss (no validation yet) as null
        self.best_loss, self.best_step = (math.inf if best is None else best), ts.get("best_step")
        if len(state["rng"]) > self.info.rank:
            ckpt.restore_rng(state["rng"][self.info.rank])
        self.last_ckpt = state["path"]

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
            noise, ratio = training_noise(c.train_mask_scheme, keys, R, T // W)
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

    def _check_finite(self, loss: torch.Tensor, micro: int, batch: dict) -> None:
        bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=self.device)
        if self.info.world_size > 1:
            all_reduce_sum(bad)
        if not bad.item():
            return
        ids = ", ".join(f"{k}={batch[k].tolist() if torch.is_tensor(batch[k]) else list(batch[k])}"
                        for k in ("index", *_ID_KEYS) if k in batch)
        if self.info.world_size > 1:
            ids = "; ".join(f"rank {r}: {s}" for r, s in enumerate(all_gather(ids)))
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
        with self._claim:
            self.build()
            self.restore()
            return self._run()

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
        if self.step == 0:  # the model before any step: what initialisation alone gives
            ckpt.save_initial(self.run_dir, self.model, self.initialisation())
        self.loggers = Loggers(self.run_dir, c, self.info.is_main, keep_until=self.step if self.resume else None)
        bar = progress(total=c.max_steps, initial=self.step, desc="fine-tune" if c.init_from else "pretrain", unit="step",
                       enabled=self.info.is_main and c.progress)
        losses, batches, t_last, windows = [], self.batches(), time.perf_counter(), 0
        try:
            while self.step < stop:
                record = self.train_step(batches)
                windows += self.global_batch
                if c.log_every and (self.step % c.log_every == 0 or self.step == stop):
                    loss = torch.tensor(record["loss"], dtype=torch.float64)
                    if self.info.world_size > 1:  # the mean over processes
                        record["loss"] = float(all_reduce_sum(loss.to(self.device)).cpu() / self.info.world_size)
                    record = self.loggers.log_train(self.step, self.epoch, record,
                                                    windows / max(time.perf_counter() - t_last, 1e-9))
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

    def _result(self, losses: list, plots: bool = False) -> RunResult:
        paths: list[Path] = []
        if plots and self.info.is_main and self.config.plots:
            from .plots import plot_curves, plot_reconstructions

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
             val_dataset: Dataset | None = None, trust_unverified: bool = False) -> RunResult:
    """Pretrain BrainLM with masked-patch reconstruction; the same call on 1 or N processes.

    ``trust_unverified``: ``init_from`` may be a model folder that no complete manifest verifies.

    Raises:
        UserError: bad input (empty split, batch larger than the data, wrong region count,
            incompatible or existing run folder, corrupt checkpoint, a run folder locked by
            another run); nothing is written then.
        NonFiniteLossError: the loss became NaN / inf; the last good checkpoint is kept.
    """
    config = absolute_paths(config)  # the saved settings work from any folder
    return Trainer(config, resume=resume, train_dataset=train_dataset, val_dataset=val_dataset,
                   trust_unverified=trust_unverified).fit()

