"""Fine-tuning: the encoder's CLS token into a small MLP head, as in the BrainLM paper.

Dimension letters: B windows, R regions, T timepoints per window, D hidden size, C outputs
(classes, or 1 for regression).

``finetune`` trains on sliding windows of a store's training split (every window of a
subject carries the subject's target) and stops early on the validation split's loss
(MSE of standardised targets, or cross-entropy). ``freeze_encoder=True`` trains the head
only (encoder in eval mode, no gradients); ``lora=True`` also trains low-rank adapters on the
encoder's linear layers (:mod:`brainlm.downstream.lora`, through ``peft``), the encoder's own
weights frozen; ``freeze_encoder=False`` trains encoder and head together. Encoder or adapters
learn at their own, smaller learning rate. The decoder is never used or changed.

The saved folder is an ordinary checkpoint of the whole masked autoencoder with the
fine-tuned encoder (``config.json`` + ``model.safetensors``: ``load_model``, ``embed`` and
``probe`` accept it) plus ``head.safetensors`` and ``head.json`` (task, classes, target
scaling, head sizes), read by ``load_finetuned``. With LoRA, ``model.safetensors`` is the base
model unchanged and the adapter is in ``adapter/`` (``peft``'s format): ``load_finetuned`` puts
it back as it was trained, ``load_model`` folds it into the weights.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from brainlm.checkpoint import load_pretrained, save_pretrained
from brainlm.errors import MissingInputError, OutputExistsError, UserError
from brainlm.evaluate.protocol import TASK_CHOICES, EarlyStopping, infer_task
from brainlm.options import Options, at_least, between, option, positive
from brainlm.hub import verify_model_folder
from brainlm.io import atomic_write, atomic_write_json, read_json, normalize_subject_id, write_manifest
from brainlm.model import BrainLMForPretraining
from brainlm.progress import progress as progress_bar

from .loading import _as_tensor, check_regions, load_model, match_store_tr

__all__ = ["FinetuneConfig", "BrainLMFinetuner", "FinetuneResult", "finetune", "save_finetuned", "load_finetuned"]


@dataclass(kw_only=True)
class FinetuneConfig(Options):
    """Options of :func:`finetune`."""

    task: str = option("auto", "auto: classification for text, boolean or two-valued targets, else regression",
                       choices=TASK_CHOICES)
    freeze_encoder: bool = option(True, "train the head only (and the adapters, with --lora)", cli=False)
    lora: bool = option(False, "train LoRA adapters on the encoder's linear layers (needs peft: pip install "
                        "'brainlm[lora]'); saved in OUT/adapter")
    lora_r: int = option(8, "rank of the LoRA adapters", check=positive)
    lora_alpha: int = option(16, "the adapters' scale is lora_alpha / lora_r", check=positive)
    lora_dropout: float = option(0.05, "dropout on the adapters' input", check=between(0, 1, closed=(True, False)))
    pooling: str = option("cls", "what the head is fed: the CLS token (the paper) or the mean of the patch tokens",
                          choices=("cls", "mean"))
    head_hidden: int = option(128, "width of the head's hidden layer", check=positive)
    dropout: float = option(0.1, "dropout before the head's output layer", check=between(0, 1, closed=(True, False)))
    epochs: int = option(50, "at most this many passes over the training windows", check=positive)
    patience: int = option(5, "stop after this many epochs without a better validation loss", check=positive)
    lr: float = option(1e-3, "head learning rate (AdamW)", check=at_least(0.0))
    encoder_lr: float = option(1e-4, "encoder learning rate when not frozen (--full)", check=at_least(0.0))
    weight_decay: float = option(0.01, "AdamW weight decay", check=at_least(0.0))
    batch_size: int = option(16, "windows per step", check=positive)
    window: int | None = option(None, "timepoints per window (default: the model's)", check=at_least(1, optional=True))
    stride: int | None = option(None, "step of the sliding windows (default: window // 2)",
                                check=at_least(1, optional=True))
    train_split: str = option("train", "the split trained on", cli=False)
    val_split: str = option("validation", "the split that chooses the epoch", cli=False)
    seed: int = option(0, "seed of the head's initialisation and the batch order")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lora and not self.freeze_encoder:
            raise UserError("--lora and --full are different ways to fine-tune: give one of them")
        changed = [name for name in ("lora_r", "lora_alpha", "lora_dropout")
                   if getattr(self, name) != type(self).__dataclass_fields__[name].default]
        if changed and not self.lora:
            raise UserError(f"{', '.join(self.flag(name) for name in changed)}: only with --lora")


class BrainLMFinetuner(nn.Module):
    """Encoder + MLP head on the CLS token: ``(B, R, T), (B, R, 3) -> (B, C)``.

    Args:
        backbone: the masked autoencoder whose encoder is used (masking off).
        num_outputs: C.
        hidden: head width.
        dropout: head dropout.
        pooling: ``"cls"`` the CLS token, ``"mean"`` the mean of the patch tokens.
    """

    def __init__(self, backbone: BrainLMForPretraining, num_outputs: int, hidden: int = 128, dropout: float = 0.1,
                 pooling: str = "cls"):
        super().__init__()
        self.backbone = backbone
        D = backbone.config.hidden_size
        # Pooled features are standardised first with statistics of the training windows taken
        # before training (``fit_scaler``): their scales differ widely between dimensions (the
        # role BatchNorm plays in MAE's linear probing, without running statistics that lag).
        self.head = nn.Sequential(
            _Standardize(D), nn.Linear(D, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, num_outputs)
        )
        self.pooling = pooling
        self.info: dict = {"num_outputs": num_outputs, "hidden": hidden, "dropout": dropout, "pooling": pooling}

    def pool(self, signal_vectors: torch.Tensor, xyz_vectors: torch.Tensor) -> torch.Tensor:
        """The encoder's pooled output, ``(B, D)`` (masking off)."""
        return self.backbone.embed(signal_vectors, xyz_vectors, pooling=self.pooling).embeddings  # (B, D)

    def forward(self, signal_vectors: torch.Tensor, xyz_vectors: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(signal_vectors, xyz_vectors))  # (B, C)

    @torch.no_grad()
    def fit_scaler(self, signal_vectors: torch.Tensor, xyz_vectors: torch.Tensor, batch_size: int = 64) -> None:
        """Set the head's feature standardisation from windows ``(N, R, T)``, ``(1, R, 3)``."""
        feats = torch.cat([self.pool(signal_vectors[s : s + batch_size], xyz_vectors.expand(len(signal_vectors[s : s + batch_size]), -1, -1))
                           for s in range(0, len(signal_vectors), batch_size)])  # (N, D)
        self.head[0].mean.copy_(feats.mean(0))
        self.head[0].std.copy_(feats.std(0).clamp_min(1e-6) if len(feats) > 1 else torch.ones_like(feats[0]))

    @torch.no_grad()
    def predict(self, signal_vectors, xyz_vectors) -> np.ndarray:
        """Predictions in target units: class labels (classification) or values (regression), ``(B,)``."""
        self.eval()
        x = _as_tensor(signal_vectors)
        xyz = _as_tensor(xyz_vectors)
        if xyz.dim() == 2:
            xyz = xyz.expand(x.shape[0], -1, -1)
        out = self(x, xyz).float()
        if self.info.get("task") == "classification":
            return np.asarray(self.info["classes"], dtype=object)[out.argmax(1).numpy()]
        return (out[:, 0] * self.info.get("y_std", 1.0) + self.info.get("y_mean", 0.0)).numpy()


class _Standardize(nn.Module):
    """``(x - mean) / std`` with fixed statistics (buffers, saved with the head)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@dataclass
class FinetuneResult:
    """``model`` (best validation epoch), ``history`` (epoch, train_loss, val_loss, val_metric;
    epoch 0 is before training), ``best_epoch``, ``out_dir`` (None if not saved),
    ``missing_subjects`` (subjects of the two splits without a target, left out)."""

    model: BrainLMFinetuner
    history: pd.DataFrame
    best_epoch: int
    out_dir: Path | None
    missing_subjects: list[str]


def _windows(store, split: str, window: int, stride: int, targets: pd.Series):
    from .embed import window_starts
    xs, ys, missing = [], [], set()
    for meta, ts in _store_iter(store, split):
        sid = normalize_subject_id(meta["subject_id"])
        value = targets.get(sid, np.nan)
        if pd.isna(value):
            missing.add(sid)
            continue
        for t0 in window_starts(len(ts), window, stride):
            xs.append(ts[t0 : t0 + window].T)
            ys.append(value)
    return (np.stack(xs) if xs else np.zeros((0,))), np.asarray(ys, dtype=object), missing


def _store_iter(store, split):
    for row, ts in store.iter_recordings(split):
        yield {c: str(row[c]) for c in ("recording_id", "subject_id")}, ts


def _run_epoch(model, x, y, xyz, task, batch_size, opt=None, gen=None) -> tuple[float, float]:
    """One pass; returns (mean loss, metric: accuracy or R^2 in standardised units)."""
    train = opt is not None
    model.head.train(train)
    order = torch.randperm(len(x), generator=gen) if train else torch.arange(len(x))
    total, outs = 0.0, []
    with torch.set_grad_enabled(train):
        for s in range(0, len(x), batch_size):
            idx = order[s : s + batch_size]
            out = model(x[idx], xyz.expand(len(idx), -1, -1))
            loss = F.cross_entropy(out, y[idx]) if task == "classification" else F.mse_loss(out[:, 0], y[idx])
            if train:
                opt.zero_grad()
                loss.backward()
                opt.step()
            total += loss.item() * len(idx)
            outs.append(out.detach())
    out = torch.cat(outs)[torch.argsort(order)]
    if task == "classification":
        metric = (out.argmax(1) == y).float().mean().item()
    else:
        metric = 1 - ((out[:, 0] - y) ** 2).sum().item() / max(((y - y.mean()) ** 2).sum().item(), 1e-12)
    return total / len(x), metric


def finetune(model_or_path, store, target: str, config: FinetuneConfig | None = None, *,
             targets_file: str | os.PathLike | None = None, subject_column: str | None = None,
             out_dir: str | os.PathLike | None = None, overwrite: bool = False, progress: bool = True,
             trust_unverified: bool = False, resample_to_model_tr: bool = False) -> FinetuneResult:
    """Fine-tune encoder + head on a store's phenotype (or a TSV keyed by subject).

    Args:
        model_or_path: a ``BrainLMForPretraining`` or a folder ``load_model`` accepts.
        store: a ``Store`` or store folder with training and validation splits.
        target: target column.
        config: ``FinetuneConfig``.
        targets_file, subject_column: a TSV/CSV of targets (default: the store's phenotypes).
        out_dir: where to save the best model (nothing is saved when None).
        overwrite: replace an existing checkpoint in ``out_dir``.
        trust_unverified: as :func:`load_model`.
        resample_to_model_tr: read recordings whose TR is more than 10% from the model's resampled to it
            (:func:`~brainlm.downstream.loading.match_store_tr`); the TR lines are said either way.

    Raises:
        FileExistsError: ``out_dir`` holds a checkpoint and ``overwrite`` is False (checked first).
        ValueError: a ViT-MAE model, region mismatch, no labelled windows in a split, a single class.
    """
    from brainlm.data import Store, open_store

    from .probe import load_targets

    config = config or FinetuneConfig()
    if out_dir is not None and (Path(out_dir) / "config.json").exists() and not overwrite:
        raise OutputExistsError(f"{out_dir} already holds a checkpoint; pass overwrite=True / --overwrite")
    backbone = (load_model(model_or_path, trust_unverified=trust_unverified)
                if isinstance(model_or_path, (str, os.PathLike)) else model_or_path)
    if not isinstance(backbone, BrainLMForPretraining):
        raise UserError("fine-tuning is implemented for BrainLM models, not the released ViT-MAE models")
    if config.lora and config.lora_r > backbone.config.hidden_size:  # A (r, in), B (out, r): r <= every in and out
        raise UserError(f"{config.flag('lora_r')} {config.lora_r}: the rank of a low-rank adapter is at most the "
                        f"model's hidden size, {backbone.config.hidden_size}")
    store = store if isinstance(store, Store) else open_store(store)
    store, tr_lines = match_store_tr(backbone, store, resample_to_model_tr)
    for line in tr_lines:
        print(line, file=sys.stderr)
    check_regions(backbone, store.num_regions, str(store.path))
    targets = load_targets(targets_file if targets_file is not None else store, target, subject_column)
    window = config.window or backbone.window_length
    stride = config.stride or max(1, window // 2)
    xtr, ytr, miss_tr = _windows(store, config.train_split, window, stride, targets)
    xva, yva, miss_va = _windows(store, config.val_split, window, stride, targets)
    missing = sorted(miss_tr | miss_va)
    if missing:
        warnings.warn(f"{len(missing)} subjects have no {target!r} target and are left out: {missing}", stacklevel=2)
    for name, y in ((config.train_split, ytr), (config.val_split, yva)):
        if len(y) == 0:
            raise UserError(f"no labelled window of {window} timepoints in split {name!r}")
    task = infer_task(np.concatenate([ytr, yva]), config.task)
    yt, yv, info = _encode_targets(task, ytr, yva)
    model, opt = _build(backbone, config, {"task": task, "target": target, "window": window, **info})
    xyz = torch.from_numpy(store.coords.astype(np.float32))[None]  # (1, R, 3)
    data = (torch.from_numpy(xtr.astype(np.float32)), yt, torch.from_numpy(xva.astype(np.float32)), yv, xyz)
    history, stop = _train(model, opt, data, task, config, progress)
    model.load_state_dict(stop.best_state)
    model.info.update(best_epoch=stop.best_epoch, best_val_loss=stop.best, config=asdict(config.as_base(FinetuneConfig)))
    model.eval()
    saved = save_finetuned(model, out_dir, overwrite=overwrite) if out_dir is not None else None
    return FinetuneResult(model, pd.DataFrame(history), stop.best_epoch, saved, missing)


def _encode_targets(task: str, ytr: np.ndarray, yva: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Class indices, or standardised values (statistics of the training windows), and how to undo it."""
    if task == "classification":
        classes = sorted(set(map(str, ytr)))
        if len(classes) < 2:
            raise UserError(f"single-class target in the training split ({classes}): classification needs two classes")
        unseen = set(map(str, yva)) - set(classes)
        if unseen:
            raise UserError(f"validation classes {sorted(unseen)} do not occur in training")
        lut = {c: i for i, c in enumerate(classes)}
        return (torch.tensor([lut[str(v)] for v in ytr]), torch.tensor([lut[str(v)] for v in yva]),
                {"classes": classes, "num_outputs": len(classes)})
    ytr_f, yva_f = ytr.astype(np.float64), yva.astype(np.float64)
    mean, std = float(ytr_f.mean()), float(ytr_f.std() or 1.0)
    return (torch.tensor((ytr_f - mean) / std, dtype=torch.float32), torch.tensor((yva_f - mean) / std, dtype=torch.float32),
            {"y_mean": mean, "y_std": std, "num_outputs": 1})


def _build(backbone: BrainLMForPretraining, config: FinetuneConfig, info: dict):
    """The fine-tuner (a copy of the backbone, decoder frozen) and its optimiser."""
    torch.manual_seed(config.seed)
    model = BrainLMFinetuner(copy.deepcopy(backbone), info.pop("num_outputs"), config.head_hidden, config.dropout,
                             config.pooling)
    model.info.update(info)
    model.backbone.eval()  # no dropout in the encoder, frozen or not
    for p in model.backbone.decoder.parameters():
        p.requires_grad_(False)
    groups = [{"params": list(model.head.parameters()), "lr": config.lr}]
    if config.lora:
        from .lora import add_lora

        add_lora(model.backbone, config.lora_r, config.lora_alpha, config.lora_dropout)
        groups.append({"params": [p for n, p in model.backbone.named_parameters() if "lora_" in n],
                       "lr": config.encoder_lr})
    elif config.freeze_encoder:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
    else:
        groups.append({"params": list(model.backbone.encoder.parameters()), "lr": config.encoder_lr})
    return model, torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def _train(model, opt, data, task: str, config: FinetuneConfig, progress: bool) -> tuple[list[dict], EarlyStopping]:
    """Epochs until the validation loss stops improving; the history and the stopper (best state)."""
    xtr, yt, xva, yv, xyz = data
    gen = torch.Generator().manual_seed(config.seed)
    model.fit_scaler(xtr, xyz)
    val_loss, val_metric = _run_epoch(model, xva, yv, xyz, task, config.batch_size)
    history = [{"epoch": 0, "train_loss": math.nan, "val_loss": val_loss, "val_metric": val_metric}]
    stop = EarlyStopping(config.patience)
    stop.update(val_loss, 0, model.state_dict())
    bar = progress_bar(range(1, config.epochs + 1), enabled=progress, desc="finetune", unit="epoch")
    for epoch in bar:
        train_loss, _ = _run_epoch(model, xtr, yt, xyz, task, config.batch_size, opt, gen)
        val_loss, val_metric = _run_epoch(model, xva, yv, xyz, task, config.batch_size)
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_metric": val_metric})
        bar.set_postfix(train=f"{train_loss:.3f}", val=f"{val_loss:.3f}", refresh=False)
        if stop.update(val_loss, epoch, model.state_dict()):
            break
    return history, stop


def _remove_old_adapter(folder: Path) -> None:
    """Remove the ``adapter/`` files an earlier fine-tune into ``folder`` wrote (those its manifest
    lists, regular files only), and the folder once empty; nothing the manifest does not list."""
    from brainlm.checkpoint import ADAPTER_DIR

    adapter, manifest = folder / ADAPTER_DIR, folder / "manifest.json"
    if not adapter.is_dir() or not manifest.is_file():
        return
    listed = read_json(manifest, "manifest")
    for name in listed if isinstance(listed, dict) else {}:
        path = folder / name
        if name.startswith(f"{ADAPTER_DIR}/") and path.is_file() and not path.is_symlink():
            path.unlink()
    try:
        adapter.rmdir()
    except OSError:  # files the manifest did not list stay, and so does their folder
        pass


def save_finetuned(model: BrainLMFinetuner, folder: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the encoder checkpoint (``config.json``, ``model.safetensors``), the adapter, the head
    files and, last, the ``manifest.json`` of them all."""
    folder = Path(folder)
    if (folder / "config.json").exists() and not overwrite:
        raise OutputExistsError(f"{folder} already holds a checkpoint; pass overwrite=True")
    _remove_old_adapter(folder)  # a stale adapter would be folded into the new encoder when it is opened
    if hasattr(model.backbone, "lora_config"):
        from .lora import ADAPTER_DIR, base_state_dict, save_adapter

        base = BrainLMForPretraining(model.backbone.config)
        base.load_state_dict(base_state_dict(model.backbone))
        save_pretrained(base, folder)
        save_adapter(model.backbone, folder / ADAPTER_DIR)
        model.info["adapter"] = ADAPTER_DIR
    else:
        save_pretrained(model.backbone, folder)
    head = {k: v.detach().contiguous().cpu() for k, v in model.head.state_dict().items()}
    atomic_write(folder / "head.safetensors", lambda tmp: save_file(head, str(tmp)))
    atomic_write_json(folder / "head.json", json.loads(json.dumps(model.info, default=str)), sort_keys=True)
    write_manifest(folder)  # last: the encoder, the adapter and the head, every file
    return folder


def load_finetuned(folder: str | os.PathLike, map_location: str | torch.device = "cpu", *,
                   trust_unverified: bool = False) -> BrainLMFinetuner:
    """Load what :func:`save_finetuned` wrote (encoder, adapter if any, head), in eval mode, verified
    against its manifest first (``trust_unverified``: as :func:`load_model`)."""
    folder = Path(folder)
    if not (folder / "head.json").is_file():
        raise MissingInputError(f"{folder}: no head.json (not a fine-tuned checkpoint; load_model reads the encoder alone)")
    verify_model_folder(folder, trust_unverified=trust_unverified)  # before head.json is read
    info = json.loads((folder / "head.json").read_text())
    if info.get("adapter"):
        from .lora import attach_adapter

        backbone = attach_adapter(load_pretrained(folder, map_location, adapter=False,
                                                  trust_unverified=trust_unverified), folder / info["adapter"])
    else:
        backbone = load_model(folder, map_location, trust_unverified=trust_unverified)
    model = BrainLMFinetuner(backbone, info["num_outputs"], info["hidden"], info["dropout"], info.get("pooling", "cls"))
    model.head.load_state_dict(load_file(str(folder / "head.safetensors")))
    model.info = info
    return model.to(map_location).eval()
