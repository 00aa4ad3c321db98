"""Training settings: one keyword-only dataclass, named presets, ``--key=value`` overrides.

Model hyper-parameters are not repeated here: ``model`` names a preset of
:mod:`brainlm.model` and ``model_overrides`` changes single fields of it
(``--model.hidden_size=64`` on the command line).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brainlm.errors import MissingInputError, UserError
from brainlm.options import Options, add_dataclass_arguments, given_fields, option
from brainlm.model import PRESETS as MODEL_PRESETS
from brainlm.model import BrainLMConfig

MASK_SCHEMES = ("patch", "region", "time", "mixed", "forecast")

__all__ = ["MASK_SCHEMES", "TrainConfig", "TrainingOverrides", "forecast_finetune", "TRAIN_PRESETS", "train_preset", "apply_overrides", "resolve_config"]


@dataclass(kw_only=True)
class TrainConfig(Options):
    """Everything a pretraining run needs besides the data itself.

    On the command line every field is a ``--key=value`` setting changed from a preset
    (:class:`TrainingOverrides`); model fields are ``--model.<field>=value``.
    """

    # model
    model: str = option("13m", "a preset of brainlm.model.PRESETS")
    model_overrides: dict[str, Any] = option(default_factory=dict, help="BrainLMConfig fields to change")
    init_from: str | None = option(None, "start from the weights of this model folder instead of random init")
    region_embedding_init: str = option("normal", "with --model.learned_region_embedding: 'normal' (the model's init) or 'connectivity' (the principal axes of the train split's region covariance, coordinate projections at 0)")
    # data
    data: str | None = option(None, "store folder (brainlm.data.open_store)")
    window: int = option(200, "timepoints per window, T; the model's num_timepoints_per_voxel")
    train_mode: str = option("random", "window choice on the train split: 'random' or 'sliding'")
    train_stride: int = option(0, "stride of sliding train windows (0 = window)")
    train_balance: str = option("window", "sliding train windows: 'window' (each once; long recordings weigh more) or 'recording' (shorter recordings' windows repeated so that every recording weighs the same)")
    eval_mode: str = option("sliding", "windows of validation / test: 'fixed' or 'sliding' (never random)")
    eval_stride: int = option(0, "stride of sliding evaluation windows (0 = window)")
    num_workers: int = option(0, "DataLoader worker processes")
    # run
    out_dir: str = option("runs/pretrain", "run folder: config, checkpoints, metrics, plots")
    seed: int = option(1234, "seeds init, window order, masks and dropout")
    max_steps: int = option(1000, "optimiser steps (sets the learning-rate schedule)")
    stop_at_step: int = option(0, "end this call early at this step, schedule unchanged (0 = max_steps); resume later")
    # batch and optimisation (the original recipe: AdamW, base lr 1e-3 x global batch / 256,
    # weight decay 0.05, 5% warmup then cosine, gradient clipping at 1.0)
    batch_size: int = option(32, "windows per process per micro-batch")
    grad_accum_steps: int = option(1, "micro-batches per optimiser step")
    eval_batch_size: int = option(0, "windows per process per evaluation batch (0 = batch_size)")
    base_lr: float = option(1e-3, "lr = base_lr x global batch / 256")
    lr: float | None = option(None, "absolute learning rate; overrides base_lr when set")
    min_lr_ratio: float = option(0.0, "the cosine ends at lr x min_lr_ratio")
    warmup_ratio: float = option(0.05, "fraction of max_steps with linear warmup")
    warmup_steps: int | None = option(None, "warmup length in steps; overrides warmup_ratio when set")
    weight_decay: float = option(0.05, "not applied to norms, biases, CLS and mask tokens")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.999, "AdamW beta2")
    max_grad_norm: float = option(1.0, "gradient clipping (0 disables)")
    # hardware
    device: str = option("auto", "auto, cpu, cuda, cuda:1, ...")
    precision: str = option("auto", "'auto' (bf16 where the hardware has it, else fp32), 'bf16', 'fp16' (GPU), 'fp32'")
    fsdp: bool = option(False, "shard the model with FSDP2 (fully_shard per block) under torchrun")
    compile: bool = option(False, "torch.compile the model")
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass")
    num_threads: int = option(0, "torch CPU threads (0 = leave torch's default)")
    # evaluation, checkpoints, logging
    eval_every: int = option(100, "steps between validation runs (0 = only at the end)")
    eval_mask_ratio: float | None = option(None, "masked fraction when evaluating (None: the model's mask_ratio)")
    train_mask_scheme: str = option("patch", "training masks: 'patch' (random tokens, the original), 'region' (whole regions), 'time' (whole patch columns across regions), 'mixed' (each window one of the three at random)")
    eval_max_batches: int = option(0, "cap on validation batches per evaluation (0 = all)")
    save_every: int = option(100, "steps between checkpoints (0 = only at the end)")
    keep_last: int = option(3, "checkpoints kept besides the best")
    log_every: int = option(10, "steps between training-loss records")
    progress: bool = option(True, "progress bar on rank 0")
    plots: bool = option(True, "write loss / metric curves and reconstruction plots")
    tensorboard: bool = option(False, "log to TensorBoard when the package is installed")
    wandb: bool = option(False, "log to Weights & Biases when the package is installed")
    wandb_project: str = option("brainlm", "the Weights & Biases project")

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise UserError(f"--{msg}")

        for f in dataclasses.fields(self):  # the run's settings are saved as strict JSON: no NaN or inf
            value = getattr(self, f.name)
            need(not isinstance(value, float) or math.isfinite(value), f"{f.name} must be a finite number, got {value}")
        need(self.model in MODEL_PRESETS, f"model must be one of {sorted(MODEL_PRESETS)}, got {self.model!r}")
        for name in ("window", "max_steps", "batch_size", "grad_accum_steps", "keep_last"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) > 0, f"{name} must be a positive integer")
        for name in ("eval_every", "save_every", "log_every", "eval_batch_size", "eval_max_batches",
                     "train_stride", "eval_stride", "num_workers", "num_threads", "stop_at_step"):
            need(getattr(self, name) >= 0, f"{name} must be >= 0")
        need(self.train_mode in ("random", "sliding"), f"train_mode must be 'random' or 'sliding', got {self.train_mode!r}")
        need(self.train_balance in ("window", "recording"),
             f"train_balance must be 'window' or 'recording', got {self.train_balance!r}")
        need(self.region_embedding_init in ("normal", "connectivity"),
             f"region_embedding_init must be 'normal' or 'connectivity', got {self.region_embedding_init!r}")
        if self.region_embedding_init == "connectivity":
            need(self.model_config().learned_region_embedding,
                 "region_embedding_init=connectivity needs --model.learned_region_embedding=true")
        need(self.train_mask_scheme in MASK_SCHEMES,
             f"train_mask_scheme must be one of {MASK_SCHEMES}, got {self.train_mask_scheme!r}")
        need(self.eval_mode in ("fixed", "sliding"), f"eval_mode must be 'fixed' or 'sliding', got {self.eval_mode!r}")
        need(self.precision in ("auto", "bf16", "fp16", "fp32"),
             f"precision must be 'auto', 'bf16', 'fp16' or 'fp32', got {self.precision!r}")
        need(self.eval_mask_ratio is None or 0.0 < self.eval_mask_ratio < 1.0, "eval_mask_ratio must be in (0, 1)")
        need(self.base_lr > 0 and (self.lr is None or self.lr > 0), "base_lr and --lr must be positive")
        need(0.0 <= self.warmup_ratio < 1.0, "warmup_ratio must be in [0, 1)")
        need(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio must be in [0, 1]")
        need(self.weight_decay >= 0 and self.max_grad_norm >= 0, "weight_decay and --max_grad_norm must be >= 0")
        self.model_config()  # model overrides are checked by BrainLMConfig itself

    def model_config(self, num_regions: int | None = None) -> BrainLMConfig:
        """The model's config: the preset, the window length, then ``model_overrides``."""
        known = {f.name for f in dataclasses.fields(BrainLMConfig)} - {"extra"}
        unknown = sorted(set(self.model_overrides) - known)
        if unknown:
            raise UserError(f"TrainConfig: unknown model settings {unknown}; known: {sorted(known)}")
        changes: dict[str, Any] = {"num_timepoints_per_voxel": self.window}
        if num_regions is not None:
            changes["num_brain_voxels"] = num_regions
        return MODEL_PRESETS[self.model](**{**changes, **self.model_overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        raw = json.loads(Path(path).read_text())
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise UserError(f"{path}: unknown training settings {unknown} (written by another version?)")
        return cls(**raw)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------


def demo() -> TrainConfig:
    """About 3-4.5 minutes on 2 CPU cores: the demo store (94 AAL2 regions), a 0.12M-parameter model.

    Windows of 20 timepoints in patches of 5 (4 patches per region), half of the patches
    masked, sliding train windows (stride 5) so each step sees new positions, and every
    recording weighted the same (``train_balance="recording"``: the 355-timepoint gw recordings
    otherwise give only a fifth of the windows). In these recordings neighbouring timepoints
    are only weakly correlated, so most of what can be predicted comes from other regions at
    the same time: what the connectivity-conditional fill uses. Short patches leave visible
    neighbours close in time, which the model combines with the other regions and the fill
    cannot (a window of 40 in patches of 10 costs the same and only draws level with the fill).

    What makes the model learn that in minutes (the search is in docs/training.md): a learned
    embedding per region, started at the principal axes of the train split's region covariance
    (the covariance the connectivity baseline uses; nothing from the validation or test
    subjects), with the projections of raw millimetre coordinates started at 0 (they otherwise
    swamp every other input of the decoder); batch 16 at learning rate 3e-3 for 3000 steps.
    Evaluation masks 50% of the patches at random.

    Two threads in fp32 with the fused AdamW: 1.6-1.8x the steps/s of one thread with the
    per-parameter AdamW, the same numbers; torch.compile and bf16 (even with AMX) are slower
    at 64 wide, and one head without the value convolution is faster but reconstructs worse in
    cross-validation (``benchmarks/bench_demo_steps.py``, BENCHMARKS.md).
    """
    return TrainConfig(
        model="tiny",
        model_overrides=dict(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            decoder_hidden_size=64, decoder_num_hidden_layers=1, decoder_num_attention_heads=4,
            decoder_intermediate_size=128, conv_kernel_size=9, timepoint_patching_size=5, mask_ratio=0.5,
            time_encoding_dropout=0.0, learned_region_embedding=True,
        ),
        region_embedding_init="connectivity",
        window=20, train_mode="sliding", train_stride=5, train_balance="recording", eval_mode="sliding",
        eval_stride=20, eval_mask_ratio=0.5,
        out_dir="runs/demo", seed=0, max_steps=3000, batch_size=16, lr=3e-3, warmup_ratio=0.05,
        min_lr_ratio=0.05, eval_every=500, save_every=500, keep_last=2, log_every=10, num_threads=2,
        precision="fp32",
    )


def forecast_finetune(config: TrainConfig, init_from: str | Path, out_dir: str | Path, steps: int = 600,
                      lr: float = 1e-3) -> TrainConfig:
    """``config`` turned into a fine-tune of the model in ``init_from`` for forecasting: every
    window hides the last patch of every region (``train_mask_scheme="forecast"``, what
    ``model.forecast`` sees), ``steps`` steps at ``lr``, on the same data. With 600 steps at 1e-3
    the demo model forecasts better than AR(p) and ridge VAR over all 12 demo subjects held out
    in turn, where the pretrained model alone is far behind (docs/training.md)."""
    return config.replace(out_dir=str(out_dir), init_from=str(init_from), train_mask_scheme="forecast",
                          region_embedding_init="normal", max_steps=steps, lr=lr, eval_every=steps,
                          save_every=min(500, steps), stop_at_step=0)


def recipe_13m() -> TrainConfig:
    """The original 13M recipe: A424, 200 timepoints, patches of 20, 20% masked, batch 32 x 8."""
    return TrainConfig(model="13m", window=200, batch_size=32, grad_accum_steps=8, base_lr=1e-3,
                       weight_decay=0.05, warmup_ratio=0.05, max_steps=20000, eval_every=500, save_every=500)


def pretrain_111m() -> TrainConfig:
    """A 111M-class run for a few GPUs: bf16, 75% masked, global batch 512 on 8 processes."""
    return TrainConfig(model="111m", window=200, batch_size=64, grad_accum_steps=1, base_lr=1.5e-4,
                       weight_decay=0.05, warmup_ratio=0.05, max_steps=100000, eval_every=1000,
                       save_every=1000, gradient_checkpointing=False)


def pretrain_650m() -> TrainConfig:
    """A 650M-class run: FSDP2 sharding, gradient checkpointing, bf16."""
    return TrainConfig(model="650m", window=200, batch_size=32, grad_accum_steps=2, base_lr=1.5e-4,
                       weight_decay=0.05, warmup_ratio=0.05, max_steps=100000, eval_every=1000,
                       save_every=1000, fsdp=True, gradient_checkpointing=True)


def _tiny() -> TrainConfig:
    return TrainConfig(model="tiny", window=40, model_overrides=dict(timepoint_patching_size=10), batch_size=4,
                       max_steps=20, eval_every=10, save_every=10, log_every=1, base_lr=1e-2, progress=False)


TRAIN_PRESETS = {"demo": demo, "13m": recipe_13m, "111m": pretrain_111m, "650m": pretrain_650m, "tiny": _tiny}


def train_preset(name: str) -> TrainConfig:
    if name not in TRAIN_PRESETS:
        raise UserError(f"unknown training preset {name!r}; choose from {sorted(TRAIN_PRESETS)}")
    return TRAIN_PRESETS[name]()


# ---------------------------------------------------------------------------------------------
# --key=value overrides (TrainingOverrides keeps them as typed; apply_overrides parses them)
# ---------------------------------------------------------------------------------------------


def _coerce(text: str, annotation: Any, key: str) -> Any:
    """Turn the text of an override into the type the field declares."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {**typing.__dict__, "Any": Any})  # postponed annotations
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(text, arg, key)
            except ValueError as err:
                errors.append(str(err))
        raise UserError("; ".join(errors))
    if annotation is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise UserError(f"--{key}: expected true/false, got {text!r}")
    if annotation is int:
        try:
            return int(text)
        except ValueError:
            raise UserError(f"--{key}: expected an integer, got {text!r}") from None
    if annotation is float:
        try:
            return float(text)
        except ValueError:
            raise UserError(f"--{key}: expected a number, got {text!r}") from None
    if annotation is str or annotation is Any:
        return text
    if origin is dict or annotation is dict:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise UserError(f"--{key}: expected a JSON object, got {text!r}") from None
        if not isinstance(value, dict):
            raise UserError(f"--{key}: expected a JSON object, got {text!r}")
        return value
    raise UserError(f"--{key}: cannot parse a value of type {annotation}")


def apply_overrides(config: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """A new config with ``overrides`` applied; string values are coerced to the field's type.

    Keys ``model.<field>`` change one field of the model config.

    Raises:
        ValueError: an unknown key (the message lists the known ones) or a value of the wrong type.
    """
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    model_fields = {f.name: f for f in dataclasses.fields(BrainLMConfig) if f.name != "extra"}
    changes: dict[str, Any] = {}
    model_changes = dict(config.model_overrides)
    for key, value in overrides.items():
        if key.startswith("model."):
            name = key[len("model."):]
            if name not in model_fields:
                raise UserError(f"unknown model setting {name!r}; known: {', '.join(sorted(model_fields))}")
            model_changes[name] = _coerce(value, model_fields[name].type, key) if isinstance(value, str) else value
        elif key in fields:
            changes[key] = _coerce(value, fields[key].type, key) if isinstance(value, str) else value
        else:
            raise UserError(f"unknown training setting {key!r}; known: {', '.join(sorted(fields))}")
    if "model_overrides" in changes:
        model_changes = {**model_changes, **changes.pop("model_overrides")}
    return dataclasses.replace(config, **changes, model_overrides=model_changes)


@dataclass(kw_only=True)
class TrainingOverrides(Options):
    """Base of the options of commands that train: every :class:`TrainConfig` field is a
    ``--key=value`` flag (``--max_steps=500``) and every model field a ``--model.key=value`` flag
    (``--model.hidden_size=64``), changed from the preset; the values given are kept as typed in
    ``overrides`` and parsed by :func:`apply_overrides` against the field's type."""

    overrides: dict[str, Any] = option(default_factory=dict, help="training settings changed from the preset",
                                       cli=False)

    @classmethod
    def add_to(cls, parser, **kwargs):
        super().add_to(parser, **kwargs)
        add_dataclass_arguments(parser, TrainConfig, underscore=True, raw=True, exclude=("model_overrides",),
                                dest_prefix="train.", title="training settings", description="--key=value, changed "
                                "from the preset (docs/training.md); a flag of the command itself takes precedence")
        add_dataclass_arguments(parser, BrainLMConfig, prefix="model.", underscore=True, raw=True, exclude=("extra",),
                                title="model settings", description="--model.key=value, a field of BrainLMConfig")
        return parser

    @classmethod
    def from_args(cls, args, **extra):
        given = {**given_fields(TrainConfig, args, "train."),
                 **{f"model.{k}": v for k, v in given_fields(BrainLMConfig, args, "model.").items()}}
        return super().from_args(args, overrides=given, **extra)


def resolve_config(
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    resume: str | Path | None = None,
    out: str | Path | None = None,
) -> TrainConfig:
    """The settings of a run: a preset (or, when resuming, the run's saved settings) plus overrides.

    Raises:
        ValueError / FileNotFoundError: unknown preset or key, or ``resume`` is not a run folder.
    """
    if resume is not None and out is not None and Path(out).resolve() != Path(resume).resolve():
        raise UserError(f"--resume {resume} continues the run in its own folder; --out {out} names another one "
                        "(leave --out out, or start a new run without --resume)")
    if resume is not None and preset is None:
        path = Path(resume) / "train_config.json"
        if not path.is_file():
            raise MissingInputError(f"{resume} is not a run folder: no train_config.json")
        config = TrainConfig.load(path)
    else:
        config = train_preset(preset or "13m")
    config = apply_overrides(config, overrides or {})
    if resume is not None:
        config = config.replace(out_dir=str(resume), data=_moved_with_run(config, resume))
    elif out is not None:
        config = config.replace(out_dir=str(out))
    return absolute_paths(config)


def _moved_with_run(config: TrainConfig, run: str | Path) -> str | None:
    """The store of a resumed run: where its settings say, or, when the store is not there and the
    run has moved, the same place relative to the run (a run and its store moved together)."""
    if not config.data or Path(config.data).exists() or not Path(config.data).is_absolute():
        return config.data
    moved = Path(run) / os.path.relpath(config.data, config.out_dir)
    return str(moved) if moved.exists() else config.data


def absolute_paths(config: TrainConfig) -> TrainConfig:
    """``config`` with its folders as absolute paths (the store, the run, a local ``init_from``), so
    that the run's saved settings work from any folder (``pretrain --resume RUN`` from elsewhere)."""
    local = {"data": config.data, "out_dir": config.out_dir}
    if config.init_from and Path(config.init_from).exists():
        local["init_from"] = config.init_from
    return config.replace(**{k: os.path.abspath(v) for k, v in local.items() if v})
