"""Training checkpoints that survive ``kill -9``, and resume on any number of processes.

A checkpoint is a folder ``RUN/checkpoints/step_00000100/``:

    config.json, model.safetensors   the model (loadable with ``BrainLMForPretraining.from_pretrained``)
    optimizer.pt                     full (unsharded) AdamW state, keyed by parameter name
    scheduler.pt                     the learning-rate scheduler
    rng.pt                           python / numpy / torch (and CUDA) RNG states of every rank
    trainer_state.json               step, data position (epoch, samples consumed in it), best metric
    train_config.json                the resolved training settings
    manifest.json                    size and SHA-256 of every file above; written last

It is written by rank 0 into ``checkpoints/.tmp-step_...`` and renamed into place, so a
folder named ``step_*`` is always complete; a truncated or altered file fails the manifest
check with a clear error. The last ``keep_last`` are kept; the model with the best
validation loss is kept separately in ``RUN/best/``, and the model as training started (no step
taken) in ``RUN/init/`` with ``initialisation.json`` saying how it was initialised.

Model and optimiser state are gathered into full state dicts
(``torch.distributed.checkpoint.state_dict`` with ``full_state_dict=True``), so a run saved by
N processes (DDP or FSDP) resumes on M.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_state_dict,
)

from brainlm.checkpoint import load_state_dict_file, save_config
from brainlm.distributed import all_gather, unwrap_model
from brainlm.errors import CorruptFileError, MissingInputError, UserError
from brainlm.hub import INIT_FOLDER, INIT_RECORD, find_checkpoints, newest_checkpoint, read_model_config
from brainlm.io import atomic_write_json, fsync_file, read_json, verify_manifest, write_manifest

from .config import TrainConfig

__all__ = ["save_checkpoint", "load_checkpoint", "restore_checkpoint", "save_best", "save_initial", "save_model_folder",
           "capture_rng", "restore_rng",
           "clean_partial", "check_run_folder"]

# Testing hook: "STEP" or "STEP:SECONDS". The writer of that step's checkpoint sleeps halfway
# through (after the weights, before the optimiser state), so a kill can land mid-write.
_PAUSE_ENV = "BRAINLM_CHECKPOINT_PAUSE"


def _is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def capture_rng() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    # Plain Python values only, so the file loads with torch.load(weights_only=True).
    state = {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Unsharded model and optimiser state dicts (collective: every rank calls it)."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=_is_dist())
    return get_state_dict(model, optimizer, options=options)


def clean_partial(run_dir: str | Path) -> None:
    """Remove folders left by writes or deletions that were killed halfway (rank 0 only)."""
    for root in (Path(run_dir) / "checkpoints", Path(run_dir)):
        if root.is_dir():
            for p in root.iterdir():
                if p.name.startswith((".tmp-", ".trash-")):
                    kept = next((n for n in ("best", INIT_FOLDER) if p.name.startswith(f".trash-{n}-")), None)
                    if kept and not (Path(run_dir) / kept).exists():
                        p.rename(Path(run_dir) / kept)  # killed between the two renames of save_model_folder
                    else:
                        shutil.rmtree(p, ignore_errors=True)


def _pause_if_asked(step: int) -> None:
    spec = os.environ.get(_PAUSE_ENV)
    if spec:
        at, _, seconds = spec.partition(":")
        if int(at) == step:
            time.sleep(float(seconds or 3600))


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    trainer_state: dict[str, Any],
    train_config_json: str,
    keep_last: int,
) -> Path:
    """Write the checkpoint of ``step`` atomically and prune old ones (collective under torchrun).

    Returns:
        The checkpoint folder.
    """
    model = unwrap_model(model)
    model_sd, optim_sd = _full_state(model, optimizer)
    all_rng = all_gather(capture_rng())
    root = Path(run_dir) / "checkpoints"
    final = root / f"step_{step:08d}"
    if not _is_dist() or dist.get_rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".tmp-step_{step:08d}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:  # a failed write (a full disk, Ctrl-C) leaves no temporary folder behind
            config = unwrap_model(model).config
            save_file({k: v.detach().contiguous().cpu() for k, v in model_sd.items()}, str(tmp / "model.safetensors"),
                      metadata={"format": "pt", "brainlm": "1"})
            save_config(config, tmp / "config.json")
            _pause_if_asked(step)
            torch.save(optim_sd, tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            torch.save(all_rng, tmp / "rng.pt")
            atomic_write_json(tmp / "trainer_state.json", trainer_state, sort_keys=True)
            (tmp / "train_config.json").write_text(train_config_json)
            write_manifest(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if final.exists():  # re-saving the same step (e.g. the final save right after a periodic one)
            trash = root / f".trash-{final.name}-{os.getpid()}"
            final.rename(trash)
            shutil.rmtree(trash)
        os.replace(tmp, final)
        fsync_file(root)
        for old in find_checkpoints(run_dir)[:-keep_last]:
            trash = root / f".trash-{old.name}-{os.getpid()}"
            old.rename(trash)  # a half-deleted folder never looks like a checkpoint
            shutil.rmtree(trash, ignore_errors=True)
    if _is_dist():
        dist.barrier()
    return final


def save_best(run_dir: str | Path, model: nn.Module, metrics: dict[str, Any]) -> Path:
    """Replace ``RUN/best/`` with the current model and its validation metrics (collective)."""
    return save_model_folder(run_dir, "best", model, {"metrics.json": metrics})


def save_initial(run_dir: str | Path, model: nn.Module, initialisation: dict[str, Any]) -> Path:
    """``RUN/init/``: the model as training starts (no step taken) and how it was initialised
    (``initialisation.json``), so that every analysis can show what initialisation already gives
    beside what training added (collective)."""
    return save_model_folder(run_dir, INIT_FOLDER, model, {INIT_RECORD: initialisation})


def save_model_folder(run_dir: str | Path, name: str, model: nn.Module, records: dict[str, dict]) -> Path:
    """Replace ``RUN/<name>/`` with the current model (config, weights), the JSON ``records``
    (file name -> content) and a manifest, written aside and renamed into place (collective)."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=_is_dist())
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    model = unwrap_model(model)
    model_sd = get_model_state_dict(model, options=options)
    run_dir = Path(run_dir)
    final = run_dir / name
    if not _is_dist() or dist.get_rank() == 0:
        tmp = run_dir / f".tmp-{name}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        try:
            save_file({k: v.detach().contiguous().cpu() for k, v in model_sd.items()}, str(tmp / "model.safetensors"),
                      metadata={"format": "pt", "brainlm": "1"})
            save_config(unwrap_model(model).config, tmp / "config.json")
            for filename, content in records.items():
                atomic_write_json(tmp / filename, content, sort_keys=True)
            write_manifest(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        trash = run_dir / f".trash-{name}-{os.getpid()}"
        if final.exists():
            final.rename(trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    if _is_dist():
        dist.barrier()
    return final


def load_checkpoint(folder: str | Path) -> dict[str, Any]:
    """Read a verified checkpoint folder into memory (CPU tensors).

    Returns:
        dict with ``model``, ``optimizer``, ``scheduler``, ``rng`` (one entry per saving rank),
        ``trainer_state``, ``train_config`` (dict), ``model_config`` (dict), ``path``.
    """
    folder = Path(folder)
    verify_manifest(folder, "checkpoint")
    return {
        "model": load_state_dict_file(folder / "model.safetensors"),
        "optimizer": _load_state(folder / "optimizer.pt"),
        "scheduler": _load_state(folder / "scheduler.pt"),
        "rng": _load_state(folder / "rng.pt"),
        "trainer_state": json.loads((folder / "trainer_state.json").read_text()),
        "train_config": json.loads((folder / "train_config.json").read_text()),
        "model_config": json.loads((folder / "config.json").read_text()),
        "path": folder,
    }


def _load_state(path: Path):
    """A pickled training state, read with ``weights_only=True``: a pickle that would run code is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        raise CorruptFileError(f"{path}: refusing to load ({type(err).__name__}: {str(err).splitlines()[0]}); "
                               "only plain tensors and containers are read from checkpoints") from err


def restore_checkpoint(ckpt: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
    """Load model, optimiser and scheduler state; shards them again under FSDP (collective)."""
    options = StateDictOptions(full_state_dict=True)
    set_state_dict(model, optimizer, model_state_dict=ckpt["model"], optim_state_dict=ckpt["optimizer"], options=options)
    scheduler.load_state_dict(ckpt["scheduler"])


def check_run_folder(run_dir: str | Path, resume: bool, model_config, data: dict | None) -> Path | None:
    """A run folder fit for this run, checked before anything is written.

    Without ``resume`` it must not hold a run. With it, it must hold one whose model config
    (of its latest checkpoint, else of its ``train_config.json``) equals ``model_config`` and
    that was trained on the same data (``data.json`` against ``data``, see
    :func:`brainlm.train.data.data_identity`).

    Returns:
        The latest checkpoint to continue from, or None (a fresh run, or one with no checkpoint yet).
    """
    run_dir = Path(run_dir)
    saved_cfg_path = run_dir / "train_config.json"
    if not resume:
        if saved_cfg_path.exists() or find_checkpoints(run_dir):
            raise UserError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --out")
        return None
    if not saved_cfg_path.exists():
        raise MissingInputError(f"{run_dir} is not a run folder: no train_config.json")
    latest = newest_checkpoint(run_dir)
    new = model_config.to_dict()
    saved = (read_model_config(latest) if latest is not None else
             TrainConfig.load(saved_cfg_path).model_config(model_config.num_brain_voxels).to_dict())
    if saved.get("num_brain_voxels") != new["num_brain_voxels"]:
        raise UserError(f"the data have {new['num_brain_voxels']} regions but the checkpoint in {run_dir} was "
                        f"trained on {saved.get('num_brain_voxels')}; use a store of the same atlas")
    differences = [f"{k}: {saved.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(saved) | set(new))
                   if saved.get(k) != new.get(k) and k != "training_tr"]  # a record of the data, not of the model
    if differences:
        raise UserError(f"{run_dir} was trained with an incompatible model config:\n  " + "\n  ".join(differences))
    _check_same_data(run_dir, data)
    return latest


def _check_same_data(run_dir: Path, now: dict | None) -> None:
    """On resume: the data must be those the run started on (``data.json``)."""
    path = run_dir / "data.json"
    if now is None:
        return
    if not path.exists():
        warnings.warn(f"{run_dir} does not record the data it was trained on (a run of an earlier version); "
                      f"continuing on {now['store']} without being able to check that they are the same")
        return
    saved = read_json(path, "the run's data record")
    if saved.get("fingerprint") != now["fingerprint"] or saved.get("train_subjects") != now["train_subjects"]:
        what = ("other train subjects" if saved.get("fingerprint") == now["fingerprint"] else
                f"other data (store fingerprint {now['fingerprint']}, the run's {saved.get('fingerprint')})")
        raise UserError(f"{path}: {run_dir} was trained on {saved.get('store')}, but {now['store']} now holds "
                        f"{what}; start a new run with another --out (or delete {run_dir})")
