"""Everything about processes, devices and precision, in one place (training and inference).

The same training loop runs on one process or under ``torchrun``: ``init_distributed()``
reads the torchrun environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and joins the
process group (NCCL on GPUs, gloo on CPUs); ``wrap_model(model, mode)`` returns the model
for ``"none"``, wraps it in DDP for ``"ddp"``, or shards it with FSDP2 (``fully_shard`` on
every transformer block, then on the whole model) for ``"fsdp"``. The model itself knows
nothing of this.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from brainlm.errors import UserError
from brainlm.options import Options, option

__all__ = [
    "DistInfo", "init_distributed", "destroy_distributed", "wrap_model", "unwrap_model", "no_sync",
    "resolve_device", "resolve_precision", "autocast_context", "cpu_supports_bf16", "PRECISIONS",
    "all_reduce_sum", "barrier", "broadcast_object", "rank_share", "gather_in_order", "is_main_process",
    "share_errors", "DeviceOptions", "all_gather",
]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1 or (dist.is_available() and dist.is_initialized())

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group described by the torchrun environment, if there is one.

    Without ``WORLD_SIZE`` (a plain ``python`` run) nothing happens and rank 0 of 1 is returned.
    An already initialised process group is used as it is.
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() and not device.startswith("cpu")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank, world, local_rank)


def destroy_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"`` -> this process's GPU when there is one, else the CPU; otherwise ``torch.device(name)``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name!r}: CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    if any(f in flags for f in (" avx512_bf16", " amx_bf16")):
        return True
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")()
    return "AMX" in str(capability).upper()


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(kw_only=True)
class DeviceOptions(Options):
    """Where a model runs and in which precision (every command that runs one)."""

    device: str = option("auto", "auto (this process's GPU if any), cpu, cuda, cuda:1 ...", group="hardware")
    precision: str = option("auto", "auto: bf16 on GPUs and CPUs that compute in it natively, fp32 elsewhere",
                            choices=PRECISIONS, group="hardware")


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The compute dtype of a run: ``"auto"`` -> bf16 where the hardware computes in it natively
    (GPUs that support it; CPUs with AVX512-BF16 or AMX), fp32 elsewhere.

    ``"fp16"`` is for GPUs only (CPUs have no fast fp16 arithmetic).
    """
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return torch.float32
    if precision == "fp16":
        if device.type != "cuda":
            raise UserError("--precision fp16 needs a GPU; on a CPU use bf16 or fp32")
        return torch.float16
    supported = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_supports_bf16()
    if precision == "bf16":
        if not supported and device.type == "cuda":
            raise UserError("--precision bf16: this GPU does not support bf16")
        return torch.bfloat16
    return torch.bfloat16 if supported else torch.float32


def autocast_context(device: torch.device, dtype: torch.dtype):
    """The one autocast context of a run (a no-op in fp32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def wrap_model(model: nn.Module, mode: str, device: torch.device | None = None) -> nn.Module:
    """Prepare ``model`` for ``mode``: ``"none"``, ``"ddp"`` or ``"fsdp"``.

    FSDP2 shards every transformer block, then the rest of the model; parameters become
    DTensors and the optimiser must be built afterwards.
    """
    if mode == "none":
        return model
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"wrap_model({mode!r}) needs torch.distributed: launch with torchrun")
    if mode == "ddp":
        ids = [device.index] if device is not None and device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        # The model names its own units (``fsdp_units()``: its transformer blocks); none means one unit.
        for block in (model.fsdp_units() if hasattr(model, "fsdp_units") else []):
            fully_shard(block)
        fully_shard(model)
        return model
    raise UserError(f"unknown distribution mode {mode!r}; use 'none', 'ddp' or 'fsdp'")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model under DDP / torch.compile wrappers (FSDP2 modules are the model itself)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


@contextlib.contextmanager
def no_sync(model: nn.Module, skip: bool = True):
    """Skip the gradient all-reduce of this backward pass (for gradient accumulation)."""
    if not skip:
        yield
        return
    inner = model._orig_mod if hasattr(model, "_orig_mod") else model
    if isinstance(inner, nn.parallel.DistributedDataParallel):
        with inner.no_sync():
            yield
    elif hasattr(inner, "set_requires_gradient_sync"):  # FSDP2
        inner.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            inner.set_requires_gradient_sync(True)
    else:
        yield


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank."""
    if dist.is_available() and dist.is_initialized():
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj


def rank_share(n: int) -> list[int]:
    """This process's share of ``n`` items (every world-size-th, from its rank); all of them alone."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return list(range(dist.get_rank(), n, dist.get_world_size()))
    return list(range(n))


def gather_in_order(local: list[tuple[int, object]]) -> list | None:
    """Every process's ``(index, value)`` pairs as one list of values in index order, on rank 0.

    Other ranks get None. On a single process: the values of ``local`` sorted by index.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts = all_gather(local)
        if dist.get_rank() != 0:
            return None
        local = [pair for part in parts for pair in part]
    return [value for _, value in sorted(local, key=lambda pair: pair[0])]


def all_gather(obj) -> list:
    """``obj`` of every process, in rank order (``[obj]`` on a single process)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, obj)
    return parts


def is_main_process() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def share_errors(fn):
    """Run ``fn`` on every process; if it raises ``UserError`` on any, raise it on all.

    So that a refusal on rank 0 (an existing output, a lock) does not leave the other ranks
    waiting in a collective operation.
    """
    import torch.distributed as dist

    error, result = None, None
    try:
        result = fn()
    except UserError as err:
        error = err
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        first = next((m for m in all_gather(None if error is None else error.one_line()) if m), None)
        if error is None and first is not None:
            error = UserError(first)
    if error is not None:
        raise error
    return result
